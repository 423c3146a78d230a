"""Real weights: SmolLM2-135M-Instruct (GGUF, Q4_1) against transformers' own GGUF loader."""

import os

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


def test_gguf_tokenizer_is_kept_on_disk_and_reloads_the_same(smollm2_path, tmp_path, monkeypatch):
    """The tokenizer built from a GGUF file (≈ 7 s through transformers) is saved once to the tokenizer cache and
    loaded from there by later processes: it must tokenize, render the chat template and decode as the fresh build
    does. The key changes with the file's contents or time; `off` keeps nothing."""
    from mnlu_jax.weights import gguf_io

    monkeypatch.setenv(gguf_io.TOKENIZER_CACHE_ENV, str(tmp_path / "cache"))
    gguf_io._tokenizer.cache_clear()
    fresh = gguf_io.gguf_tokenizer(smollm2_path)  # built, and saved
    (entry,) = (tmp_path / "cache").iterdir()
    assert (entry / "tokenizer.json").is_file() and not list((tmp_path / "cache").glob(".*"))
    gguf_io._tokenizer.cache_clear()
    build = transformers.AutoTokenizer.from_pretrained

    def no_build(*args, **kwargs):  # a cache hit must not build from the GGUF again
        assert "gguf_file" not in kwargs, "built again despite the cache"
        return build(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_build)
    cached = gguf_io.gguf_tokenizer(smollm2_path)
    texts = PROMPTS + ["naïve café  two  spaces\n\ttab", "<|im_start|>user\nhi<|im_end|>", ""]
    assert [cached(t)["input_ids"] for t in texts] == [fresh(t)["input_ids"] for t in texts]
    assert [_ids(cached, p) for p in PROMPTS] == [_ids(fresh, p) for p in PROMPTS]
    assert cached.chat_template == fresh.chat_template and cached.get_vocab() == fresh.get_vocab()
    assert cached.eos_token == fresh.eos_token and cached.bos_token == fresh.bos_token
    ids = fresh(PROMPTS[0])["input_ids"]
    assert cached.decode(ids, skip_special_tokens=True) == fresh.decode(ids, skip_special_tokens=True)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", build)
    gguf_io._tokenizer.cache_clear()
    monkeypatch.setenv(gguf_io.TOKENIZER_CACHE_ENV, "off")
    gguf_io.gguf_tokenizer(smollm2_path)
    assert len(list((tmp_path / "cache").iterdir())) == 1 and gguf_io._tokenizer_cache_entry(smollm2_path) is None
    gguf_io._tokenizer.cache_clear()
    # the key follows the file: rewritten in place with the same size and time, or only touched, it changes
    monkeypatch.setenv(gguf_io.TOKENIZER_CACHE_ENV, str(tmp_path / "cache"))
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF" + bytes(60))
    first = gguf_io._tokenizer_cache_entry(f)
    stamp = f.stat().st_mtime_ns
    f.write_bytes(b"GGUF" + bytes(59) + b"x")
    os.utime(f, ns=(stamp, stamp))
    second = gguf_io._tokenizer_cache_entry(f)
    os.utime(f, ns=(stamp + 10**9, stamp + 10**9))
    assert len({first, second, gguf_io._tokenizer_cache_entry(f)}) == 3
