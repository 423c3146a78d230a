"""Batch-1 decode step time of our decoder against the memory roofline (accelerators).

A 7B-shaped Mistral (hidden 4096, 32 layers, 32 heads / 8 KV heads, MLP 14336, vocab 32000) with random bf16
weights. A greedy step at batch 1 must read every weight once (except the embedding table, of which it gathers
one row) plus the KV cache, so the floor is  bytes / bandwidth. Bandwidth is measured in the same run (the
best of a row reduction, a column reduction and a scaled copy over 4 GiB) next to the datasheet figure.

The timed region is our engine's own jitted decode chunk (`chunk_steps` greedy steps in one call, the cache
donated), after a prefill of a `--prompt`-token prompt, per layer-loop variant (scan over stacked layers, or
unrolled over per-layer buffers, with or without fused Q/K/V and gate/up matrices).

    python benchmarks/decode_roofline.py [--shape 7b|tiny] [--loops scan,unrolled-unfused,unrolled] [--steps 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import median_seconds, write_result  # noqa: E402

SHAPES = {
    "7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, sliding_window=4096),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, sliding_window=None),
}
# Datasheet HBM bandwidth (bytes/s) by device kind, for reference beside the measured figure.
DATASHEET_BW = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}


def measured_bandwidth(gib: float = 4.0) -> dict:
    """Attainable bandwidth by three simple kernels (bytes moved / median time); the roofline uses the best."""
    import jax
    import jax.numpy as jnp

    n = int(gib * 2**30) // 4
    x = jnp.ones((n // 8192, 8192), jnp.float32) * 1.5
    kernels = {
        "sum_rows": (jax.jit(lambda a: jnp.sum(a, axis=1)), x.size * 4),
        "sum_columns": (jax.jit(lambda a: jnp.sum(a, axis=0)), x.size * 4),
        "scale_copy": (jax.jit(lambda a: a * 1.0001), 2 * x.size * 4),  # read + write
    }
    return {name: nbytes / median_seconds(f, x) for name, (f, nbytes) in kernels.items()}


def random_params(config, dtype):
    """Random bf16 weights made on the device, leaf by leaf (no fp32 copy of the whole model)."""
    import jax
    import jax.numpy as jnp

    from mnlu_jax.model.mistral import param_shapes

    shapes = param_shapes(config)
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))
    out = []
    for i, (path, shape) in enumerate(flat):
        name = jax.tree_util.keystr(path)
        make = jax.jit(lambda k, shape=shape, norm="norm" in name: (
            jnp.ones(shape, dtype) if norm else (0.02 * jax.random.normal(k, shape, dtype))), )
        out.append(make(jax.random.PRNGKey(i)))
    return jax.tree_util.tree_unflatten(treedef, out)


def time_variant(params, config, loop: str, prompt_len: int, steps: int, chunk: int):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mnlu_jax.decode.engine import DecodeConfig, Generator

    dc = DecodeConfig(batch_size=1, max_new_tokens=steps + chunk + 1, buckets=(prompt_len,), prefill_batch=1,
                      chunk_steps=chunk, stop_ids=(-1,), layer_loop=loop.split("-")[0],
                      fuse_projections=not loop.endswith("-unfused"))
    gen = Generator(params, config, dc)
    t = time.perf_counter()
    res = gen.generate([list(np.random.default_rng(0).integers(3, config.vocab_size, prompt_len))])
    first_s = time.perf_counter() - t  # compile + prefill + all steps once
    # Timed: our jitted decode chunk alone, called back to back as `stream` does (cache donated each call).
    cache_len = prompt_len + dc.max_new_tokens
    cache = gen._empty_cache(cache_len)
    tok = jnp.asarray([5], jnp.int32)
    pos = jnp.asarray([prompt_len], jnp.int32)
    widx = jnp.asarray([prompt_len], jnp.int32)
    act = jnp.asarray([True])
    cache, tok, pos, widx, act, out = gen._chunk(gen.params, cache, tok, pos, widx, act)  # compile
    jax.block_until_ready(out)
    pos0, widx0 = jnp.asarray([prompt_len], jnp.int32), jnp.asarray([prompt_len], jnp.int32)
    per_call = []
    for _ in range(max(steps // chunk, 1)):
        t = time.perf_counter()
        cache, tok, _, _, act, out = gen._chunk(gen.params, cache, tok, pos0, widx0, act)
        jax.block_until_ready(out)
        per_call.append(time.perf_counter() - t)
    per_call.sort()
    step_s = per_call[len(per_call) // 2] / chunk
    cache_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves((cache["k"], cache["v"])))
    return {"layer_loop": loop, "step_ms": step_s * 1e3, "first_call_s": first_s, "tokens": len(res[0].tokens),
            "cache_len": cache_len, "cache_bytes": cache_bytes}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="7b", choices=list(SHAPES))
    ap.add_argument("--loops", default="scan,unrolled-unfused,unrolled")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--name", default=None)
    a = ap.parse_args()
    import jax
    import numpy as np

    from mnlu_jax.model.config import ModelConfig
    from mnlu_jax.model.mistral import to_dtype

    config = ModelConfig(**SHAPES[a.shape], model_type="mistral", eos_token_id=None, param_dtype=a.dtype,
                         compute_dtype=a.dtype)
    dev = jax.devices()[0]
    bws = measured_bandwidth(4.0 if dev.platform != "cpu" else 0.25)
    bw = max(bws.values())
    params = random_params(config, to_dtype(a.dtype))
    itemsize = np.dtype(to_dtype(a.dtype)).itemsize
    n_params = config.num_params()
    embed = config.vocab_size * config.hidden_size
    weight_bytes = (n_params - embed) * itemsize  # every weight read once per step except the embedding table
    rows = []
    for loop in a.loops.split(","):
        r = time_variant(params, config, loop, a.prompt, a.steps, a.chunk)
        read = weight_bytes + r["cache_bytes"]
        r["roofline_ms"] = read / bw * 1e3
        r["fraction_of_roofline"] = r["roofline_ms"] / r["step_ms"]
        r["achieved_gb_per_s"] = read / (r["step_ms"] / 1e3) / 1e9
        ds = next((v for k, v in DATASHEET_BW.items() if k.lower() in dev.device_kind.lower()), None)
        if ds:
            r["fraction_of_datasheet_roofline"] = read / ds * 1e3 / r["step_ms"]
        print(r, flush=True)
        rows.append(r)
    best = max(rows, key=lambda r: r["fraction_of_roofline"])
    write_result(a.name or f"decode_roofline_{a.shape}_{dev.platform}", {
        "model": f"{a.shape}-shaped Mistral, random {a.dtype} weights", "params": n_params,
        "weight_bytes_read_per_step": weight_bytes, "attainable_bandwidth_gb_per_s": bw / 1e9,
        "bandwidth_by_kernel_gb_per_s": {k: v / 1e9 for k, v in bws.items()}, "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "device": dev.device_kind, "batch_size": 1, "prompt_tokens": a.prompt, "rows": rows,
        "best_fraction_of_roofline": best["fraction_of_roofline"], "best_layer_loop": best["layer_loop"],
        "target": ">= 80% of the HBM roofline (weight bytes / bandwidth) at batch 1"})


if __name__ == "__main__":
    main()
