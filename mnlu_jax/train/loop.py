"""The training loop: mesh, sharded state, data, Orbax checkpoints with resume, preemption, logging.

Read top to bottom: setup -> (restore) -> for each batch: step, log, maybe checkpoint -> final save/export.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from tqdm.auto import tqdm

from mnlu_jax.config import changed_settings, save_config, to_dict, write_text_atomic
from mnlu_jax.data.loader import count_batches, make_dataset
from mnlu_jax.data.schema import read_instances, shard_files
from mnlu_jax.data.tokenize import tokenize_all
from mnlu_jax.locks import exclusive
from mnlu_jax.model.config import ModelConfig
from mnlu_jax.model.mistral import (cudnn_packed_attention_api, init_params, max_runs_per_row,
                                    resolve_attention_impl)
from mnlu_jax.sharding import batch_sharding, make_mesh, param_shardings
from mnlu_jax.train import distributed
from mnlu_jax.train.config import TrainConfig, check_batch_fits_mesh, check_train_config
from mnlu_jax.train.step import flops_per_token, init_state, make_optimizer, peak_tflops, train_step


class TrainingDiverged(RuntimeError):
    pass


def _instances(path: str | Path):
    p = Path(path)
    if not str(path) or not p.exists():
        raise FileNotFoundError(f"data.path {str(path)!r}: no such file or directory (expected build-data's output "
                                "directory or one JSONL file)")
    files = shard_files(p) if p.is_dir() else [p]
    if not files:
        raise FileNotFoundError(f"data.path {p}: no train-*.jsonl shards (run mnlu-jax build-data first)")
    return [i for f in files for i in read_instances(f)]


def _check_model_paths(cfg: TrainConfig) -> None:
    """`model.source` and `model.tokenizer` must be a local path or a Hub id ("org/name"): a mistyped path used to be
    found only after output_dir was made, and a tokenizer path reached transformers as a malformed repo id."""
    from mnlu_jax.weights.convert import check_source

    for field, value in (("model.source", cfg.model.source), ("model.tokenizer", cfg.model.tokenizer)):
        if value not in (None, "", "random"):
            check_source(value, field)


def load_model_and_tokenizer(cfg: TrainConfig, instances, out: Path):
    from mnlu_jax.weights.convert import load_model, load_tokenizer

    m = cfg.model
    if m.source == "random":
        if not m.config:
            raise ValueError("model.source=random needs model.config (ModelConfig fields)")
        config = ModelConfig(**m.config)
        params = jax.tree_util.tree_map(np.asarray, init_params(config, jax.random.PRNGKey(cfg.seed), m.param_dtype))
        if m.tokenizer:
            tok = load_tokenizer(m.tokenizer)
        else:
            from mnlu_jax.data.tiny_tokenizer import instance_texts, train_tiny_tokenizer

            tok = train_tiny_tokenizer(instance_texts(instances), vocab_size=min(m.tokenizer_vocab, config.vocab_size))
        tok_src = None
    else:
        params, config, tok_src = load_model(m.source, dtype=m.param_dtype)
        tok = load_tokenizer(m.tokenizer or tok_src)
    if len(tok) > config.vocab_size:
        raise ValueError(f"tokenizer has {len(tok)} tokens but the model's vocabulary is {config.vocab_size}")
    config = m.apply(config)
    if jax.process_index() == 0:
        tok.save_pretrained(str(out / "tokenizer"))
    return params, config, tok, tok_src


# Settings a resumed run may change: when to stop, checkpoint and log, where it runs, and how a step is computed
# (the same math: remat, the layer loop, attention kernels, the loss chunk). Any other change (data, optimizer,
# batch, seed, model) would continue one run's checkpoint as another run.
RESUMABLE_CHANGES = ("output_dir", "max_steps", "checkpoint.", "log_every", "tensorboard", "wandb_project",
                     "export_hf", "distributed", "peak_tflops_per_device", "mesh.", "model.remat_policy",
                     "model.scan_layers", "model.loss_chunk", "model.attention_impl", "model.packed_attention_runs")


def _flat(d: dict, prefix: str = "") -> dict:
    return {k2: v2 for k, v in d.items()
            for k2, v2 in (_flat(v, f"{prefix}{k}.").items() if isinstance(v, dict) and k != "config"
                           else [(f"{prefix}{k}", v)])}


def check_resume_settings(cfg: TrainConfig, out: Path) -> None:
    """Refuse to resume `out`'s checkpoints under settings that change the run (see RESUMABLE_CHANGES)."""
    saved, ckpts = out / "config.yaml", out / "checkpoints"
    if not saved.exists() or not ckpts.is_dir() or not any(p.name.isdigit() for p in ckpts.iterdir()):
        return
    before, now = _flat(yaml.safe_load(saved.read_text()) or {}), _flat(to_dict(cfg))
    changed = changed_settings(before, now, [k for k in sorted(set(before) | set(now))
                                             if not k.startswith(RESUMABLE_CHANGES)])
    if changed:
        raise ValueError(f"{out}: its checkpoints are of a run with other settings ({'; '.join(changed)}); use "
                         f"another output_dir, or remove {ckpts} to start this one over")


