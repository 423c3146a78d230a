"""Fused attention forward + backward on packed training rows: cuDNN's segment-mask kernel against its packed
(ragged) layout at several run-slot counts (`model.packed_attention_runs`), and XLA's attention, on one GPU.

Rows are packed as benchmarks/train_mfu.py packs them (documents of exponential lengths, restarting positions),
with a padding tail; each timing is the median of 20 calls of one jitted value-and-gradient. The largest relative
gradient difference to XLA's attention is recorded beside each cuDNN timing.

    python benchmarks/attention_packed.py [--runs 8,16,32,64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import median_seconds, write_result  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="8,16,32,64")
    ap.add_argument("--shapes", default="8x2048x400,8x2048x100", help="rows x length x mean document length")
    a = ap.parse_args()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.train_mfu import packed_batch
    from mnlu_jax.model.mistral import attend_flash, max_runs_per_row

    h, kvh, hd = 16, 4, 128
    rows = []
    for shape in a.shapes.split(","):
        b, t, mean_doc = (int(x) for x in shape.split("x"))
        keys = jax.random.split(jax.random.PRNGKey(0), 4)
        q = jax.random.normal(keys[0], (b, t, h, hd), jnp.bfloat16)
        k = jax.random.normal(keys[1], (b, t, kvh, hd), jnp.bfloat16)
        v = jax.random.normal(keys[2], (b, t, kvh, hd), jnp.bfloat16)
        dy = jax.random.normal(keys[3], (b, t, h * hd), jnp.float32)
        seg = np.array(packed_batch(np.random.default_rng(0), b, t, 1000, mean_doc=mean_doc)["segment_ids"])
        seg[:, -37:] = 0  # a padding tail
        max_runs = max_runs_per_row(seg)
        seg = jnp.asarray(seg)
        dy = dy * (seg > 0)[..., None]

        def grads(impl, runs):
            def f(q, k, v):
                out = attend_flash(q, k, v, seg, seg, None, implementation=impl, packed_runs=runs)
                return jnp.sum(out.astype(jnp.float32) * dy)
            return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

        _, ref = grads("xla", 0)(q, k, v)
        row = {"rows": b, "length": t, "mean_document": mean_doc, "max_runs_per_row": max_runs,
               "xla_ms": 1e3 * median_seconds(grads("xla", 0), q, k, v, calls=20)}
        for runs in [0] + [int(r) for r in a.runs.split(",")]:
            f = grads("cudnn", runs)
            _, g = f(q, k, v)
            err = max(float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))
                            / jnp.max(jnp.abs(y.astype(jnp.float32)))) for x, y in zip(g, ref))
            name = "cudnn_mask" if runs == 0 else f"cudnn_packed_{runs}"
            row[name] = {"ms": 1e3 * median_seconds(f, q, k, v, calls=20), "max_rel_grad_diff_vs_xla": err,
                         "path": "mask" if runs == 0 or max_runs > runs else "packed"}
        print(row, flush=True)
        rows.append(row)
    dev = jax.devices()[0]
    write_result(f"attention_packed_{dev.platform}", {
        "heads": h, "kv_heads": kvh, "head_dim": hd, "dtype": "bfloat16", "rows": rows,
        "notes": "value + gradient of sum(attention * dy); 'path' is the kernel the lax.cond took (packed when "
                 "every row has at most that many runs of equal segment ids, else the segment mask)"})


if __name__ == "__main__":
    main()
