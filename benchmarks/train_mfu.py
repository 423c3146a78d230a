"""Model FLOPs utilisation of our train step on one accelerator, for a ~1B-parameter Mistral-shaped model.

The timed function is the trainer's own jitted `train_step` (AdamW, clipping, fp32 master weights, bf16
compute, loss on weighted tokens) on packed batches (documents of random lengths with segment ids and
restarting positions, as `build-data` + the grain packer produce). MFU = tokens/s x FLOPs per token / peak,
with the trainer's explicit FLOP count (`flops_per_token`: Q/K/V with GQA, O, three MLP matmuls, LM head,
causal attention; x3 for forward + backward; remat recomputation is not counted, as is usual) and the
datasheet dense bf16 peak. A large bf16 matmul is timed in the same run as the attainable ceiling.

Each variant runs in its own process; its keys: attention (xla | cudnn), remat (none | full | save_dots), batch
(micro-batch rows), accum (gradient accumulation), loss_chunk, scan (1: lax.scan over stacked layers, 0: unrolled),
runs (model.packed_attention_runs; 0: cuDNN's segment mask only), flags (named XLA flag sets, "cublas+lhs"):

    python benchmarks/train_mfu.py [--preset 1b] [--seq 2048] [--steps 10] \\
        [--variants "attention=cudnn,remat=none,batch=16,scan=0;attention=xla,remat=full,batch=4"]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import median_seconds, write_result  # noqa: E402

PRESETS = {
    # 1.11B parameters: Mistral's shape scaled down (GQA 4:1, head_dim 128, SwiGLU 3.5x, vocab 32000).
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=7168, num_hidden_layers=18,
               num_attention_heads=16, num_key_value_heads=4, sliding_window=None),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, sliding_window=None),
}


# Named XLA flag sets a variant may add ("flags=cublas+lhs").
XLA_FLAG_SETS = {
    "cublas": "--xla_gpu_enable_triton_gemm=false",
    "lhs": "--xla_gpu_enable_latency_hiding_scheduler=true",
    "nocmdbuf": "--xla_gpu_enable_command_buffer=",
}


def packed_batch(rng, batch: int, seq: int, vocab: int, mean_doc: int = 400):
    """Rows of back-to-back documents (random lengths), the last one cut at the row end; ~35% weighted tokens."""
    import numpy as np

    ids = rng.integers(3, vocab, size=(batch, seq + 1)).astype(np.int32)
    seg = np.zeros((batch, seq), np.int32)
    pos = np.zeros((batch, seq), np.int32)
    w = np.zeros((batch, seq), np.float32)
    for r in range(batch):
        start, s = 0, 1
        while start < seq:
            n = int(min(seq - start, max(16, rng.exponential(mean_doc))))
            seg[r, start:start + n] = s
            pos[r, start:start + n] = np.arange(n)
            w[r, start + int(0.65 * n):start + n] = 1.0  # the answer part of each document
            start, s = start + n, s + 1
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": w, "segment_ids": seg, "positions": pos}


def matmul_ceiling_tflops(n: int = 8192) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.bfloat16)
    return 2 * n**3 / median_seconds(jax.jit(lambda x, y: x @ y), a, b) / 1e12


def run_variant(preset: str, seq: int, steps: int, attention: str, remat: str, batch: int, accum: int,
                loss_chunk: int = 0, scan: int = 1, runs: int = 16) -> dict:
    import functools

    import jax
    import numpy as np

    from mnlu_jax.model.config import ModelConfig
    from mnlu_jax.model.mistral import init_params
    from mnlu_jax.train.config import OptimSection
    from mnlu_jax.train.step import flops_per_token, init_state, make_optimizer, peak_tflops, train_step

    config = ModelConfig(**PRESETS[preset], model_type="mistral", param_dtype="float32", compute_dtype="bfloat16",
                         remat_policy=remat, attention_impl=attention, loss_chunk=loss_chunk,
                         scan_layers=bool(scan), packed_attention_runs=runs)
    params = jax.jit(lambda k: init_params(config, k))(jax.random.PRNGKey(0))
    tx, _ = make_optimizer(OptimSection(learning_rate=1e-4, warmup_ratio=0.1, grad_clip=1.0, grad_accum=accum),
                           steps + 10)
    state = init_state(params, tx)
    step = jax.jit(functools.partial(train_step, config=config, tx=tx, grad_accum=accum), donate_argnums=(0,))
    rng = np.random.default_rng(0)
    batches = [jax.device_put(packed_batch(rng, batch * accum, seq, config.vocab_size)) for _ in range(2)]
    t = time.perf_counter()
    compiled = step.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - t
    mem = compiled.memory_analysis()
    for i in range(3):  # warm-up
        state, m = compiled(state, batches[i % 2])
    jax.block_until_ready(m)
    times, losses = [], []
    for i in range(steps):
        t = time.perf_counter()
        state, m = compiled(state, batches[i % 2])
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
        losses.append(float(m["loss"]))
    times.sort()
    step_s = times[len(times) // 2]
    tokens = batch * accum * seq
    fpt = flops_per_token(config, seq)
    dev = jax.devices()[0]
    peak = peak_tflops(dev)
    out = {"attention": attention, "remat": remat, "loss_chunk": loss_chunk, "scan_layers": bool(scan),
           "packed_attention_runs": runs, "xla_flags": os.environ.get("XLA_FLAGS", ""), "micro_batch": batch,
           "grad_accum": accum, "seq": seq,
           "tokens_per_step": tokens, "step_s": step_s, "tokens_per_s": tokens / step_s,
           "model_tflops_per_s": tokens * fpt / step_s / 1e12, "compile_s": compile_s,
           "loss_first_last": [losses[0], losses[-1]], "finite": bool(np.all(np.isfinite(losses))),
           "params": config.num_params(), "flops_per_token": fpt, "device": dev.device_kind,
           "peak_tflops": peak}
    if mem is not None:
        out["temp_gib"] = getattr(mem, "temp_size_in_bytes", 0) / 2**30
        out["argument_gib"] = getattr(mem, "argument_size_in_bytes", 0) / 2**30
    if peak:
        out["mfu"] = out["model_tflops_per_s"] / peak
    return out


def parse_variants(text: str) -> list[dict]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        v = {"attention": "xla", "remat": "none", "batch": 8, "accum": 1, "loss_chunk": 0, "scan": 1, "runs": 16,
             "flags": ""}
        for kv in part.split(","):
            k, _, val = kv.partition("=")
            if k.strip() not in v:
                raise ValueError(f"--variants: unknown key {k!r} in {part!r}; expected {', '.join(v)}")
            v[k.strip()] = int(val) if isinstance(v[k.strip()], int) else val.strip()
        out.append(v)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="1b", choices=list(PRESETS))
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--variants", default="attention=cudnn,remat=save_dots,batch=8;attention=cudnn,remat=save_dots,"
                                          "batch=8,runs=0;attention=cudnn,remat=save_dots,batch=16;attention=cudnn,"
                                          "remat=none,batch=8,scan=0;attention=cudnn,remat=none,batch=16,scan=0;"
                                          "attention=cudnn,remat=save_dots,batch=16,scan=0")
    ap.add_argument("--name", default=None)
    ap.add_argument("--variant-timeout", type=float, default=300.0)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    a = ap.parse_args()
    if a.one:
        v = json.loads(a.one)
        v.pop("flags")  # applied to this process's environment by the parent
        print("RESULT " + json.dumps(run_variant(a.preset, a.seq, a.steps, **v)), flush=True)
        return
    rows = []
    for v in parse_variants(a.variants):
        t = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, __file__, "--preset", a.preset, "--seq", str(a.seq), "--steps",
                                   str(a.steps), "--one", json.dumps(v)], capture_output=True, text=True,
                                  timeout=a.variant_timeout, env={**os.environ, "XLA_FLAGS": " ".join(
                                      XLA_FLAG_SETS[f] for f in v["flags"].split("+") if f)})
        except subprocess.TimeoutExpired as e:
            proc = subprocess.CompletedProcess(e.cmd, -9, "", f"timed out after {a.variant_timeout} s")
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            row = {**v, "error": (proc.stderr or proc.stdout)[-1500:]}
        else:
            row = json.loads(line[len("RESULT "):])
        row["wall_s"] = time.perf_counter() - t
        print(json.dumps(row), flush=True)
        rows.append(row)
    import jax

    dev = jax.devices()[0]
    ok = [r for r in rows if "mfu" in r]
    write_result(a.name or f"train_mfu_{a.preset}_{dev.platform}", {
        "preset": a.preset, "model": PRESETS[a.preset], "seq": a.seq, "steps": a.steps,
        "matmul_ceiling_tflops_bf16_8192": matmul_ceiling_tflops(8192 if dev.platform != "cpu" else 512),
        "rows": rows, "best_mfu": max((r["mfu"] for r in ok), default=None),
        "target": "50% MFU for the ~1B config on one H100 (datasheet dense bf16 peak)"})


if __name__ == "__main__":
    main()