class CheckpointUnreadable(ValueError):
    """The newest checkpoint cannot be restored; names it, the cause's first line and what to do."""

    def __init__(self, path: Path, step: int, earlier: list[int], cause: BaseException):
        root = cause
        while root.__cause__ is not None:  # Orbax wraps the TensorStore error that says what is wrong
            root = root.__cause__
        what = (str(root).strip().splitlines() or [type(root).__name__])[0][:300]
        advice = (f"move it aside (mv {path} {path}.bad) to resume from step {max(earlier)}" if earlier else
                  f"no earlier checkpoint is kept: remove {path.parent} to train from the start")
        super().__init__(f"{path}: cannot restore the training state of step {step} ({what}); {advice}")


def run_train(cfg: TrainConfig, progress: bool = True) -> dict:
    check_train_config(cfg)
    distributed.initialize(cfg.distributed)
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    check_batch_fits_mesh(cfg.global_batch_size, mesh.shape["data"] * mesh.shape["fsdp"], jax.process_count(),
                          cfg.optim.grad_accum)
    instances = _instances(cfg.data.path)  # before output_dir is made: a wrong path leaves nothing behind
    _check_model_paths(cfg)  # likewise
    out = Path(cfg.output_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    # one run per output_dir (its own processes share it: process 0 holds the lock for them; mnlu_jax/locks.py)
    with exclusive(out / "train.lock", str(out)) if jax.process_index() == 0 else contextlib.nullcontext():
        return _train(cfg, progress, mesh, instances, out)


def _train(cfg: TrainConfig, progress: bool, mesh, instances: list, out: Path) -> dict:
    import orbax.checkpoint as ocp

    check_resume_settings(cfg, out)
    if jax.process_index() == 0:
        save_config(cfg, out / "config.yaml")

    params, config, tok, tok_src = load_model_and_tokenizer(cfg, instances, out)
    examples, trunc = tokenize_all(instances, tok, cfg.data.chat_template, cfg.data.max_seq_length + 1)
    seq = cfg.data.max_seq_length
    steps_per_run = count_batches(examples, seq, cfg.global_batch_size, cfg.data.seed, cfg.epochs)
    total_steps = min(steps_per_run, cfg.max_steps) if cfg.max_steps else steps_per_run
    if total_steps == 0:
        raise ValueError(f"no full batch of {cfg.global_batch_size} packed sequences; lower global_batch_size")

    p_shard = param_shardings(config, mesh)
    b_shard = batch_sharding(mesh)
    tx, sched = make_optimizer(cfg.optim, total_steps)
    params = jax.tree_util.tree_map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda idx: np.asarray(x[idx])),
                                    params, p_shard)
    state = init_state(params, tx, jax.random.key_data(jax.random.PRNGKey(cfg.seed)))
    state = _on_mesh(state, mesh)
    state_shard = jax.tree_util.tree_map(lambda x: x.sharding, state)
    step_fn = jax.jit(functools.partial(train_step, config=config, tx=tx, grad_accum=cfg.optim.grad_accum),
                      in_shardings=(state_shard, b_shard), out_shardings=(state_shard, None), donate_argnums=(0,))

    data = make_dataset(examples, seq, cfg.global_batch_size, cfg.data.seed, cfg.epochs,
                        jax.process_index(), jax.process_count())
    it = iter(data)
    mngr = ocp.CheckpointManager(out / "checkpoints", options=ocp.CheckpointManagerOptions(
        max_to_keep=cfg.checkpoint.keep, enable_async_checkpointing=cfg.checkpoint.async_save))
    start = 0
    if mngr.latest_step() is not None:
        start = mngr.latest_step()
        abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        try:
            restored = mngr.restore(start, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                   data=ocp.args.JsonRestore()))
        except Exception as e:  # a damaged step (disk full, a partial copy): one line, not Orbax's 150
            earlier = [s for s in mngr.all_steps() if s < start]
            mngr.close()  # its threads otherwise print "Event loop is closed" tracebacks at exit
            raise CheckpointUnreadable(out / "checkpoints" / str(start), start, earlier, e) from e
        state = restored["state"]
        it.set_state(restored["data"])
        print(f"resumed from step {start} ({out / 'checkpoints'})")

    params_finite = jax.jit(lambda p: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(p)])))

    def save(step: int, force: bool = False) -> None:
        # Nothing non-finite goes into a checkpoint, whatever log_every is: a NaN between two log steps used to be
        # saved and then named as the last good checkpoint. Finite loss and gradients can still give infinite
        # weights (an overflowing update), so the weights are checked too: one reduction, next to a full write.
        check_finite(step, m)
        if not bool(params_finite(state["params"])):
            diverged(step, "the weights hold non-finite values")
        mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(it.get_state())),
                  force=force)

    def diverged(step: int, what: str) -> None:
        raise TrainingDiverged(
            f"{what} at step {step}; stopped. Last good checkpoint: "
            f"{'step ' + str(last_good) if last_good is not None else 'none'} in {out / 'checkpoints'}")

    def check_finite(step: int, metrics: dict) -> None:
        loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
        if not math.isfinite(loss):
            diverged(step, f"loss is {loss}")
        if not math.isfinite(grad_norm):
            diverged(step, f"gradient norm is {grad_norm}")

    stop = {"signal": None}
    prev = signal.signal(signal.SIGTERM, lambda s, f: stop.update(signal=s))

    fpt = flops_per_token(config, seq)
    peak = cfg.peak_tflops_per_device or peak_tflops(jax.devices()[0])
    packed_runs = config.packed_attention_runs if _packed_attention_active(config) else None
    max_runs, warned = 0, False
    writer = _tensorboard(out, start) if cfg.tensorboard and jax.process_index() == 0 else None
    wandb_run = _wandb(cfg, out) if cfg.wandb_project and jax.process_index() == 0 else None
    if jax.process_index() == 0:
        _keep_metrics_through(out / "metrics.jsonl", start)
    metrics_f = open(out / "metrics.jsonl", "a") if jax.process_index() == 0 else None
    bar = tqdm(total=total_steps, initial=start, desc="train", unit="step", disable=not progress or jax.process_index())
    last_good = mngr.latest_step()
    history = []
    m = None
    t_last = time.perf_counter()
    step = start
    try:
        while step < total_steps:
            local = next(it)
            max_runs = max(max_runs, max_runs_per_row(np.asarray(local["segment_ids"])))
            if packed_runs is not None and max_runs > packed_runs and not warned:
                warned = True
                print(f"warning: step {step + 1}: packed rows hold up to {max_runs} runs of equal segment ids "
                      f"(documents + padding) but model.packed_attention_runs is {packed_runs}; such batches take "
                      f"cuDNN's slower segment-mask kernel (raise packed_attention_runs to cover them)")
            batch = {k: jax.make_array_from_process_local_data(b_shard, np.asarray(v)) for k, v in local.items()}
            state, m = step_fn(state, batch)
            step += 1
            if step % cfg.log_every == 0 or step == total_steps:
                check_finite(step, m)
                loss = float(m["loss"])
                now = time.perf_counter()
                dt = (now - t_last) / cfg.log_every if step > start + 1 else now - t_last
                t_last = now
                tokens_per_s = cfg.global_batch_size * seq / max(dt, 1e-9)
                rec = {"step": step, "loss": loss, "learning_rate": float(sched(step - 1)),
                       "grad_norm": float(m["grad_norm"]), "trained_tokens": float(m["tokens"]),
                       "tokens_per_s": tokens_per_s, "step_time_s": dt, "max_runs_per_row": max_runs}
                max_runs = 0
                if peak:
                    rec["mfu"] = tokens_per_s * fpt / (peak * 1e12 * jax.device_count())
                history.append(rec)
                if metrics_f:
                    metrics_f.write(json.dumps(rec) + "\n")
                    metrics_f.flush()
                if writer:
                    for k, v in rec.items():
                        if k != "step":
                            writer.add_scalar(f"train/{k}", v, step)
                if wandb_run:
                    wandb_run.log(rec, step=step)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:.0f}")
            bar.update(1)
            if step % cfg.checkpoint.every_steps == 0 or step == total_steps:
                save(step)
                last_good = step
            if stop["signal"] is not None:
                save(step, force=True)
                mngr.wait_until_finished()
                print(f"received signal {stop['signal']}: saved step {step} to {out / 'checkpoints'}; exiting")
                return {"preempted": True, "step": step, "history": history}
        mngr.wait_until_finished()
    finally:
        mngr.wait_until_finished()  # also when stopping on divergence: the last good checkpoint is the one named
        signal.signal(signal.SIGTERM, prev)
        bar.close()
        if metrics_f:
            metrics_f.close()
        if writer:
            writer.close()
        if wandb_run:
            wandb_run.finish()
    _finish(cfg, state["params"], config, out, tok_src, step, history[-1]["loss"] if history else None)
    summary = {"steps": step, "total_steps": total_steps, "truncated": dict(trunc), "history": history,
               "flops_per_token": fpt}
    if jax.process_index() == 0:
        write_text_atomic(out / "summary.json", json.dumps({k: v for k, v in summary.items() if k != "history"},
                                                           indent=2))
        _plot_loss(out)
    return summary


