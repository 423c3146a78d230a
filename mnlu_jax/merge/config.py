"""MergeConfig: the YAML/CLI form of a merge, and `run_merge` which executes it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mnlu_jax.merge.math import MergeSpec


@dataclasses.dataclass
class MergeConfig:
    base: str = ""
    models: list[str] = dataclasses.field(default_factory=list)
    out: str = ""
    method: str = "dare"
    drop_rate: float = 0.2
    rescale: bool = True
    apply: str = "average"
    lam: float = 1.0
    weights: list[float] | None = None
    epsilon: float = 0.15
    gamma: float = 0.01
    t: float = 0.5
    filter_wise: bool = False
    normalize: bool | None = None
    seed: int = 0
    exclude: str | None = None
    dtype: str | None = None
    vocab_policy: str = "error"
    shard_size_bytes: int = 2 * 2**30

    def spec(self) -> MergeSpec:
        return MergeSpec(method=self.method, drop_rate=self.drop_rate, rescale=self.rescale, apply=self.apply,
                         lam=self.lam, weights=tuple(self.weights) if self.weights else None, epsilon=self.epsilon,
                         gamma=self.gamma, t=self.t, filter_wise=self.filter_wise, normalize=self.normalize,
                         seed=self.seed)


def run_merge(cfg: MergeConfig, progress: bool = True) -> Path:
    from mnlu_jax.merge.streaming import merge_checkpoints

    for field in ("base", "out"):
        if not getattr(cfg, field):
            raise ValueError(f"merge: `{field}` is required (flag --{field} or key {field}: in the YAML)")
    if not cfg.models:
        raise ValueError("merge: `models` is required (flag --models or key models: in the YAML)")
    return merge_checkpoints(cfg.base, cfg.models, cfg.spec(), cfg.out, dtype=cfg.dtype, exclude=cfg.exclude,
                             vocab_policy=cfg.vocab_policy, max_shard_bytes=cfg.shard_size_bytes, progress=progress)
