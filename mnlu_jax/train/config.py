"""TrainConfig: every knob of a run, as typed dataclasses loaded from YAML with key=value overrides.

A run writes everything under `output_dir`: the resolved config, metrics.jsonl, TensorBoard events,
checkpoints/ (Orbax, with the data-iterator state), tokenizer/, final/ (our checkpoint) and hf/ (export).
"""

from __future__ import annotations

import dataclasses
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