def _packed_attention_active(config: ModelConfig) -> bool:
    return (resolve_attention_impl(config) == "cudnn" and config.packed_attention_runs > 0
            and cudnn_packed_attention_api() is not None)


def _on_mesh(tree, mesh):
    """Replicate over the mesh every leaf that is not laid out on it yet (optimizer counters, step, rng)."""
    from jax.sharding import NamedSharding, PartitionSpec

    n = mesh.devices.size

    def fix(x):
        if len(x.sharding.device_set) == n:
            return x
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, NamedSharding(mesh, PartitionSpec()), lambda idx: host[idx])

    return jax.tree_util.tree_map(fix, tree)


def _finish(cfg: TrainConfig, params, config: ModelConfig, out: Path, tok_src, steps: int = 0,
            last_loss: float | None = None) -> None:
    """Our checkpoint at out/final (all processes write their shards through Orbax) and, if asked, an HF export
    at out/hf (gathered to process 0). The marker file is written last, so a crash leaves no valid-looking dir."""
    import shutil

    import orbax.checkpoint as ocp
    from jax.experimental import multihost_utils

    from mnlu_jax.weights.convert import MARKER, export_hf

    final = out / "final"
    if jax.process_index() == 0:
        for d in (final, out / "hf"):
            if d.exists():
                shutil.rmtree(d)
    multihost_utils.sync_global_devices("mnlu_jax: final dir cleared")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(final / "params", params)
    ckptr.wait_until_finished()
    final_cfg = config.replace(compute_dtype="float32", remat_policy="none", attention_impl="xla")
    host = None
    if cfg.export_hf:
        host = jax.tree_util.tree_map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), params)
    if jax.process_index() == 0:
        (final / "config.json").write_text(json.dumps(final_cfg.to_hf_dict(), indent=2))
        for f in (out / "tokenizer").iterdir():
            shutil.copy2(f, final / f.name)
        if host is not None:
            export_hf(host, final_cfg, out / "hf", tokenizer_dir=out / "tokenizer", progress=False)
            write_text_atomic(out / "hf" / "README.md", model_card(cfg, steps, last_loss))
        # last: a pipeline rerun takes the marker as a finished run, so it must not precede the HF export
        write_text_atomic(final / MARKER, json.dumps({"format": 1, "source": "mnlu-jax train"}, indent=2))
    multihost_utils.sync_global_devices("mnlu_jax: final outputs written")


