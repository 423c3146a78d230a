"""Cached forward passes with activations stored feature-major, (features, tokens), for decoding on CPUs.

A decode step multiplies a few token rows by every weight matrix. Written as `x @ W` (tokens x in) @ (in x out),
XLA:CPU's matmul kernels reach about half their large-matrix rate at 8-32 rows; the same product written as
`W^T @ x^T` (out x in) @ (in x tokens), with the output laid out (out, tokens), runs 1.6-2.5x faster at those sizes
and no slower at prefill sizes (2 cores, SmolLM2 shapes, batch 32: gate/up 1.83 -> 1.03 ms, down 0.82 -> 0.42 ms,
the 49,152-word LM head 39 -> 16 ms). So here the residual stream is kept as (embed, tokens), every weight is held
(out, in) (Hugging Face's own orientation, so the tied embedding matrix is already the LM head) and each projection
is one `W @ x`. Only attention, whose cache layout is shared with the token-major model, sees tokens first: the
small query/key/value and attention-output blocks are transposed around it.

Same math as `mistral.forward` with a cache (tests compare logits and caches); only the summation order inside
the matmul kernels differs. Used by the decoder (`DecodeConfig.layer_loop="feature_major"`, the default on CPU);
training keeps the token-major model.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mnlu_jax.model.config import ModelConfig
from mnlu_jax.model.mistral import (Params, _write, _write_layer, apply_rope, attend_cache, attention_mask,
                                    rope_frequencies, rope_tables, to_dtype, unstack_layers)


def to_feature_major(params: Params, config: ModelConfig) -> Params:
    """Stacked (or unstacked) token-major parameters -> per-layer (out, in) matrices, Q/K/V and gate/up fused:

        layers[i]: input_norm (embed,), qkv (q+2kv, embed), o (embed, q), post_norm (embed,),
                   gate_up (2*mlp, embed), down (embed, mlp)
        embed (vocab, embed), norm (embed,), head (vocab, embed): the embedding itself when tied.

    Each matrix is a fresh transposed copy (in the input's dtype, on its device and sharding as XLA propagates)."""
    unstacked = unstack_layers(params, fuse=True)["model"]["layers"]
    layers = []
    for lp in unstacked:
        attn, mlp = lp["self_attn"], lp["mlp"]
        layers.append({
            "input_norm": jnp.asarray(lp["input_layernorm"]["weight"]),
            "qkv": jnp.asarray(attn["qkv_proj"]["kernel"]).T,
            "o": jnp.asarray(attn["o_proj"]["kernel"]).T,
            "post_norm": jnp.asarray(lp["post_attention_layernorm"]["weight"]),
            "gate_up": jnp.asarray(mlp["gate_up_proj"]["kernel"]).T,
            "down": jnp.asarray(mlp["down_proj"]["kernel"]).T,
        })
    m = params["model"]
    embed = jnp.asarray(m["embed_tokens"]["weight"])
    head = embed if config.tie_word_embeddings else jnp.asarray(params["lm_head"]["kernel"]).T
    return {"layers": layers, "embed": embed, "norm": jnp.asarray(m["norm"]["weight"]), "head": head}


def _rms_norm_features(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """mistral.rms_norm over axis 0 of an (embed, tokens) array."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=0, keepdims=True) + eps)
    return weight.astype(x.dtype)[:, None] * xf.astype(x.dtype)


def forward_feature_major(fm: Params, config: ModelConfig, input_ids: jax.Array, positions: jax.Array,
                          segment_ids: jax.Array, cache: Params, cache_index: jax.Array | int,
                          all_positions: bool = False) -> tuple[jax.Array, Params]:
    """Logits of each row's last token as (vocab, B) fp32 (with `all_positions`, of every token as
    (vocab, B, T): speculative decoding checks all its drafts in one call), and the updated cache.

    As `mistral.forward(..., cache=cache, cache_index=cache_index, last_only=True)` with `fm` from
    `to_feature_major` and a per-layer cache (`init_cache(..., per_layer=True)`): the T new tokens of each row
    are written at slots [cache_index, cache_index + T) (one index, or one per row) and attend over the cache."""
    b, t = input_ids.shape
    n = b * t
    dtype = to_dtype(config.compute_dtype)
    nh, kvh, hd = config.num_attention_heads, config.kv_heads, config.dim_per_head
    positions, segment_ids = positions.astype(jnp.int32), segment_ids.astype(jnp.int32)
    # (embed, N): column row * T + j holds token j of row `row`
    h = jnp.take(fm["embed"], input_ids.reshape(n), axis=0).astype(dtype).T
    cos, sin = rope_tables(positions, rope_frequencies(config), dtype)
    k_pos = _write(cache["pos"], positions, cache_index)
    k_seg = _write(cache["seg"], segment_ids, cache_index)
    mask = attention_mask(positions, segment_ids, k_pos, k_seg, config.sliding_window)

    def token_major(a: jax.Array, heads: int) -> jax.Array:  # (heads * hd, N) -> (B, T, heads, hd)
        return a.reshape(heads, hd, b, t).transpose(2, 3, 0, 1)

    keys, values = list(cache["k"]), list(cache["v"])
    for i, lp in enumerate(fm["layers"]):
        x = _rms_norm_features(h, lp["input_norm"], config.rms_norm_eps)
        qkv = lp["qkv"].astype(dtype) @ x
        q = token_major(qkv[: nh * hd], nh)
        k = token_major(qkv[nh * hd: (nh + kvh) * hd], kvh)
        v = token_major(qkv[(nh + kvh) * hd:], kvh)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys[i] = _write_layer(keys[i], k.astype(keys[i].dtype), None, cache_index)
        values[i] = _write_layer(values[i], v.astype(values[i].dtype), None, cache_index)
        o = attend_cache(q, keys[i].astype(dtype), values[i].astype(dtype), mask)  # (B, T, heads * hd)
        h = h + lp["o"].astype(dtype) @ o.reshape(n, nh * hd).T
        x = _rms_norm_features(h, lp["post_norm"], config.rms_norm_eps)
        gate, up = jnp.split(lp["gate_up"].astype(dtype) @ x, 2, axis=0)
        h = h + lp["down"].astype(dtype) @ (jax.nn.silu(gate) * up)
    last = h if all_positions else h.reshape(-1, b, t)[:, :, -1]               # (embed, B * T) or (embed, B)
    last = _rms_norm_features(last, fm["norm"], config.rms_norm_eps)
    logits = (fm["head"].astype(dtype) @ last).astype(jnp.float32)             # (vocab, B [* T])
    if all_positions:
        logits = logits.reshape(-1, b, t)
    return logits, {"k": keys, "v": values, "pos": k_pos, "seg": k_seg}


def feature_major_axes(config: ModelConfig) -> dict[str, Any]:
    """Logical axes of `to_feature_major`'s output, for placing it on a mesh (sharding.tree_shardings)."""
    layer = {"input_norm": ("norm",), "qkv": ("heads", "embed"), "o": ("embed", "heads"), "post_norm": ("norm",),
             "gate_up": ("mlp", "embed"), "down": ("embed", "mlp")}
    return {"layers": [layer] * config.num_hidden_layers, "embed": ("vocab", "embed"), "norm": ("norm",),
            "head": ("vocab", "embed")}
