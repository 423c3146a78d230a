"""llama.cpp itself on our GGUF exports: its tokenizer, logits and greedy tokens against ours.

Needs the llama-cpp-python bindings (`pip install llama-cpp-python`, which compiles llama.cpp for some minutes, or
its sdist on PYTHONPATH with LLAMA_CPP_LIB_PATH naming a llama.cpp build's bin/); skipped where they are absent,
CI included. llama.cpp runs with an f32 KV cache, so that only summation order differs from ours.
"""

import ctypes
import os

import numpy as np
import pytest

import jax.numpy as jnp

from mnlu_jax.decode.engine import DecodeConfig, Generator
from mnlu_jax.model.mistral import forward
from mnlu_jax.weights.convert import hf_to_flax, load_model, load_tokenizer
from mnlu_jax.weights.gguf_export import export_gguf
from tests.conftest import make_tiny_hf, smollm2_chat_texts

llama_cpp = pytest.importorskip("llama_cpp")
transformers = pytest.importorskip("transformers")

F32 = 0  # ggml_type GGML_TYPE_F32, for the KV cache
TEXTS = ["Patients with  renal failure: 20 mg, ünïcödé 日本.\nNext", "BRCA1 mutations were detected in 3/17 (17.6%)",
         "  leading spaces\tand tabs\n\n\ntrailing  ", "Aspirin-induced asthma? (A) yes (B) no"]


def _llama(path, n_ctx=512):
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=True, verbose=False, seed=0,
                           n_threads=os.cpu_count(), type_k=F32, type_v=F32)


def _logits(llm, ids) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def _detokenize(llm, ids) -> str:
    """llama.cpp's own `llama_detokenize`, special tokens written out (the bindings' `detokenize` glues pieces and
    keeps SPM's leading space)."""
    tokens = (llama_cpp.llama_token * len(ids))(*ids)
    buffer = ctypes.create_string_buffer(16 * len(ids) + 16)
    n = llama_cpp.llama_detokenize(llm._model.vocab, tokens, len(ids), buffer, len(buffer), False, True)
    assert n >= 0
    return buffer.raw[:n].decode()


def _greedy(llm, ids, n, stop_ids) -> list[int]:
    """Argmax tokens until a stop id (not included, as in our results) or `n` of them."""
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if token in stop_ids:
            break
        out.append(token)
        llm.eval([token])
    return out


def test_smollm2_export_runs_in_llama_cpp_as_in_ours(smollm2_path, tmp_path):
    """SmolLM2 from our checkpoint (its tokenizer.json translated) in f32: llama.cpp splits the 16 chat prompts into
    our ids, its logits are ours to summation order, and its greedy answers are ours token for token; the q8_0
    export (tokenizer keys copied from the GGUF) picks the same next token at most positions."""
    ckpt = hf_to_flax(smollm2_path, tmp_path / "smol", progress=False)
    params, config, _ = load_model(ckpt)
    tok = load_tokenizer(ckpt)
    llm = _llama(export_gguf(ckpt, tmp_path / "smol-f32.gguf", tensor_type="f32", progress=False))
    texts = smollm2_chat_texts(tok)
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert [llm.tokenize(t.encode(), add_bos=False, special=True) for t in texts] == prompts
    assert _detokenize(llm, prompts[0]) == tok.decode(prompts[0])
    assert llm.metadata["tokenizer.chat_template"] == tok.chat_template
    for text in TEXTS:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text, add_special_tokens=False)[
            "input_ids"], text
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tok(text)["input_ids"], text
    for ids in prompts[:3]:
        ours = np.asarray(forward(params, config, jnp.asarray([ids]))[0])[0]
        theirs = _logits(llm, ids)
        np.testing.assert_allclose(theirs, ours, atol=1e-3 * np.abs(ours).max(), rtol=0)
    gen = Generator(params, config, DecodeConfig(batch_size=8, max_new_tokens=24, buckets=(32, 64, 128),
                                                 stop_ids=config.eos_ids))
    ours = [r.tokens for r in gen.generate(prompts)]
    theirs = [_greedy(llm, ids, 24, set(config.eos_ids)) for ids in prompts]
    assert theirs == ours

    q8 = _llama(export_gguf(smollm2_path, tmp_path / "smol-q8_0.gguf", tensor_type="q8_0", progress=False))
    assert [q8.tokenize(t.encode(), add_bos=False, special=True) for t in texts] == prompts
    agree = []
    for ids in prompts[:4]:
        ref = np.asarray(forward(params, config, jnp.asarray([ids]))[0])[0]
        agree.append((_logits(q8, ids).argmax(-1) == ref.argmax(-1)).mean())
    assert np.mean(agree) > 0.9


def _add_bos_post_processor(tok_dir) -> None:
    """Make a byte-level tokenizer put `<s>` before every text (in tokenizer.json only, as some models do)."""
    from tokenizers import Tokenizer, processors

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tok.save(str(tok_dir / "tokenizer.json"))


@pytest.mark.parametrize("model_type,tokenizer", [("mistral", "spm"), ("llama", "byte_level"),
                                                  ("llama", "byte_level_bos")])
def test_tiny_exports_tokenize_and_score_alike_in_llama_cpp(tmp_path, model_type, tokenizer):
    """A byte-fallback `▁` BPE written as llama.cpp's `llama` model and a byte-level BPE written as `gpt2` (with and
    without a BOS from its post-processor): the same ids as transformers on awkward text, with and without the
    special tokens it adds, the same text back, and the model's logits (within Mistral's window, which llama.cpp
    does not apply to the llama architecture)."""
    from mnlu_jax.data.tiny_tokenizer import train_tiny_tokenizer
    from tests.test_model_parity import _spm_tokenizer

    src = make_tiny_hf(tmp_path / "hf", model_type=model_type, vocab_size=320)
    if tokenizer == "spm":
        _spm_tokenizer(src, 300)
    else:
        train_tiny_tokenizer(["Patients with renal failure received 20 mg of aspirin daily."] * 20, 300, src)
    if tokenizer == "byte_level_bos":  # llama.cpp adds no BOS for a `gpt-2` split rule unless the file says so
        _add_bos_post_processor(src)
    llm = _llama(export_gguf(src, tmp_path / "tiny.gguf", tensor_type="f32", progress=False), n_ctx=64)
    tok = transformers.AutoTokenizer.from_pretrained(src)
    assert (tok("x")["input_ids"][0] == tok.bos_token_id) == (tokenizer != "byte_level")
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
        # with the special tokens the tokenizer adds (llama.cpp's add_bos/add_eos)
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tok(text)["input_ids"], text
        assert _detokenize(llm, ids) == tok.decode(ids), text
    params, config, _ = load_model(src)
    ids = tok(TEXTS[1])["input_ids"][: config.sliding_window or None]
    ours = np.asarray(forward(params, config, jnp.asarray([ids]))[0])[0]
    np.testing.assert_allclose(_logits(llm, ids), ours, atol=1e-4, rtol=0)