def model_card(cfg: TrainConfig, steps: int, last_loss: float | None) -> str:
    """A Hugging Face model card for the HF export (as transformers' Trainer writes one): the base model in the front
    matter, then the data and the settings that made it, so that an upload says what it is."""
    o = cfg.optim
    base = cfg.model.source
    rows = [("data", f"`{cfg.data.path}` (MNLU-Instruct format), chat template `{cfg.data.chat_template}`"),
            ("epochs", cfg.epochs), ("optimizer steps", steps),
            ("global batch (packed sequences)", cfg.global_batch_size),
            ("sequence length", cfg.data.max_seq_length),
            ("learning rate", f"{o.learning_rate:g}, {o.schedule}, warmup ratio {o.warmup_ratio:g}"),
            ("AdamW", f"b1 {o.b1:g}, b2 {o.b2:g}, eps {o.eps:g}, weight decay {o.weight_decay:g} (not on norms)"),
            ("gradient clipping / accumulation", f"{o.grad_clip:g} / {o.grad_accum}"),
            ("precision", f"{cfg.model.param_dtype} weights, {cfg.model.compute_dtype} compute"),
            ("loss", "assistant tokens only"),
            ("final training loss", "-" if last_loss is None else f"{last_loss:.4f}")]
    front = ["---", *(["base_model:", f"- {base}"] if base != "random" else []), "library_name: transformers",
             "tags:", "- mnlu-jax", "- sft", "- biomedical", "---"]
    return "\n".join([*front, f"# {Path(cfg.output_dir).name}", "",
                      "Full-parameter supervised fine-tuning with mnlu-jax (`mnlu-jax train`)"
                      + (f" of `{base}`." if base != "random" else " of a randomly initialised model."), "",
                      "| setting | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
                      "The run's resolved configuration is its `config.yaml`; per-step metrics are in `metrics.jsonl`.",
                      ""])


