"""Ahead-of-time compile check of a training config (MaxText's `train_compile.py`, on this machine's CPU).

`mnlu-jax train --config C --aot-devices N` lowers and compiles the config's train step for its mesh over N
devices (simulated host devices when the real ones are fewer) with abstract inputs: no data is read and no
weight is loaded or allocated, so the 7B paper configs compile in seconds on a laptop. The report gives per device
the bytes XLA assigns to the step's arguments (parameters, AdamW state, batch), outputs, aliases (the donated state)
and temporaries, their peak sum, the step's FLOPs, and whether the peak fits `--device-memory`.

What carries over to the real machine: the argument and output sizes are exact (they follow from the shapes and
the shardings, the same on any backend). The temporaries are XLA:CPU's buffer assignment for the same program:
GPU and TPU compilers fuse and schedule differently, and `attention_impl: cudnn/auto` is compiled as `xla` here
(cuDNN needs an NVIDIA GPU; its flash kernel keeps less), so read them as an estimate of activation memory.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from mnlu_jax.train.config import TrainConfig, check_batch_fits_mesh, check_train_config

BATCH_FIELDS = ("inputs", "targets", "positions", "segment_ids", "weights")


def model_config_for(cfg: TrainConfig, model_config: str | None):
    """The ModelConfig the run would train, from `model_config` (a config.json), `model.config` (random) or the
    source's config.json, without touching any weight."""
    from mnlu_jax.model.config import ModelConfig
    from mnlu_jax.weights.convert import resolve_source

    m = cfg.model
    if model_config is not None:
        config = ModelConfig.from_json_file(model_config)
    elif m.source == "random":
        if not m.config:
            raise ValueError("model.source=random needs model.config (ModelConfig fields)")
        config = ModelConfig(**m.config)
    else:
        src = resolve_source(m.source)
        if src.suffix == ".gguf":
            from mnlu_jax.weights.gguf_io import gguf_config

            config = gguf_config(src)
        elif (src / "config.json").exists():
            config = ModelConfig.from_json_file(src / "config.json")
        else:
            raise ValueError(f"model.source {m.source}: no config.json; give the architecture with --model-config")
    return m.apply(config, attention_impl="xla" if m.attention_impl in ("cudnn", "auto") else m.attention_impl)


def compile_check(cfg: TrainConfig, model_config: str | None = None, device_memory: int | None = None) -> dict:
    """Compile the train step for `cfg`'s mesh over the visible devices and report its memory per device."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mnlu_jax.model.mistral import DTYPES, param_shapes
    from mnlu_jax.sharding import batch_sharding, make_mesh, param_shardings
    from mnlu_jax.train.step import flops_per_token, init_state, make_optimizer, state_shardings, train_step

    check_train_config(cfg)
    config = model_config_for(cfg, model_config)
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    check_batch_fits_mesh(cfg.global_batch_size, mesh.shape["data"] * mesh.shape["fsdp"], 1, cfg.optim.grad_accum)
    dtype = DTYPES[cfg.model.param_dtype]
    params = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s, dtype, sharding=sh), param_shapes(config),
                                    param_shardings(config, mesh), is_leaf=lambda x: isinstance(x, tuple))
    tx, _ = make_optimizer(cfg.optim, 1000)
    shardings = state_shardings(tx, params)
    state = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                   jax.eval_shape(lambda p: init_state(p, tx), params), shardings)
    rows, seq = cfg.global_batch_size, cfg.data.max_seq_length
    b_shard = batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct((rows, seq), jnp.float32 if k == "weights" else jnp.int32, sharding=b_shard)
             for k in BATCH_FIELDS}
    step = jax.jit(functools.partial(train_step, config=config, tx=tx, grad_accum=cfg.optim.grad_accum),
                   in_shardings=(shardings, b_shard), out_shardings=(shardings, None),
                   donate_argnums=(0,))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()

    def per_device(tree) -> int:
        return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
                   for x in jax.tree_util.tree_leaves(tree))

    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    report = {
        "devices": mesh.devices.size, "mesh": dict(mesh.shape), "backend": jax.default_backend(),
        "jax": jax.__version__, "host": f"{platform.machine()}, {os.cpu_count()} cores",
        "model": {"parameters": config.num_params(), "layers": config.num_hidden_layers, "hidden": config.hidden_size,
                  "param_dtype": cfg.model.param_dtype, "compute_dtype": cfg.model.compute_dtype,
                  "remat_policy": config.remat_policy, "attention_impl_compiled": config.attention_impl},
        "batch": {"rows": rows, "seq": seq, "grad_accum": cfg.optim.grad_accum},
        "compile_seconds": round(seconds, 1),
        "per_device_bytes": {"parameters": per_device(params), "optimizer_state": per_device(state["opt_state"]),
                             "arguments": mem.argument_size_in_bytes, "outputs": mem.output_size_in_bytes,
                             "aliased": mem.alias_size_in_bytes, "temporaries": mem.temp_size_in_bytes,
                             "peak": peak},
        "step_tflop": round(flops_per_token(config, seq) * rows * seq / 1e12, 1),
    }
    if device_memory is not None:
        report["device_memory_bytes"] = device_memory
        report["fits"] = peak <= device_memory
    return report


def markdown(report: dict) -> str:
    b = report["per_device_bytes"]
    gib = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
    lines = [f"Train step compiled ahead of time for {report['devices']} devices, mesh {report['mesh']} "
             f"({report['backend']}, {report['compile_seconds']} s): {report['model']['parameters'] / 1e9:.2f}B "
             f"parameters, batch {report['batch']['rows']} x {report['batch']['seq']}, "
             f"{report['step_tflop']} TFLOP a step.", "",
             "| per device | bytes |", "|---|---|"]
    for key in ("parameters", "optimizer_state", "arguments", "outputs", "aliased", "temporaries", "peak"):
        lines.append(f"| {key.replace('_', ' ')} | {gib(b[key])} |")
    if "fits" in report:
        lines += ["", f"{'Fits' if report['fits'] else 'Does NOT fit'} in {gib(report['device_memory_bytes'])} "
                      "per device (temporaries as XLA:CPU assigns them: an estimate for GPU/TPU)."]
    return "\n".join(lines) + "\n"


def host_devices_env(devices: int, env: dict | None = None) -> dict:
    """`env` (default: this process's) with JAX on the CPU showing `devices` host devices; XLA reads the count
    only when it starts."""
    env = dict(os.environ if env is None else env, JAX_PLATFORMS="cpu")
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    return env


def run_with_devices(argv: list[str], devices: int) -> int:
    """Re-run `mnlu-jax train ...` in a child process with `devices` host devices."""
    return subprocess.run([sys.executable, "-m", "mnlu_jax.cli", "train", *argv],
                          env=host_devices_env(devices)).returncode


def write_report(report: dict, path: str | Path) -> None:
    from mnlu_jax.config import write_text_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(report, indent=2))

