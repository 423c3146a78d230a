"""Training tokens/s of our jitted train step vs a PyTorch + transformers loop, same model and settings (CPU).

Same Mistral-shaped model (random init, fp32), same batch, sequence length, AdamW hyper-parameters and loss,
torch threads = cores. The loss is on every token, or with `--loss-mask sft` on the answers of rows packed like SFT
data (`sft_weights`; transformers gets labels -100 elsewhere; results in train_<preset>_<dtype>_sft.json).
Each side runs warm-up steps first (ours: compilation).
Ours computes the loss with the fused LM head + cross-entropy in chunks of `--loss-chunk` positions (the
single-device setting; see mnlu_jax/train/loss.py) and runs the layers as a Python loop (`scan_layers: false`, as
configs/train/tiny.yaml); the layer scan and the one-piece loss are measured alongside as variants.
`--preset smollm2` is SmolLM2-135M's shape, the model the demo fine-tunes (README: `--batch 4 --seq 384 --steps 2
--loss-mask sft`). On a GPU machine, `--preset 1b --dtype bfloat16` measures MFU of a ~1B-parameter config instead.

    python benchmarks/train.py [--preset small|smollm2|1b] [--steps 5] [--rounds 3] [--batch 8] [--seq 256]
                               [--loss-mask all|sft] [--products]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from benchmarks.common import write_result  # noqa: E402

PRESETS = {
    "small": dict(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, sliding_window=None),
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=7168, num_hidden_layers=16, num_attention_heads=16,
               num_key_value_heads=8, sliding_window=None),
    # SmolLM2-135M's shape (configs/train/demo_smollm2.yaml fine-tunes it on CPU in the demo): a 49k-token vocabulary
    # with tied embeddings, so the LM head is a fifth of the FLOPs
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, sliding_window=None),
}


def sft_weights(batch: int, seq: int, seed: int = 0):
    """An SFT loss mask: rows first-fit packed (as mnlu_jax/data/loader.py packs) with single-turn examples, prompt
    60-170 tokens and answer 5-30 (the spread of the shipped sample mix under SmolLM2's tokenizer, where 13 % of
    the tokens are assistant tokens), weight 1 on the answers; what no example fills is padding (weight 0). Only
    the mask follows the packing: both sides still attend causally over whole rows, as with every-token loss."""
    import numpy as np

    rng = np.random.default_rng(seed)
    weights = np.zeros((batch, seq), np.float32)
    used = [0] * batch
    for _ in range(8 * batch * seq // 100):  # a stream of examples a few times the batch
        prompt, answer = int(rng.integers(60, 171)), int(rng.integers(5, 31))
        row = next((r for r in range(batch) if used[r] + prompt + answer <= seq), None)
        if row is not None:
            weights[row, used[row] + prompt:used[row] + prompt + answer] = 1.0
            used[row] += prompt + answer
    return weights


def _setup(cfg_kw, batch, seq, dtype, loss_chunk, scan_layers=False, weights=None):
    """(model config, optimizer, batch) of our step, as `ours` runs it and `products_alone` counts it."""
    import jax.numpy as jnp
    import numpy as np

    from mnlu_jax.model.config import ModelConfig
    from mnlu_jax.train.config import OptimSection
    from mnlu_jax.train.step import make_optimizer

    config = ModelConfig(**cfg_kw, model_type="mistral", compute_dtype=dtype, param_dtype="float32",
                         remat_policy="none" if dtype == "float32" else "save_dots", loss_chunk=loss_chunk,
                         scan_layers=scan_layers)
    tx, _ = make_optimizer(OptimSection(learning_rate=1e-4, warmup_ratio=0.0, grad_clip=0.0), 1000)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, config.vocab_size, size=(batch, seq + 1)).astype(np.int32)
    b = {"inputs": jnp.asarray(ids[:, :-1]), "targets": jnp.asarray(ids[:, 1:]),
         "weights": jnp.ones((batch, seq)) if weights is None else jnp.asarray(weights),
         "segment_ids": jnp.ones((batch, seq), jnp.int32), "positions": jnp.tile(jnp.arange(seq), (batch, 1))}
    return config, tx, b


def ours(cfg_kw, batch, seq, dtype, loss_chunk, scan_layers=False, weights=None):
    """Build our jitted step; return (run(n) -> seconds for n steps, facts)."""
    import functools

    import jax

    from mnlu_jax.model.mistral import init_params
    from mnlu_jax.train.step import flops_per_token, init_state, peak_tflops, train_step

    config, tx, b = _setup(cfg_kw, batch, seq, dtype, loss_chunk, scan_layers, weights)
    state = {"s": init_state(init_params(config, jax.random.PRNGKey(0)), tx)}
    step = jax.jit(functools.partial(train_step, config=config, tx=tx, grad_accum=1), donate_argnums=(0,))
    step = step.lower(state["s"], b).compile()
    facts = {"params": config.num_params(), "device": jax.devices()[0].device_kind, "loss_chunk": loss_chunk,
             "scan_layers": scan_layers,
             "flops_per_token": flops_per_token(config, seq), "peak_tflops": peak_tflops(jax.devices()[0]),
             "devices": jax.device_count(),
             # XLA's scratch for one step: activations, logits, gradients
             "temp_mib": step.memory_analysis().temp_size_in_bytes / 2**20}

    def run(n):
        t = time.perf_counter()
        for _ in range(n):
            state["s"], m = step(state["s"], b)
        jax.block_until_ready(m)
        facts["loss"] = float(m["loss"])
        return time.perf_counter() - t

    return run, facts


def products_alone(cfg_kw, batch, seq, loss_chunk, weights=None, dtype="float32", repeats: int = 3,
                   one_core=False) -> dict:
    """What our step's matrix products cost on their own: every dot_general in the step's jaxpr (the fused loss's
    chunk loop counted once per chunk the batch fills), each compiled alone and timed back to back, median of
    15 calls each. On one core (`one_core`: a child process pinned to the first CPU before JAX starts its
    threads) the total over the number of cores is what the products need with every core busy every moment: a
    floor for the step with XLA's kernels on this CPU (README, "Training on this CPU")."""
    import collections
    import functools
    import json
    import subprocess
    import tempfile

    import numpy as np

    if one_core:
        with tempfile.TemporaryDirectory() as tmp:
            args = []
            if weights is not None:
                np.save(f"{tmp}/weights.npy", weights)
                args = [f"{tmp}/weights.npy"]
            code = ("import json, os, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
                    f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r}); "
                    "import numpy as np; from benchmarks.train import products_alone; "
                    "w = np.load(sys.argv[1]) if len(sys.argv) > 1 else None; "
                    f"print(json.dumps(products_alone({cfg_kw!r}, {batch}, {seq}, {loss_chunk}, w, {dtype!r}, "
                    f"{repeats})))")
            out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                                 check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    import jax
    import jax.numpy as jnp

    from mnlu_jax.model.mistral import init_params
    from mnlu_jax.train.step import init_state, train_step

    config, tx, b = _setup(cfg_kw, batch, seq, dtype, loss_chunk, weights=weights)
    state = jax.eval_shape(lambda: init_state(init_params(config, jax.random.PRNGKey(0)), tx))
    w = np.asarray(b["weights"])
    # the fused loss loops over chunks until the one holding the last answer token (train/loss.py): of loss_chunk x
    # batch positions with the rows merged (one device, train/step.py's loss_sums), else loss_chunk per row
    if not loss_chunk:
        chunks = 1
    elif jax.device_count() == 1:
        chunks = -(-int((w > 0).sum()) // (loss_chunk * batch))
    else:
        chunks = -(-int((w > 0).sum(axis=1).max()) // loss_chunk)
    jaxpr = jax.make_jaxpr(functools.partial(train_step, config=config, tx=tx, grad_accum=1))(state, b)
    counts: collections.Counter = collections.Counter()

    def walk(jx, times):
        for eqn in jx.eqns:
            if eqn.primitive.name == "dot_general":
                operands = tuple((v.aval.shape, str(v.aval.dtype)) for v in eqn.invars)
                counts[(operands, eqn.params["dimension_numbers"], eqn.params.get("preferred_element_type"))] += times
            # the only while loop is the loss's chunk loop; a scan (the layer scan, accumulation) runs `length` times
            inner_times = times * {"while": chunks, "scan": eqn.params.get("length", 1)}.get(eqn.primitive.name, 1)
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner, inner_times)

    walk(jaxpr.jaxpr, 1)

    def median_s(f, n=15):
        f()
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return sorted(ts)[n // 2]

    totals, flops = [], 0.0
    for _ in range(repeats):
        total, flops = 0.0, 0.0
        for (operands, dims, out_dtype), n in counts.items():
            (x_shape, _), _ = operands
            x, y = (jnp.ones(shape, dt) for shape, dt in operands)
            dot = jax.jit(functools.partial(jax.lax.dot_general, dimension_numbers=dims,
                                            preferred_element_type=out_dtype))
            out = jax.eval_shape(dot, x, y)
            flops += n * 2 * float(np.prod(out.shape)) * float(np.prod([x_shape[d] for d in dims[0][0]]))
            total += n * median_s(lambda: dot(x, y).block_until_ready())
        totals.append(total)
    return {"seconds": sorted(totals)[len(totals) // 2], "seconds_each_repeat": totals, "gflop": flops / 1e9,
            "products": sum(counts.values()), "distinct_shapes": len(counts), "loss_chunks": chunks,
            "cpus": len(os.sched_getaffinity(0))}


def reference(cfg_kw, batch, seq, weights=None):
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    cfg = transformers.MistralConfig(**{k: v for k, v in cfg_kw.items()}, max_position_embeddings=4096)
    model = transformers.MistralForCausalLM(cfg).float()
    model.config._attn_implementation = "sdpa"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1))
    labels = ids[:, 1:].clone()
    if weights is not None:  # the HF way: -100 marks positions without loss (the logits are still computed)
        labels[torch.from_numpy(weights) == 0] = -100
    facts = {}

    def run(n):
        t = time.perf_counter()
        for _ in range(n):
            out = model(input_ids=ids[:, :-1], labels=None)
            loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, cfg.vocab_size), labels.reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        facts["loss"] = float(loss)
        return time.perf_counter() - t

    return run, facts


