"""MergeConfig: the YAML/CLI form of a merge, and `run_merge` which executes it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mnlu_jax.merge.math import MergeSpec
from mnlu_jax.merge.settings import SCHEDULABLE, Schedule, check_settings
from mnlu_jax.merge.vocabulary import TokenizerSettings


@dataclasses.dataclass
class MergeConfig:
    """`drop_rate`, `lam`, `epsilon`, `gamma`, `t` and each of `weights` take a number or, as in mergekit, a
    gradient over the layers or a list of {filter, value} conditions (merge/settings.py)."""
    base: str = ""
    models: list[str] = dataclasses.field(default_factory=list)
    out: str = ""
    method: str = "dare"
    drop_rate: Any = 0.2
    rescale: bool | None = None      # None: the method's default (on for DARE and DELLA, off for the others)
    rescale_norm: str | None = None  # None: 1/keep-probability per entry; l1 | l2 | linf: mergekit's norm matching
    apply: str = "average"
    lam: Any = 1.0
    weights: list[Any] | None = None
    # drop_rate, gamma or epsilon model by model: {name: [a setting per model]}, over the single field
    per_model: dict[str, list[Any]] | None = None
    epsilon: Any = 0.15
    gamma: Any = 0.01
    t: Any = None                    # None: 0.5 (slerp's midpoint); nearswap's distance must be given
    filter_wise: bool = False
    select_topk: Any = 1.0
    nuslerp_flatten: bool = True
    nuslerp_row_wise: bool = False
    nuslerp_base: bool = True
    max_iter: int = 10
    tol: float = 1e-5
    multislerp_base: bool = True
    multislerp_eps: float = 1e-8
    ram_epsilon: float = 1e-5
    ram_r: float = 0.1
    ram_alpha: float = 0.2
    normalize: bool | None = None
    seed: int = 0
    exclude: str | None = None
    dtype: str | None = None
    vocab_policy: str = "error"
    # the merge's tokenizer: "base", "union" or a model directory, every model's vocabulary rows moved to its
    # token ids first (merge/vocabulary.py; mergekit's tokenizer_source); None: rows merged as they are
    tokenizer_source: str | None = None
    pad_to_multiple_of: int | None = None  # with tokenizer_source: the row count padded up to a multiple of this
    # with tokenizer_source: where given tokens' rows come from, {TOKEN: {source: MODEL | {kind: zero} | {kind:
    # model_token, model: MODEL, token_id: N | token: STR}, force: BOOL}} (mergekit's tokenizer.tokens)
    token_sources: dict[str, Any] | None = None
    # the written tokenizer's chat template: auto | chatml | llama3 | mistral | zephyr | a Jinja file or text
    # (merge/chat_template.py); None: the tokenizer's own
    chat_template: str | None = None
    # layer ranges merged slice by slice and stacked in order (merge/slices.py): [{sources: [{model, layer_range:
    # [start, end]}, ...], base, <any setting above>}, ...]; for passthrough, one source each: [{model,
    # layer_range, scale}, ...]
    slices: list[dict[str, Any]] | None = None
    shard_size_bytes: int = 2 * 2**30
    # the mergekit config this one was read from, as given: written beside the merge as mergekit_config.yml and
    # quoted in its model card, as mergekit-yaml does
    mergekit_config: dict[str, Any] | None = None

    def spec(self) -> MergeSpec:
        """The spec of a tensor that no varying setting touches (each varying one at MergeSpec's default; the
        schedule sets it per tensor)."""
        check_settings(self._settings(), self.weights, self.per_model)
        if self.method == "nearswap" and self.t is None:
            raise ValueError("nearswap: `t` is required (flag --t or key t:): the distance within which an entry "
                             "takes the model's value, e.g. 0.0001")

        def plain(name):
            v = getattr(self, name)
            return v if isinstance(v, (int, float)) else getattr(MergeSpec, name)

        weights = self.weights if self.weights and all(isinstance(w, (int, float)) for w in self.weights) else None
        if self.weights and weights is None:
            weights = [1.0] * len(self.weights)
        # a per-model setting that varies by tensor is placed by the schedule; here it holds the field's value
        per_model = tuple((k, tuple(x if isinstance(x, (int, float)) else plain(k) for x in v))
                          for k, v in (self.per_model or {}).items())
        return MergeSpec(method=self.method, drop_rate=plain("drop_rate"), rescale=self.rescale,
                         rescale_norm=self.rescale_norm, apply=self.apply,
                         lam=plain("lam"), weights=tuple(weights) if weights else None, epsilon=plain("epsilon"),
                         gamma=plain("gamma"), t=plain("t"), filter_wise=self.filter_wise, normalize=self.normalize,
                         seed=self.seed, per_model=per_model, select_topk=plain("select_topk"),
                         nuslerp_flatten=self.nuslerp_flatten, nuslerp_row_wise=self.nuslerp_row_wise,
                         nuslerp_base=self.nuslerp_base, max_iter=self.max_iter, tol=self.tol,
                         multislerp_base=self.multislerp_base, multislerp_eps=self.multislerp_eps,
                         ram_epsilon=self.ram_epsilon, ram_r=self.ram_r, ram_alpha=self.ram_alpha)

    def tokenizer(self) -> TokenizerSettings:
        return TokenizerSettings(self.tokenizer_source, self.pad_to_multiple_of, self.token_sources,
                                 self.chat_template)

    def schedule(self) -> Schedule | None:
        return Schedule.make(self._settings(), self.weights, per_model=self.per_model)

    def _settings(self) -> dict:
        return {name: getattr(self, name) for name in SCHEDULABLE if getattr(self, name) is not None}


def translate_merge_config(data: dict, where: str) -> dict:
    """A mergekit config (it has `merge_method`) as our fields; ours as it is."""
    from mnlu_jax.merge.mergekit_config import from_mergekit, is_mergekit_config

    return from_mergekit(data, where) if is_mergekit_config(data) else data


def run_merge(cfg: MergeConfig, progress: bool = True) -> Path:
    from mnlu_jax.merge.streaming import merge_checkpoints

    cfg.tokenizer()  # (its settings checked before anything is read)
    if cfg.method == "passthrough":
        return _run_passthrough(cfg, progress)
    if cfg.slices is not None:
        return _run_sliced(cfg, progress)
    for field in ("base", "out"):
        if not getattr(cfg, field):
            raise ValueError(f"merge: `{field}` is required (flag --{field} or key {field}: in the YAML)")
    if not cfg.models:
        raise ValueError("merge: `models` is required (flag --models or key models: in the YAML)")
    return merge_checkpoints(cfg.base, cfg.models, cfg.spec(), cfg.out, dtype=cfg.dtype, exclude=cfg.exclude,
                             vocab_policy=cfg.vocab_policy, max_shard_bytes=cfg.shard_size_bytes, progress=progress,
                             schedule=cfg.schedule(), mergekit_config=cfg.mergekit_config,
                             tokenizer=cfg.tokenizer())


def _run_passthrough(cfg: MergeConfig, progress: bool) -> Path:
    from mnlu_jax.merge.mergekit_config import layer_range
    from mnlu_jax.merge.passthrough import LayerSlice, stack_slices

    if not cfg.out:
        raise ValueError("merge: `out` is required (flag --out or key out: in the YAML)")
    if not cfg.slices:
        raise ValueError("merge: passthrough needs `slices: [{model: PATH, layer_range: [START, END]}, ...]`")
    named = {s.get("model") for s in cfg.slices if isinstance(s, dict)}
    if cfg.weights is not None or (cfg.models and set(cfg.models) != named):
        raise ValueError("merge: passthrough takes its models from `slices` (with a `scale` each), not from "
                         "`models`/`weights`")
    slices = []
    for i, s in enumerate(cfg.slices):
        if not (isinstance(s, dict) and not set(s) - {"model", "layer_range", "scale"}
                and isinstance(s.get("model"), str)):
            raise ValueError(f"slices[{i}]: expected {{model: PATH, layer_range: [START, END], scale: ...}}, got {s!r}")
        start, end = layer_range(s.get("layer_range"), f"slices[{i}].layer_range")
        slices.append(LayerSlice(s["model"], start, end, s.get("scale")))
    return stack_slices(slices, cfg.out, base=cfg.base or None, dtype=cfg.dtype,
                        max_shard_bytes=cfg.shard_size_bytes, progress=progress,
                        mergekit_config=cfg.mergekit_config, tokenizer=cfg.tokenizer())


# MergeConfig fields that hold for the whole merge; a slice may set any other
WHOLE_MERGE = ("out", "method", "models", "slices", "dtype", "vocab_policy", "seed", "exclude", "shard_size_bytes",
               "mergekit_config", "tokenizer_source", "pad_to_multiple_of", "token_sources", "chat_template")


def _run_sliced(cfg: MergeConfig, progress: bool) -> Path:
    from mnlu_jax.merge.mergekit_config import layer_range
    from mnlu_jax.merge.slices import SliceMerge, SliceSource, merge_slices

    if not cfg.out:
        raise ValueError("merge: `out` is required (flag --out or key out: in the YAML)")
    if cfg.models:
        raise ValueError("merge: slices take their models from each slice's `sources`, not from `models`")
    if not cfg.slices:
        raise ValueError("merge: slices: expected [{sources: [{model: PATH, layer_range: [START, END]}, ...]}, ...]")
    if cfg.vocab_policy != "error":
        raise ValueError(f"merge: vocab_policy {cfg.vocab_policy!r} is for whole-model merges; the models of a merge "
                         "by slices share one vocabulary")
    local = [f.name for f in dataclasses.fields(MergeConfig) if f.name not in WHOLE_MERGE]
    merges = []
    for j, s in enumerate(cfg.slices):
        here = f"slices[{j}]"
        if not isinstance(s, dict) or not isinstance(s.get("sources"), list) or not s["sources"]:
            hint = " (a passthrough slice: add method=passthrough)" if isinstance(s, dict) and "model" in s else ""
            raise ValueError(f"{here}: expected {{sources: [{{model: PATH, layer_range: [START, END]}}, ...], "
                             f"base: PATH, <settings>}}, got {s!r}{hint}")
        unknown = sorted(set(s) - {"sources", *local})
        if unknown:
            raise ValueError(f"{here}: unknown key(s) {unknown}; a slice takes sources and settings of its own "
                             f"({', '.join(local)})")
        sources = []
        for i, src in enumerate(s["sources"]):
            if not (isinstance(src, dict) and not set(src) - {"model", "layer_range"}
                    and isinstance(src.get("model"), str)):
                raise ValueError(f"{here}.sources[{i}]: expected {{model: PATH, layer_range: [START, END]}}, got "
                                 f"{src!r}")
            sources.append(SliceSource(src["model"], *layer_range(src.get("layer_range"),
                                                                  f"{here}.sources[{i}].layer_range")))
        sub = dataclasses.replace(cfg, slices=None, models=[x.model for x in sources],
                                  **{k: v for k, v in s.items() if k != "sources"})
        if not sub.base:
            raise ValueError(f"{here}: a base is required (key base: in the slice, or for every slice at the top): "
                             "one of its sources")
        try:
            merges.append(SliceMerge(tuple(sources), sub.base, sub.spec(), sub.schedule()))
        except ValueError as e:
            raise ValueError(f"{here}: {e}") from None
    return merge_slices(merges, cfg.out, base=cfg.base or None, dtype=cfg.dtype, exclude=cfg.exclude,
                        max_shard_bytes=cfg.shard_size_bytes, progress=progress, mergekit_config=cfg.mergekit_config,
                        tokenizer=cfg.tokenizer())
