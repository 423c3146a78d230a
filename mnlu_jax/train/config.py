"""TrainConfig: every knob of a run, as typed dataclasses loaded from YAML with key=value overrides.

A run writes everything under `output_dir`: the resolved config, metrics.jsonl, TensorBoard events,
checkpoints/ (Orbax, with the data-iterator state), tokenizer/, final/ (our checkpoint) and hf/ (export).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass
class ModelSection:
    source: str = "random"                 # our checkpoint, HF dir, .gguf, or "random"
    config: dict[str, Any] | None = None   # ModelConfig fields for source=random (e.g. the tiny Mistral)
    tokenizer: str | None = None           # default: the source's tokenizer; for random: trained on the data
    tokenizer_vocab: int = 512             # when a tokenizer is trained for a random model
    param_dtype: str = "float32"           # master weights
    compute_dtype: str = "bfloat16"
    remat_policy: str = "full"             # none | full | save_dots
    scan_layers: bool = True
    loss_chunk: int = 0                    # positions per row per chunk of the fused LM head + loss; chunks without
                                           # loss-weighted (answer) positions are skipped (0: one piece, every position)
    attention_impl: str = "xla"            # xla | cudnn (cuDNN flash attention: NVIDIA GPUs, bf16 compute) | auto
    packed_attention_runs: int = 16        # cudnn on Hopper+: documents (+ padding) per row for the packed layout;
                                           # a batch with fuller rows uses the segment mask (0: always the mask)

    def apply(self, config: Any, **changes: Any) -> Any:
        """The ModelConfig trained: `config` (the architecture) with this section's dtypes, remat, layer loop, loss
        chunk and attention (`changes` override them)."""
        return config.replace(**{"param_dtype": self.param_dtype, "compute_dtype": self.compute_dtype,
                                 "remat_policy": self.remat_policy, "scan_layers": self.scan_layers,
                                 "loss_chunk": self.loss_chunk, "attention_impl": self.attention_impl,
                                 "packed_attention_runs": self.packed_attention_runs, **changes})


@dataclasses.dataclass
class DataSection:
    path: str = ""                         # build-data output dir (train-*.jsonl) or one JSONL file
    chat_template: str = "zephyr"          # zephyr (the original) | tokenizer | path to a Jinja file
    max_seq_length: int = 2048             # packed length
    seed: int = 42


@dataclasses.dataclass
class OptimSection:
    learning_rate: float = 2e-4
    warmup_ratio: float = 0.1
    schedule: str = "cosine"               # cosine | constant
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0
    grad_accum: int = 1


@dataclasses.dataclass
class MeshSection:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1


@dataclasses.dataclass
class CheckpointSection:
    every_steps: int = 500
    keep: int = 3
    async_save: bool = True


@dataclasses.dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    optim: OptimSection = dataclasses.field(default_factory=OptimSection)
    mesh: MeshSection = dataclasses.field(default_factory=MeshSection)
    checkpoint: CheckpointSection = dataclasses.field(default_factory=CheckpointSection)
    epochs: int = 3
    global_batch_size: int = 16            # packed sequences per optimizer step (all processes)
    max_steps: int | None = None           # stop early (smoke tests, benchmarks)
    seed: int = 42
    log_every: int = 1
    peak_tflops_per_device: float | None = None  # for MFU; default from the device kind when known
    tensorboard: bool = True
    wandb_project: str | None = None
    export_hf: bool = True                 # write output_dir/hf at the end (for merge and vLLM)
    distributed: str = "auto"              # auto | none | explicit (coordinator from MNLU_* env)


DISTRIBUTED_MODES = ("auto", "none", "explicit")


def check_train_config(cfg: TrainConfig) -> None:
    """Refuse settings no run can use, naming the field, before any data is read or host is waited for: a negative
    learning rate trained by gradient ascent, a warmup ratio over 1 never reached the peak, `log_every: 0` failed
    at the first step and `optim.grad_accum` not dividing the batch inside the jitted step."""
    from mnlu_jax.model.mistral import ATTENTION_IMPLS, DTYPES, REMAT_POLICIES

    problems = []

    def need(ok: bool, field: str, expected: str, value: Any) -> None:
        if not ok:
            problems.append(f"{field}: expected {expected}, got {value!r}")

    def positive_int(field: str, value: Any, allow_none: bool = False) -> None:
        need((allow_none and value is None) or (isinstance(value, int) and value >= 1), field,
             "an integer >= 1" + (" or null" if allow_none else ""), value)

    def number_in(field: str, value: Any, low: float, high: float, closed_high: bool = False) -> None:
        ok = isinstance(value, (int, float)) and math.isfinite(value) and low <= value and \
            (value <= high if closed_high else value < high)
        need(ok, field, f"a number in [{low}, {high}{']' if closed_high else ')'}", value)

    m, d, o, c = cfg.model, cfg.data, cfg.optim, cfg.checkpoint
    need(bool(cfg.output_dir) and "://" not in cfg.output_dir, "output_dir",
         "a directory (a path every host sees: gs:// and other URLs are not written to; mount a bucket with gcsfuse)",
         cfg.output_dir)
    for field, value in (("epochs", cfg.epochs), ("global_batch_size", cfg.global_batch_size),
                         ("log_every", cfg.log_every), ("data.max_seq_length", d.max_seq_length),
                         ("optim.grad_accum", o.grad_accum), ("checkpoint.every_steps", c.every_steps),
                         ("checkpoint.keep", c.keep)):
        positive_int(field, value)
    positive_int("max_steps", cfg.max_steps, allow_none=True)
    need(cfg.peak_tflops_per_device is None or (isinstance(cfg.peak_tflops_per_device, (int, float))
                                               and cfg.peak_tflops_per_device > 0),
         "peak_tflops_per_device", "a number > 0 or null", cfg.peak_tflops_per_device)
    need(cfg.distributed in DISTRIBUTED_MODES, "distributed", f"one of {DISTRIBUTED_MODES}", cfg.distributed)
    need(m.param_dtype in DTYPES, "model.param_dtype", f"one of {sorted(DTYPES)}", m.param_dtype)
    need(m.compute_dtype in DTYPES, "model.compute_dtype", f"one of {sorted(DTYPES)}", m.compute_dtype)
    need(m.remat_policy in REMAT_POLICIES, "model.remat_policy", f"one of {REMAT_POLICIES}", m.remat_policy)
    need(m.attention_impl in ATTENTION_IMPLS, "model.attention_impl", f"one of {ATTENTION_IMPLS}", m.attention_impl)
    for field, value in (("model.loss_chunk", m.loss_chunk), ("model.packed_attention_runs", m.packed_attention_runs)):
        need(isinstance(value, int) and value >= 0, field, "an integer >= 0", value)
    need(isinstance(o.learning_rate, (int, float)) and math.isfinite(o.learning_rate) and o.learning_rate > 0,
         "optim.learning_rate", "a number > 0", o.learning_rate)
    number_in("optim.warmup_ratio", o.warmup_ratio, 0, 1)
    need(o.schedule in ("cosine", "constant"), "optim.schedule", "cosine or constant", o.schedule)
    number_in("optim.weight_decay", o.weight_decay, 0, math.inf)
    number_in("optim.b1", o.b1, 0, 1)
    number_in("optim.b2", o.b2, 0, 1)
    need(isinstance(o.eps, (int, float)) and o.eps > 0, "optim.eps", "a number > 0", o.eps)
    number_in("optim.grad_clip", o.grad_clip, 0, math.inf)  # 0: no clipping
    try:  # a template name or file the first tokenisation would refuse
        from mnlu_jax.data.chat import check_template_choice

        check_template_choice(d.chat_template)
    except ValueError as e:
        problems.append(f"data.chat_template: {e}")
    for axis in ("data", "fsdp", "tensor"):
        size = getattr(cfg.mesh, axis)
        need(isinstance(size, int) and (size == -1 or size >= 1), f"mesh.{axis}", "-1 (the rest) or an integer >= 1",
             size)
    if not problems and cfg.global_batch_size % o.grad_accum:
        problems.append(f"global_batch_size {cfg.global_batch_size} is not a multiple of optim.grad_accum "
                        f"{o.grad_accum} (the micro-batches split it evenly)")
    if problems:
        raise ValueError("train config: " + "; ".join(problems))


def check_batch_fits_mesh(global_batch_size: int, data_shards: int, processes: int, grad_accum: int = 1) -> None:
    """The batch is split over the mesh's data and fsdp axes and read in equal parts by each process; so is each
    micro-batch (with fewer rows than shards XLA replicates its activations: "involuntary full rematerialization")."""
    for count, what in ((data_shards, "data x fsdp mesh size"), (processes, "number of processes")):
        if global_batch_size % count:
            raise ValueError(f"global_batch_size {global_batch_size} is not a multiple of the {what} {count}")
    rows = global_batch_size // grad_accum
    if grad_accum > 1 and rows % data_shards:
        raise ValueError(f"global_batch_size {global_batch_size} / optim.grad_accum {grad_accum} = {rows} rows per "
                         f"micro-batch, not a multiple of the data x fsdp mesh size {data_shards}")