def measure(sides: dict, batch: int, seq: int, steps: int, rounds: int) -> dict:
    """Warm every side up, then alternate rounds of `steps` steps between the sides (a pause between sides lets
    the previous one's threads go idle), so a change in the machine's speed during the run hits all sides alike.
    Step time = the median over rounds."""
    for run, _ in sides.values():
        run(2)
    times = {name: [] for name in sides}
    for _ in range(rounds):
        for name, (run, _) in sides.items():
            time.sleep(0.5)
            times[name].append(run(steps) / steps)
    out = {}
    for name, (_, facts) in sides.items():
        dt = sorted(times[name])[len(times[name]) // 2]
        out[name] = {"tokens_per_s": batch * seq / dt, "step_s": dt, "round_step_s": times[name], **facts}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small", choices=list(PRESETS))
    ap.add_argument("--steps", type=int, default=5, help="steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--loss-chunk", type=int, default=32, help="positions per chunk of the fused loss (0: one piece)")
    ap.add_argument("--scan-layers", action="store_true",
                    help="'ours' scans over the stacked layers (default: a Python loop, faster for shallow models on "
                         "CPU; 'ours_scan' is measured too unless --no-variants)")
    ap.add_argument("--loss-mask", default="all", choices=["all", "sft"],
                    help="all: loss on every token; sft: on answer tokens only (sft_weights), HF with labels -100")
    ap.add_argument("--no-variants", action="store_true", help="measure only 'ours' and the reference")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--products", action="store_true",
                    help="also time the step's matrix products alone, on all cores and pinned to one (products_alone)")
    a = ap.parse_args()
    cfg_kw = PRESETS[a.preset]
    w = sft_weights(a.batch, a.seq) if a.loss_mask == "sft" else None
    sides = {"ours": ours(cfg_kw, a.batch, a.seq, a.dtype, a.loss_chunk, a.scan_layers, w)}
    if not a.no_variants and not a.scan_layers:  # the layer scan (compile time flat in depth: deep models)
        sides["ours_scan"] = ours(cfg_kw, a.batch, a.seq, a.dtype, a.loss_chunk, True, w)
    if not a.no_variants and a.loss_chunk:  # the one-piece loss (the default on multi-device meshes)
        sides["ours_loss_one_piece"] = ours(cfg_kw, a.batch, a.seq, a.dtype, 0, a.scan_layers, w)
    if not a.no_reference:
        sides["pytorch_transformers"] = reference(cfg_kw, a.batch, a.seq, w)
    res = {"preset": a.preset, "model": cfg_kw, "batch": a.batch, "seq": a.seq, "dtype": a.dtype, "steps": a.steps,
           "rounds": a.rounds, "loss_mask": a.loss_mask,
           "loss_token_fraction": 1.0 if w is None else float((w > 0).mean()),
           **measure(sides, a.batch, a.seq, a.steps, a.rounds)}
    for side in (v for v in res.values() if isinstance(v, dict) and v.get("peak_tflops")):
        side["mfu"] = side["tokens_per_s"] * side["flops_per_token"] / (side["peak_tflops"] * 1e12 * side["devices"])
    if a.products:
        res["products_alone"] = {
            "all_cores": products_alone(cfg_kw, a.batch, a.seq, a.loss_chunk, w, a.dtype),
            "one_core": products_alone(cfg_kw, a.batch, a.seq, a.loss_chunk, w, a.dtype, one_core=True)}
    if not a.no_reference:
        res["speedup"] = res["ours"]["tokens_per_s"] / res["pytorch_transformers"]["tokens_per_s"]
    res["target"] = ">= 1.5x the PyTorch + transformers loop on CPU; 50% MFU for the 1b preset on one H100"
    write_result(f"train_{a.preset}_{a.dtype}" + ("_sft" if a.loss_mask == "sft" else ""), res)


if __name__ == "__main__":
    main()
