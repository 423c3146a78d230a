"""The feature-major cached forward (decoding on CPUs) computes what the token-major model computes."""

import jax.numpy as jnp
import numpy as np
import pytest

from mnlu_jax.model.feature_major import forward_feature_major, to_feature_major
from mnlu_jax.model.mistral import forward, init_cache, unstack_layers
from mnlu_jax.weights.convert import load_model
from tests.conftest import LLAMA3_ROPE, make_tiny_hf


def _left_padded(rng, lengths, width):
    ids = np.zeros((len(lengths), width), np.int32)
    pos = np.zeros_like(ids)
    seg = np.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, width - n:] = rng.integers(3, 128, size=n)
        pos[r, width - n:] = np.arange(n)
        seg[r, width - n:] = 1
    return jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(seg)


# llama: tied embeddings (the head is the embedding); llama3: the same with Llama 3.1's RoPE scaling;
# head_dim: 4 heads of 32 with hidden 64 (an explicit head_dim unlike hidden / heads)
@pytest.mark.parametrize("model_type,extra", [("mistral", {}), ("llama", {}), ("llama", LLAMA3_ROPE),
                                              ("mistral", {"head_dim": 32})],
                         ids=["mistral", "llama", "llama3-rope", "mistral-head_dim"])
def test_prefill_and_steps_match_the_token_major_model(tmp_path, model_type, extra):
    params, config, _ = load_model(make_tiny_hf(tmp_path / "m", model_type=model_type, **extra))
    assert (config.rope_scaling is not None) == ("rope_scaling" in extra)
    assert config.tie_word_embeddings == (model_type == "llama")
    fm = to_feature_major(params, config)
    unrolled = unstack_layers(params, fuse=True)
    rng = np.random.default_rng(0)
    lengths = [13, 4, 16]                    # left padding of 3, 12 and 0 slots; the window (8) is shorter than 16
    ids, pos, seg = _left_padded(rng, lengths, 16)
    cache_len = 24
    ref_cache = init_cache(config, 3, cache_len, per_layer=True)
    fm_cache = init_cache(config, 3, cache_len, per_layer=True)
    ref, ref_cache = forward(unrolled, config, ids, pos, seg, cache=ref_cache, cache_index=0, last_only=True)
    got, fm_cache = forward_feature_major(fm, config, ids, pos, seg, fm_cache, 0)
    assert got.shape == (config.vocab_size, 3) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got).T, np.asarray(ref[:, -1]), rtol=1e-5, atol=1e-5)
    # then single-token steps with one write slot per row (continuous batching), one row inactive
    widx = jnp.asarray([16, 16, 16], jnp.int32)
    tok_pos = jnp.asarray(lengths, jnp.int32)
    for step in range(5):
        tok = jnp.asarray(rng.integers(3, 128, size=(3, 1)), jnp.int32)
        step_seg = jnp.asarray([[1], [1], [int(step < 2)]], jnp.int32)
        ref, ref_cache = forward(unrolled, config, tok, tok_pos[:, None], step_seg, cache=ref_cache, cache_index=widx)
        got, fm_cache = forward_feature_major(fm, config, tok, tok_pos[:, None], step_seg, fm_cache, widx)
        np.testing.assert_allclose(np.asarray(got).T, np.asarray(ref[:, -1]), rtol=1e-5, atol=1e-5)
        widx, tok_pos = widx + 1, tok_pos + 1
    for name in ("k", "v"):
        for a, b in zip(fm_cache[name], ref_cache[name]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    for name in ("pos", "seg"):
        np.testing.assert_array_equal(np.asarray(fm_cache[name]), np.asarray(ref_cache[name]))


def test_layout_of_the_converted_weights(tmp_path):
    params, config, _ = load_model(make_tiny_hf(tmp_path / "m"))   # mistral: untied head
    fm = to_feature_major(params, config)
    d, f = config.hidden_size, config.intermediate_size
    q, kv = config.num_attention_heads * config.dim_per_head, config.kv_heads * config.dim_per_head
    layer = fm["layers"][1]
    assert layer["qkv"].shape == (q + 2 * kv, d) and layer["o"].shape == (d, q)
    assert layer["gate_up"].shape == (2 * f, d) and layer["down"].shape == (d, f)
    lp = params["model"]["layers"]
    k_proj = np.asarray(lp["self_attn"]["k_proj"]["kernel"][1])
    np.testing.assert_array_equal(np.asarray(layer["qkv"][q: q + kv]), k_proj.T)
    np.testing.assert_array_equal(np.asarray(layer["gate_up"][f:]), np.asarray(lp["mlp"]["up_proj"]["kernel"][1]).T)
    np.testing.assert_array_equal(np.asarray(fm["head"]), np.asarray(params["lm_head"]["kernel"]).T)