def _tensorboard(out: Path, start: int = 0):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        print("tensorboardX not installed: no TensorBoard events (pip install tensorboardX)")
        return None
    # purge_step: TensorBoard hides the events past the checkpoint a resumed run starts from, as metrics.jsonl drops
    # them, so the steps trained again are not drawn twice
    return SummaryWriter(str(out / "tensorboard"), purge_step=start + 1 if start else None)


def _wandb(cfg: TrainConfig, out: Path):
    """A wandb run that a resumed training run continues: its id is kept in output_dir (each start used to open a
    new wandb run, so one training run showed as several)."""
    import secrets

    import wandb  # optional: only when wandb_project is set

    id_file = out / "wandb_run_id"
    if id_file.exists():
        run_id = id_file.read_text().strip()
    else:
        run_id = secrets.token_hex(4)
        write_text_atomic(id_file, run_id + "\n")
    return wandb.init(project=cfg.wandb_project, config=to_dict(cfg), dir=str(out), id=run_id, resume="allow")


def _keep_metrics_through(path: Path, step: int) -> None:
    """Before (re)starting at `step`, keep the metrics records of steps up to it and drop the rest: the steps after
    the checkpoint are trained and logged again, and a record torn by a kill mid-write would otherwise be glued to
    the next run's first line."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn by a kill (or glued to the next run's first record by versions before session 22)
        if isinstance(rec, dict) and rec.get("step", step + 1) <= step:
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))


def _plot_loss(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    if not recs:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in recs], [r["loss"] for r in recs])
    ax.set(xlabel="step", ylabel="loss (assistant tokens)", title="training loss")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)
