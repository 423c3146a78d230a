"""Real weights: SmolLM2-135M-Instruct (GGUF, Q4_1) against transformers' own GGUF loader."""

import numpy as np
import pytest

import jax.numpy as jnp

from mnlu_jax.model.mistral import forward
from mnlu_jax.weights.convert import export_hf, hf_to_flax, load_model, load_tokenizer, tensors_from_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

PROMPTS = [
    "Extract all Disease entities from the text.\nMedical text: The patient developed acute renal failure after cisplatin.",
    "Does the drug interact with warfarin? (A) yes (B) no",
    "Rate the similarity of the two sentences from 0 to 4.",
]


def _ids(tok, prompt):
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def test_config_from_gguf(smollm2_models):
    _, config, tok, _ = smollm2_models
    assert config.model_type == "llama" and config.tie_word_embeddings
    assert (config.num_hidden_layers, config.hidden_size, config.kv_heads) == (30, 576, 3)
    assert config.rope_theta == 100000.0
    assert tok.chat_template and "<|im_start|>" in tok.chat_template


def test_logits_match_transformers_on_chat_prompts(smollm2_models):
    params, config, tok, hf = smollm2_models
    for prompt in PROMPTS:
        ids = _ids(tok, prompt)
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits.numpy()[0]
        ours = np.asarray(forward(params, config, jnp.asarray([ids]))[0])[0]
        # Same dequantised fp32 weights; differences are summation order over 30 layers.
        np.testing.assert_allclose(ours, ref, atol=2e-3 * np.abs(ref).max(), rtol=0)
        assert (ours.argmax(-1) == ref.argmax(-1)).mean() > 0.98


def test_gguf_export_reloads_in_transformers(smollm2_models, smollm2_path, tmp_path):
    params, config, tok, hf = smollm2_models
    export_hf(params, config, tmp_path / "hf", gguf=smollm2_path, progress=False, max_shard_bytes=200 * 2**20)
    re = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32)
    tok2 = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = _ids(tok2, PROMPTS[0])
    assert ids == _ids(tok, PROMPTS[0])
    with torch.no_grad():
        a = re(torch.tensor([ids])).logits.numpy()
        b = hf(torch.tensor([ids])).logits.numpy()
    np.testing.assert_array_equal(a, b)


def test_gguf_file_export_of_a_checkpoint(smollm2_models, smollm2_path, tmp_path):
    """flax-to-gguf from our checkpoint (tokenizer.json translated) in f32: our weights back bitwise, and
    transformers' GGUF loader gives the original GGUF's logits and the same token ids and chat template; from the
    GGUF itself (tokenizer keys copied) in q8_0: a quarter of the size, the same argmax on most positions."""
    from mnlu_jax.weights.gguf_export import export_gguf
    from mnlu_jax.weights.gguf_io import gguf_tokenizer

    params, config, tok, hf = smollm2_models
    ckpt = hf_to_flax(smollm2_path, tmp_path / "smol", progress=False)
    out = export_gguf(ckpt, tmp_path / "smol-f32.gguf", tensor_type="f32", progress=False)
    back, config_back, _ = load_model(out)
    assert config_back == config
    for (n, a), (_, b) in zip(tensors_from_params(params, config), tensors_from_params(back, config_back)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), n
    exported_tok = gguf_tokenizer(out)
    ids = _ids(tok, PROMPTS[0])
    assert _ids(exported_tok, PROMPTS[0]) == ids and exported_tok.chat_template == tok.chat_template
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name,
                                                                 dtype=torch.float32)
    with torch.no_grad():
        np.testing.assert_array_equal(reloaded(torch.tensor([ids])).logits.numpy(),
                                      hf(torch.tensor([ids])).logits.numpy())
    q8 = export_gguf(smollm2_path, tmp_path / "smol-q8_0.gguf", tensor_type="q8_0", progress=False)
    assert q8.stat().st_size < 0.3 * out.stat().st_size
    q8_params, q8_config, _ = load_model(q8)
    assert q8_config == config and _ids(gguf_tokenizer(q8), PROMPTS[0]) == ids
    ref = np.asarray(forward(params, config, jnp.asarray([ids]))[0])[0]
    ours = np.asarray(forward(q8_params, q8_config, jnp.asarray([ids]))[0])[0]
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() > 0.9


def test_gguf_to_flax_checkpoint(smollm2_path, tmp_path):
    out = hf_to_flax(smollm2_path, tmp_path / "smol", dtype="bfloat16", progress=False)
    assert (out / "tokenizer_config.json").exists() and (out / "params").is_dir()
    params, config, _ = load_model(out)
    assert str(params["model"]["embed_tokens"]["weight"].dtype) == "bfloat16"
    assert load_tokenizer(out).chat_template


def test_smollm2_alias_resolves_to_the_packaged_gguf(smollm2_path):
    from mnlu_jax.weights.convert import resolve_source

    assert resolve_source("smollm2") == smollm2_path
