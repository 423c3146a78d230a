"""Per-tensor merge math, pure and jit-able; the pytree API and the streaming driver both call it.

Notation: θ_b the base tensor, θ_i the i-th model, δ_i = θ_i − θ_b, w_i its weight, p the drop rate.

- linear:          Σ w_i θ_i / Σ w_i (Σ w_i θ_i with `normalize=False`)
- task_arithmetic: θ_b + λ Σ w_i δ_i (divided by Σ w_i with `normalize=True`)
- dare (MergeLM `mask_merging`, the paper's method): δ'_i = m_i ⊙ δ_i / (1 − p) with m_i ~ Bernoulli(1 − p)
  (no rescale when `rescale=False` or p = 1), then `apply="average"`: θ_b + Σ w_i δ'_i / Σ w_i
  or `apply="task_arithmetic"`: θ_b + λ Σ w_i δ'_i. With models [base, fine-tune] and p = 0.2 this is
  θ_b + 0.625 · m ⊙ δ_ft.
- ties (mergekit semantics): keep the top-k |δ_i| (k = max(1, ⌊density·n⌋), density = 1 − p), weight, elect
  the sign of Σ w_i δ_i (ties go to +), disjoint mean Σ w_i δ_i [agree] / Σ w_i [agree] (normalize), θ_b + λ·that.
- dare_ties: DARE masks and 1/(1 − p) rescale, then TIES sign election (no normalisation, as mergekit).
  dare_linear (mergekit's name): the same masks, then θ_b + λ Σ w_i δ'_i (÷ Σ w_i with `normalize`).
- della: DELLA's MagPrune: per row, keep probability rises linearly with magnitude rank from
  (1 − p) − ε to (1 − p) + ε; kept entries rescaled by 1/keep-probability; then TIES sign election and mean.
  della_linear (mergekit's name): the same masks, then θ_b + λ Σ w_i δ'_i (÷ Σ w_i with `normalize`).
- breadcrumbs (Model Breadcrumbs): per δ_i, drop the ⌊γ·n⌋ largest |δ| (outliers) and the smallest, keeping
  ⌊(1 − p)·n⌋ entries; then θ_b + λ Σ w_i δ_i (no normalisation, no rescale: mergekit's defaults).
  breadcrumbs_ties: the same masks, then TIES sign election (not normalised, as mergekit).
- slerp: spherical interpolation from θ_b (t = 0) to the one model (t = 1) over the whole tensor flattened:
  Ω = arccos(â·b̂) of the two unit vectors, θ_b·sin((1−t)Ω)/sin Ω + θ_1·sin(tΩ)/sin Ω, or the straight line where
  |â·b̂| > 0.9995 (mergekit: one angle per tensor).
- nuslerp (mergekit's): spherical interpolation between two models with t = w_2 / (w_1 + w_2), of their deltas
  from the base (θ_b + slerp(δ_1, δ_2)) or, with `nuslerp_base=False`, of the models themselves; one angle for the
  whole tensor (`nuslerp_flatten`, the default), else one per row (or per column with `nuslerp_row_wise`).
- sce (FuseChat's Select, Calculate, Erase; mergekit's): keep the `select_topk` fraction of entries where the
  deltas vary most across models, elect signs (TIES, unweighted), weight each model by its mean squared delta
  (normalised to sum 1), θ_b + Σ c_i δ_i [agree] / Σ c_i [agree].
- karcher (mergekit's): the Karcher (Fréchet) mean of the models' directions on the unit sphere, equal weights, by
  at most `max_iter` Riemannian gradient steps (stopping when a step is shorter than `tol`), times the mean of the
  models' norms. The base is not used.
- multislerp (mergekit's): barycentric interpolation on the unit sphere of any number of models' deltas (of the
  models themselves with `multislerp_base=False`): their unit vectors' weighted mean m (weights ÷ Σ w with
  `normalize`, the default), the weighted sum of their tangents at m, mapped back by the exponential map, times
  the weighted mean of their norms. Two models whose weighted unit vectors cancel take the straight line; more
  than two are an error (mergekit's).
- nearswap (mergekit's): entry by entry, the model's value where it is within `t` of the base's, moving to the
  base's as they part: w = clip(t / max(|θ_1 − θ_b|, 1e-6), 0, 1), w·θ_1 + (1 − w)·θ_b.
- arcee_fusion (mergekit's): importance = |δ| times each row's KL(softmax(θ_1) ‖ softmax(θ_b)); keep the δ whose
  importance reaches median + 1.5·IQR of the tensor's importances (exact quantiles here; mergekit samples 10^6
  entries of larger tensors).
- ram / ramplus_tl (Reinforced Agent Merging; mergekit's): an entry of δ_i counts when |δ_i| > `ram_epsilon`; one
  model's entry is kept whole, entries several models touch are averaged over those; ramplus_tl scales each
  model's unique entries by 1 + r·clip(shared_i / unique_i, 0, α) (`ram_r`, `ram_alpha`).
- model_stock (Jang et al. 2024): with N ≥ 2 models and cos φ the mean pairwise cosine of their deltas (the
  whole tensor flattened, or per row with `filter_wise`), t = N cos φ / (1 + (N − 1) cos φ) and
  t·mean(θ_i) + (1 − t)·θ_b (the base where the denominator vanishes). Weights are not used.

Rescaling what a sparsifier keeps (`rescale`; by default on for the DARE and DELLA methods, off for the others):
with `rescale_norm=None` each kept entry is divided by its keep probability, as the DARE and DELLA papers (and
MergeLM) do; with `rescale_norm` "l1", "l2" or "linf" the kept tensor is scaled to the norm the whole delta had, as
mergekit 0.1.5 does (its only rule: every `rescale: true` there is "l1"). TIES and Breadcrumbs keep by magnitude,
so their rescale (off by default, as in mergekit) is always to a norm, "l1" unless another is named. `normalize`
(divide by the summed weights) defaults as in mergekit: on for linear, ties and della, off for the others.

Layout: the tensor is read as Hugging Face stores it (one layer's weight, rows = output features). slerp's and
model_stock's angles, TIES' and breadcrumbs' whole-tensor ranks and DELLA's and filter-wise rows depend on it;
`merge_pytrees(layout="ours")` merges our stacked, transposed parameter trees layer by layer in that layout, so
it equals the streaming merge.

Masks come from `jax.random` keyed by a stable hash of the tensor's name and the model's index, so a tensor's
mask does not depend on traversal order, sharding or process count. Math is fp32; the caller casts.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import zlib
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("linear", "task_arithmetic", "dare", "dare_linear", "ties", "dare_ties", "della", "della_linear",
           "breadcrumbs", "breadcrumbs_ties", "slerp", "nuslerp", "model_stock", "sce", "karcher", "multislerp",
           "nearswap", "arcee_fusion", "ram", "ramplus_tl")
RESCALE_NORMS = ("l1", "l2", "linf")
# How each sparsifying method picks the entries of a delta it keeps, and which methods then elect signs (TIES).
SPARSIFIER = {"dare": "random", "dare_ties": "random", "dare_linear": "random", "della": "magprune",
              "della_linear": "magprune", "ties": "magnitude", "breadcrumbs": "outliers",
              "breadcrumbs_ties": "outliers"}
SIGN_ELECTION = ("ties", "dare_ties", "della", "breadcrumbs_ties")
# the settings that may differ between the models (as mergekit's per-model density, gamma and epsilon)
PER_MODEL_FIELDS = ("drop_rate", "gamma", "epsilon")
# mergekit 0.1.5's defaults for `rescale` and `normalize`
RESCALES_BY_DEFAULT = ("dare", "dare_ties", "dare_linear", "della", "della_linear")
NORMALIZES_BY_DEFAULT = ("linear", "ties", "della", "multislerp")
# how many models (besides the base) a method takes: (at least, at most)
MODEL_COUNTS = {"slerp": (1, 1), "nuslerp": (2, 2), "model_stock": (2, None), "karcher": (1, None),
                "multislerp": (1, None), "nearswap": (1, 1), "arcee_fusion": (1, 1)}
# methods that combine the models' own values, not deltas from the base: a model that is the base is not elided
RAW_METHODS = ("linear", "model_stock", "karcher")


def check_per_model_names(names) -> None:
    for name in names:
        if name not in PER_MODEL_FIELDS:
            raise ValueError(f"per_model: {name!r} cannot differ between models; expected one of {PER_MODEL_FIELDS}")


@dataclasses.dataclass(frozen=True)
class MergeSpec:
    method: str = "dare"
    drop_rate: float = 0.2          # p; density = 1 − p for ties/della
    rescale: bool | None = None     # None: the method's default (RESCALES_BY_DEFAULT); see `rescales`
    rescale_norm: str | None = None  # None: 1/keep-probability per entry (DARE, DELLA); else l1 | l2 | linf
    apply: str = "average"          # dare only: average | task_arithmetic
    lam: float = 1.0                # λ for task_arithmetic, ties, dare_ties, della and dare+task_arithmetic
    weights: tuple[float, ...] | None = None  # one per model (default all 1)
    # ((field, (value per model, ...)), ...): drop_rate, gamma or epsilon set model by model, over the field's value
    per_model: tuple[tuple[str, tuple[float, ...]], ...] = ()
    epsilon: float = 0.15           # della
    gamma: float = 0.01             # breadcrumbs: the fraction of largest |δ| dropped as outliers
    t: float = 0.5                  # slerp: 0 the base, 1 the model
    filter_wise: bool = False       # model_stock: one cos φ per row instead of per tensor
    select_topk: float = 1.0        # sce: the fraction of entries kept, those whose deltas vary most across models
    nuslerp_flatten: bool = True    # nuslerp: one angle for the whole tensor (else one per row, or column)
    nuslerp_row_wise: bool = False  # nuslerp without flatten: vectors along the first axis (columns), not rows
    nuslerp_base: bool = True       # nuslerp: interpolate the deltas from the base (else the models themselves)
    max_iter: int = 10              # karcher: Riemannian gradient steps at most
    tol: float = 1e-5               # karcher: stop when the step is shorter; units closer than this are skipped
    multislerp_base: bool = True    # multislerp: interpolate the deltas from the base (else the models themselves)
    multislerp_eps: float = 1e-8    # multislerp: mergekit's `eps` (added to norms; a shorter mean is degenerate)
    ram_epsilon: float = 1e-5       # ram, ramplus_tl: |δ| above this counts as a model touching the entry
    ram_r: float = 0.1              # ramplus_tl: how much a model's unique entries are scaled up ...
    ram_alpha: float = 0.2          # ... at most r·alpha, by its shared/unique entry ratio
    normalize: bool | None = None   # None: the method's default (NORMALIZES_BY_DEFAULT); see `normalizes`
    seed: int = 0
    # Weight of models left out of the computation because their delta is exactly zero (the base listed as a
    # model, as in the paper's [base, fine-tune] merge): it still counts in DARE's average denominator.
    elided_weight: float = 0.0
    # In a compiled merge only: each model's sparsifier numbers (`sparsity_plan`), traced; None: from the fields
    sparsity: tuple[dict, ...] | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"merge method {self.method!r}: expected one of {METHODS}")
        check_per_model_names(name for name, _ in self.per_model)
        if len({len(v) for _, v in self.per_model}) > 1:
            raise ValueError("per_model: " + ", ".join(f"{k} has {len(v)}" for k, v in self.per_model) +
                             " values; expected one per model for each")
        if self.max_iter < 1 or not self.tol > 0:
            raise ValueError(f"karcher: expected max_iter >= 1 and tol > 0, got max_iter={self.max_iter}, "
                             f"tol={self.tol}")
        for p in self._each("drop_rate"):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"drop_rate {p}: expected 0 <= p <= 1")
        if self.rescale_norm is not None and self.rescale_norm not in RESCALE_NORMS:
            raise ValueError(f"rescale_norm {self.rescale_norm!r}: expected one of {RESCALE_NORMS} or null (each kept "
                             f"entry divided by its keep probability)")
        if self.apply not in ("average", "task_arithmetic"):
            raise ValueError(f"apply {self.apply!r}: expected average or task_arithmetic")
        for gamma in self._each("gamma"):
            if not 0.0 <= gamma <= 1.0:
                raise ValueError(f"gamma {gamma}: expected 0 <= gamma <= 1")
        if not 0.0 <= self.select_topk <= 1.0:
            raise ValueError(f"select_topk {self.select_topk}: expected 0 <= select_topk <= 1")
        if not np.isfinite(self.t):
            raise ValueError(f"t {self.t}: expected a finite number (0: the base, 1: the model)")
        if self.method == "nearswap" and self.t < 0:
            raise ValueError(f"nearswap: t {self.t}: expected a distance >= 0")
        if not self.multislerp_eps > 0:
            raise ValueError(f"multislerp_eps {self.multislerp_eps}: expected > 0")
        for name in ("ram_epsilon", "ram_r", "ram_alpha"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} {getattr(self, name)}: expected >= 0")
        if self.method == "multislerp" and self.normalizes and self.weights and abs(sum(self.weights)) < 1e-12:
            raise ValueError(f"multislerp: weights {list(self.weights)} sum to 0, and normalize divides them by "
                             "their sum; change them or set normalize off")
        n = max([len(v) for _, v in self.per_model] or [1])
        for i in range(n):
            p, epsilon = self.value_for("drop_rate", i), self.value_for("epsilon", i)
            density = 1 - p  # (keeping all or nothing needs no probabilities, as in mergekit)
            if SPARSIFIER.get(self.method) == "magprune" and 0 < density < 1 and not 0 < density - epsilon < \
                    density + epsilon < 1:
                raise ValueError(f"{self.method}: need 0 < (1 - drop_rate) ± epsilon < 1, got drop_rate={p}, "
                                 f"epsilon={epsilon}")

    def _each(self, name: str) -> tuple[float, ...]:
        return dict(self.per_model).get(name, (getattr(self, name),))

    def value_for(self, name: str, model_index: int) -> float:
        """`name`'s value for the model at `model_index` (its per-model value, else the field's)."""
        values = dict(self.per_model).get(name)
        return getattr(self, name) if values is None else values[model_index]

    def select_models(self, indices: list[int]) -> MergeSpec:
        """The spec for a subset of the models (those left after eliding the base): weights and per-model values
        follow their models."""
        weights = None if self.weights is None else tuple(self.weights[i] for i in indices)
        per_model = tuple((k, tuple(v[i] for i in indices)) for k, v in self.per_model)
        return dataclasses.replace(self, weights=weights, per_model=per_model)

    @property
    def density(self) -> float:
        return 1.0 - self.drop_rate

    @property
    def rescales(self) -> bool:
        return self.method in RESCALES_BY_DEFAULT if self.rescale is None else self.rescale

    @property
    def normalizes(self) -> bool:
        return self.method in NORMALIZES_BY_DEFAULT if self.normalize is None else self.normalize

    @property
    def raw(self) -> bool:
        """Whether the method combines the models' own values (not deltas from the base), so that a model that is
        the base is one of its inputs rather than a zero delta to skip."""
        return (self.method in RAW_METHODS or (self.method == "nuslerp" and not self.nuslerp_base)
                or (self.method == "multislerp" and not self.multislerp_base))

    @property
    def needs_rng(self) -> bool:
        return SPARSIFIER.get(self.method) in ("random", "magprune") and any(p > 0 for p in self._each("drop_rate"))


def tensor_key(seed: int, name: str, model_index: int) -> jax.Array:
    """A PRNG key that depends only on (seed, tensor name, model index)."""
    h = zlib.crc32(name.encode()) & 0x7FFFFFFF
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), h), model_index)


def _keep_threshold(keep: float) -> np.uint32:
    """DARE's keep probability quantised to 2^-16 (p = 0.2 keeps with probability 0.8000031)."""
    return np.uint32(min(int(round(keep * 65536)), 65536))


def _mask_below(key: jax.Array, threshold, shape: tuple[int, ...]) -> jax.Array:
    """A Bernoulli(threshold / 2^16) mask (`threshold` may be traced) from 16-bit uniform integers: two draws per
    32-bit random word halves the PRNG work (the merge's bottleneck on CPU)."""
    n = int(np.prod(shape, dtype=np.int64))
    words = jax.random.bits(key, ((n + 1) // 2,), dtype=jnp.uint32)
    halves = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)[:n]
    return (halves.astype(jnp.uint32) < threshold).reshape(shape)


def _norm(x: jax.Array, norm: str) -> jax.Array:
    if norm == "l1":
        return jnp.abs(x).sum()
    if norm == "l2":
        return jnp.sqrt(jnp.square(x).sum())
    return jnp.abs(x).max()


def rescale_to_norm(kept: jax.Array, delta: jax.Array, norm: str, eps: float = 1e-7) -> jax.Array:
    """`kept` scaled so that its norm is `delta`'s (mergekit 0.1.5's `rescaled_masked_tensor`); left as it is when
    either norm is below `eps`."""
    if kept.size == 0:
        return kept
    before, after = _norm(delta, norm), _norm(kept, norm)
    ok = (before >= eps) & (after >= eps)
    return jnp.where(ok, kept * (before / jnp.where(ok, after, 1.0)), kept)


def dare_drop(delta: jax.Array, key: jax.Array, p: float, rescale: bool, norm: str | None = None) -> jax.Array:
    """DARE's drop of one delta at rate `p` (what `sparsify` does for the DARE methods, given p)."""
    return _sparsify_with(delta, key, "random", *_random_plan(p), rescale, norm)


# Each sparsifier's settings for one model and tensor, computed on the host as Python numbers give them
# (`sparsity_plan`): a mode (keep every entry, none, or some), which is static in a compiled merge, and the numbers
# the kernel (`_sparsify_with`) takes as arguments, so that a density, gamma or epsilon gradient over the layers
# compiles one merge per tensor shape. Counts are computed as Python integers, as mergekit's are, then passed.
def _random_plan(p: float) -> tuple[str, dict]:
    mode = "keep" if p <= 0.0 else "drop" if p >= 1.0 else "some"
    # (the documented scale 1/(1 − p), multiplied explicitly as the fp32 reciprocal)
    return mode, {"threshold": _keep_threshold(1.0 - p),
                  "scale": np.float32(1.0 / (1.0 - p) if mode == "some" else 1.0)}


def _magprune_plan(density: float, epsilon: float) -> tuple[str, dict]:
    mode = "keep" if density >= 1.0 else "drop" if density <= 0.0 else "some"
    return mode, {"low": np.float32(density - epsilon), "epsilon": np.float32(epsilon)}


def _magnitude_plan(density: float, n: int) -> tuple[str, dict]:
    mode = "keep" if density >= 1.0 or n == 0 else "drop" if density <= 0.0 else "some"
    return mode, {"k": np.int32(max(1, int(density * n)) if mode == "some" else 0)}


def _outliers_plan(density: float, gamma: float, n: int) -> tuple[str, dict]:
    """Model Breadcrumbs' window (mergekit's `magnitude_outliers`): of the |δ| in ascending order, ranks `low` ..
    `high` − 1 are kept, the ⌊density·n⌋ that follow the smallest ones dropped, so that the ⌊γ·n⌋ largest go too
    (fewer when density needs them)."""
    if density >= 1.0 or n == 0:
        return "keep", {"low": np.int32(0), "high": np.int32(0)}
    target = int(density * n)
    n_bottom = max(0, n - target - int(gamma * n))
    return "some", {"low": np.int32(n_bottom), "high": np.int32(n_bottom + target)}


def sparsity_plan(spec: MergeSpec, model_index: int, n: int) -> tuple[str, dict]:
    """(mode, numbers) of the sparsifier of `spec.method` for the model at `model_index` and a tensor of `n`
    entries."""
    kind = SPARSIFIER[spec.method]
    density = 1.0 - spec.value_for("drop_rate", model_index)
    if kind == "random":
        return _random_plan(spec.value_for("drop_rate", model_index))
    if kind == "magprune":
        return _magprune_plan(density, spec.value_for("epsilon", model_index))
    if kind == "magnitude":
        return _magnitude_plan(density, n)
    return _outliers_plan(density, spec.value_for("gamma", model_index), n)


def _sparsify_with(delta: jax.Array, key: jax.Array | None, kind: str, mode: str, numbers: dict, rescale: bool,
                   norm: str | None, host_ranks: bool = False) -> jax.Array:
    """The entries of `delta` a sparsifier of `kind` keeps, given its plan (`numbers` may be traced)."""
    if mode == "keep":
        return delta
    if mode == "drop":
        return jnp.zeros_like(delta)
    if kind == "random":
        out = jnp.where(_mask_below(key, numbers["threshold"], delta.shape), delta, 0.0)
        if not rescale:
            return out
        return rescale_to_norm(out, delta, norm) if norm is not None else out * numbers["scale"]
    if kind == "magprune":
        x = delta if delta.ndim >= 2 else delta[None]
        x2 = x.reshape(x.shape[0], -1)
        ranks = row_ranks(jnp.abs(x2), host_ranks)
        span = jnp.maximum(x2.shape[1] - 1, 1)
        keep_p = numbers["low"] + (ranks / span) * 2 * numbers["epsilon"]
        keep = jax.random.uniform(key, x2.shape) < keep_p
        out = jnp.where(keep, x2, 0.0)
        if rescale:
            out = out / keep_p if norm is None else rescale_to_norm(out, x2, norm)
        return out.reshape(delta.shape)
    magnitude = jnp.abs(delta)
    if kind == "magnitude":  # exactly the k largest |δ| (ties to the lower index, as a stable descending sort)
        mask = select_mask(magnitude, numbers["k"])
    else:
        mask = (select_mask(magnitude, numbers["high"], largest=False)
                & ~select_mask(magnitude, numbers["low"], largest=False))
    out = jnp.where(mask, delta, 0.0)
    return out if norm is None else rescale_to_norm(out, delta, norm)


def _sortable(values: jax.Array) -> jax.Array:
    """float32 values as uint32 keys in the same order (negative floats' bits reversed), for bisection."""
    bits = jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.int32)
    bits = jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)
    return jax.lax.bitcast_convert_type(bits ^ jnp.int32(-0x80000000), jnp.uint32)


def _kth_key(keys: jax.Array, k) -> jax.Array:
    """The key at index `k` (0-based, may be traced) of the uint32 `keys` sorted ascending: the smallest t with
    #(keys <= t) >= k + 1, by 32 bisection steps, each one counting pass."""
    need = jnp.asarray(k).astype(jnp.uint32) + 1

    def step(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        ok = jnp.sum(keys <= mid, dtype=jnp.uint32) >= need
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    return jax.lax.fori_loop(0, 32, step, (jnp.uint32(0), jnp.uint32(0xFFFFFFFF)))[1]


def select_mask(values: jax.Array, k, largest: bool = True) -> jax.Array:
    """A mask of the `k` largest (or smallest) `values`, ties going to the lower flat index: what a stable sort
    puts first, so exactly the entries `argsort(∓values, stable=True)[:k]` names. Found by bisecting an
    order-preserving key of the float bits for the k-th value (`_kth_key`, 32 counting passes) rather than by
    sorting: XLA sorts on one CPU thread, 4.8 s for an 11.5 M-entry matrix against 0.29 s here, and a 7B TIES merge
    sorts every tensor. `k` may be traced (SCE's count)."""
    keys = _sortable(values.reshape(-1))
    if largest:
        keys = ~keys  # the largest values first, ties still in index order
    k = jnp.asarray(k, jnp.int32)
    threshold = _kth_key(keys, jnp.maximum(k - 1, 0))  # the k-th smallest key (the smallest when k = 0)
    beyond = keys < threshold
    tied = keys == threshold
    need = k - jnp.sum(beyond, dtype=jnp.int32)
    return (beyond | (tied & (jnp.cumsum(tied, dtype=jnp.int32) <= need))).reshape(values.shape)


def _row_ranks_numpy(values: np.ndarray) -> np.ndarray:
    """Each entry's position in its row's stable ascending sort, by NumPy on a thread per block of rows."""
    values = np.asarray(values)
    ranks = np.empty(values.shape, np.float32)
    positions = np.arange(values.shape[1], dtype=np.float32)

    def block(rows: slice) -> None:
        order = np.argsort(values[rows], axis=1, kind="stable")
        np.put_along_axis(ranks[rows], order, np.broadcast_to(positions, order.shape), axis=1)

    n = max(1, min(os.cpu_count() or 1, values.shape[0] // 64))
    bounds = np.linspace(0, values.shape[0], n + 1).astype(int)
    with ThreadPoolExecutor(n) as pool:  # NumPy's sort lets go of the GIL
        list(pool.map(block, [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]))
    return ranks


def row_ranks(values: jax.Array, on_host: bool = False) -> jax.Array:
    """Each entry's position (0 ... n − 1, float32) in a stable ascending sort of its row of the 2-D `values`.
    `on_host` (the streaming merge, whose tensors are on one device) on a CPU backend: the rows are sorted by NumPy
    on all cores, since XLA:CPU sorts on one thread (2.5 s for an 11.5 M-entry matrix against NumPy's 0.6 s on 2
    cores; the same ranks, both sorts stable). Not for arrays sharded over devices: a host callback in a
    partitioned computation deadlocks on CPU. Otherwise one sort, then its inverse by a scatter."""
    if on_host and jax.default_backend() == "cpu":
        return jax.pure_callback(_row_ranks_numpy, jax.ShapeDtypeStruct(values.shape, jnp.float32), values)
    order = jnp.argsort(values, axis=1, stable=True)
    return jnp.zeros(values.shape, jnp.float32).at[jnp.arange(values.shape[0])[:, None], order].set(
        jnp.arange(values.shape[1], dtype=jnp.float32)[None, :])


def sparsify(delta: jax.Array, key: jax.Array | None, spec: MergeSpec, model_index: int,
             host_ranks: bool = False) -> jax.Array:
    """The entries of one model's delta that `spec.method` keeps, rescaled as `spec` says (`host_ranks`: see
    `row_ranks`). In a compiled merge the plan's numbers are its arguments (`spec.sparsity`, `split_numbers`)."""
    kind = SPARSIFIER[spec.method]
    mode, numbers = sparsity_plan(spec, model_index, delta.size)
    if spec.sparsity is not None:
        numbers = spec.sparsity[model_index]
    if kind in ("random", "magprune"):
        return _sparsify_with(delta, key, kind, mode, numbers, spec.rescales, spec.rescale_norm, host_ranks)
    norm = (spec.rescale_norm or "l1") if spec.rescales else None  # kept by magnitude: no keep probability
    return _sparsify_with(delta, None, kind, mode, numbers, False, norm)


def slerp(t: float, v0: jax.Array, v1: jax.Array, dot_threshold: float = 0.9995, eps: float = 1e-8) -> jax.Array:
    """Spherical interpolation of two tensors, one angle for the whole tensor (mergekit 0.1.5's slerp merge):
    t = 0 gives v0, t = 1 gives v1."""
    a, b = v0.reshape(-1), v1.reshape(-1)
    if a.size == 0:
        return v0
    norm_a, norm_b = jnp.linalg.norm(a), jnp.linalg.norm(b)
    norm_a, norm_b = jnp.where(norm_a > eps, norm_a, 1.0), jnp.where(norm_b > eps, norm_b, 1.0)
    dot = jnp.clip(jnp.sum((a / norm_a) * (b / norm_b)), -1.0, 1.0)
    linear = jnp.abs(dot) > dot_threshold
    theta = jnp.arccos(jnp.where(linear, 0.0, dot))  # no singular value on the branch not taken
    sin_theta = jnp.where(linear, 1.0, jnp.sin(theta))
    coef_a = jnp.where(linear, 1 - t, jnp.sin((1 - t) * theta) / sin_theta)
    coef_b = jnp.where(linear, t, jnp.sin(t * theta) / sin_theta)
    return (coef_a * a + coef_b * b).reshape(v0.shape)


def model_stock(base: jax.Array, thetas: jax.Array, filter_wise: bool) -> jax.Array:
    """Model Stock (mergekit 0.1.5's `model_stock`): interpolate between the base and the models' mean by the
    ratio the models' mean pairwise cosine implies."""
    if filter_wise:
        w0 = base if base.ndim > 1 else base[None]
        ws = thetas if base.ndim > 1 else thetas[:, None]
    else:
        w0, ws = base.reshape(-1), thetas.reshape(thetas.shape[0], -1)
    offsets = ws - w0
    n = offsets.shape[0]
    norms = jnp.linalg.norm(offsets, axis=-1)
    cosines = [jnp.clip(jnp.sum(offsets[i] * offsets[j], axis=-1) / jnp.maximum(norms[i] * norms[j], 1e-6), -1, 1)
               for i in range(n) for j in range(i + 1, n)]
    cos = jnp.mean(jnp.stack(cosines), axis=0)[..., None]
    denominator = 1 + (n - 1) * cos
    singular = jnp.abs(denominator) < 1e-6
    t = jnp.where(singular, 0.0, n * cos / jnp.where(singular, 1.0, denominator))
    return (t * (ws.sum(0) / n) + (1 - t) * w0).reshape(base.shape)


def nuslerp(t: float, v0: jax.Array, v1: jax.Array, flatten: bool, row_wise: bool, eps: float = 1e-8) -> jax.Array:
    """mergekit 0.1.5's `nuslerp`: slerp along the last axis (the first with `row_wise`, the whole tensor with
    `flatten`), the straight line where the two are colinear."""
    shape = v0.shape
    if flatten or v0.ndim < 2:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = jnp.swapaxes(v0, 0, -1), jnp.swapaxes(v1, 0, -1)

    def unit(x):
        return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-7)

    cos = jnp.clip(jnp.sum(unit(v0) * unit(v1), axis=-1, keepdims=True), -1.0, 1.0)
    colinear = (1 - cos ** 2) <= eps ** 2
    theta = jnp.arccos(jnp.where(colinear, 0.0, cos))
    sin = jnp.where(colinear, 1.0, jnp.sin(theta))
    out = jnp.where(colinear, (1 - t) * v0 + t * v1, (jnp.sin((1 - t) * theta) * v0 + jnp.sin(t * theta) * v1) / sin)
    if row_wise and not flatten and len(shape) >= 2:
        out = jnp.swapaxes(out, 0, -1)
    return out.reshape(shape)


def karcher(thetas: jax.Array, max_iter: int, tol: float) -> jax.Array:
    """mergekit 0.1.5's `karcher_merge_tensors` with equal weights, its early exit and skipped units as masks."""
    n = thetas.shape[0]
    if n == 1:
        return thetas[0]
    flat = thetas.reshape(n, -1)
    norms = jnp.linalg.norm(flat, axis=1)
    units = jnp.where(norms[:, None] == 0, 0.0, flat / jnp.where(norms == 0, 1.0, norms)[:, None])
    valid = norms > tol
    alphas = jnp.where(valid, 1.0, 0.0)
    alphas = alphas / jnp.maximum(alphas.sum(), 1.0)
    mean = alphas @ units
    mean_norm = jnp.linalg.norm(mean)
    first = units[jnp.argmax(valid)]
    mean = jnp.where(mean_norm < tol, first, mean / jnp.where(mean_norm < tol, 1.0, mean_norm))
    done = jnp.asarray(False)
    for _ in range(max_iter):
        dots = jnp.clip(units @ mean, -1.0, 1.0)
        theta = jnp.arccos(dots)
        active = valid & (theta >= tol)
        coef = jnp.where(active, alphas * theta / jnp.where(active, jnp.sin(theta), 1.0), 0.0)
        tangent = coef @ units - (coef * dots).sum() * mean  # Σ c_i (u_i − (u_i·m) m)
        tangent_norm = jnp.linalg.norm(tangent)
        done = done | (tangent_norm < tol)
        safe = jnp.where(done, 1.0, tangent_norm)
        step = jnp.cos(tangent_norm) * mean + jnp.sin(tangent_norm) * (tangent / safe)
        step_norm = jnp.linalg.norm(step)
        step = jnp.where(step_norm > tol, step / jnp.where(step_norm > tol, step_norm, 1.0), step)
        mean = jnp.where(done, mean, step)
    out = norms.mean() * mean
    return jnp.where(valid.any(), out, 0.0).reshape(thetas.shape[1:])


def multislerp(thetas: jax.Array, weights: jax.Array, normalize: bool, eps: float) -> jax.Array:
    """mergekit 0.1.5's `multislerp` on stacked tensors (n, ...): the weighted barycentre of their directions on the
    unit sphere (by one tangent-space step at their weighted mean) times their weighted mean norm. Where the
    weighted unit vectors cancel, two tensors take the weighted sum and more give NaN, which the merge drivers
    report (mergekit raises)."""
    n = thetas.shape[0]
    if n == 1:
        return thetas[0]
    flat = thetas.reshape(n, -1)
    w = weights / weights.sum() if normalize else weights
    norms = jnp.linalg.norm(flat, axis=-1)
    units = flat / (norms[:, None] + eps)
    # weighted sums over the models and dot products with the mean as products with a vector: XLA:CPU's
    # reductions over the leading axis of these (n, N) arrays fused into a 7 s pass per 11.5 M-entry matrix
    mean = w @ units
    mean_norm = jnp.linalg.norm(mean)
    degenerate = mean_norm < eps
    mean = mean / jnp.where(degenerate, 1.0, mean_norm)
    dots = units @ mean
    tangent = w @ units - (w * dots).sum() * mean  # Σ w_i (u_i − (u_i·m) m)
    tangent_norm = jnp.linalg.norm(tangent) + eps
    out = (mean * jnp.cos(tangent_norm) + tangent * (jnp.sin(tangent_norm) / tangent_norm)) * (norms * w).sum()
    fallback = flat[0] * w[0] + flat[1] * w[1] if n == 2 else jnp.full_like(out, jnp.nan)
    return jnp.where(degenerate, fallback, out).reshape(thetas.shape[1:])


def nearswap(t: float, base: jax.Array, model: jax.Array) -> jax.Array:
    """mergekit 0.1.5's `nearswap`: the model's value where it is within `t` of the base's, blending towards the
    base's as they part (weight t/|difference|, at most 1)."""
    weight = jnp.clip(t / jnp.maximum(jnp.abs(base - model), 1e-6), 0.0, 1.0)
    return weight * model + (1 - weight) * base


def kth_smallest(values: jax.Array, k: int) -> jax.Array:
    """The value at index `k` of `values` sorted ascending (flattened), by bisection (`_kth_key`) instead of
    sorting (one CPU thread in XLA: seconds per large matrix)."""
    keys = _sortable(values.reshape(-1))
    return jnp.min(jnp.where(keys >= _kth_key(keys, k), values.reshape(-1).astype(jnp.float32), jnp.inf))


def _sorted_at_numpy(values: np.ndarray, ks: tuple[int, ...], sample: int = 65536) -> np.ndarray:
    """`sorted_at` on the host. For a large array, each k is bracketed by a sorted random sample (±4σ of the
    sample's rank) and only the values in the bracket are partitioned, after one count of those below it: exact,
    3× faster than partitioning everything. A bracket that misses k (or a NaN) falls back to the full partition."""
    flat = np.asarray(values, np.float32).reshape(-1)
    n = flat.size
    if n <= 4 * sample or np.isnan(flat).any():
        return np.partition(flat, ks)[list(ks)]
    drawn = np.sort(flat[np.random.default_rng(0).integers(0, n, sample)])
    margin = 4.0 * np.sqrt(sample / 4) + 2
    out = np.empty(len(ks), np.float32)
    for j, k in enumerate(ks):
        rank = k / (n - 1) * (sample - 1)
        low, high = drawn[max(0, int(rank - margin))], drawn[min(sample - 1, int(rank + margin) + 1)]
        below = np.count_nonzero(flat < low)
        inside = flat[(flat >= low) & (flat <= high)]
        out[j] = (np.partition(inside, k - below)[k - below] if below <= k < below + inside.size
                  else np.partition(flat, k)[k])
    return out


def sorted_at(values: jax.Array, ks: tuple[int, ...], on_host: bool = False) -> jax.Array:
    """The values at indices `ks` of `values` sorted ascending (flattened). `on_host` on a CPU backend (as in
    `row_ranks`: unsharded tensors only): NumPy's selection (0.06 s for three quantiles of an 11.5 M-entry matrix
    on this project's CPU, where three bisections take 0.74 s); else `kth_smallest` each."""
    if on_host and jax.default_backend() == "cpu":
        return jax.pure_callback(functools.partial(_sorted_at_numpy, ks=ks),
                                 jax.ShapeDtypeStruct((len(ks),), jnp.float32), values)
    return jnp.stack([kth_smallest(values, k) for k in ks])


def arcee_fusion(base: jax.Array, model: jax.Array, host_quantiles: bool = False) -> jax.Array:
    """mergekit 0.1.5's `arcee_fusion`: keep the model's change where its importance (|δ| times the row's KL
    divergence of the model's softmax from the base's) reaches median + 1.5·IQR of the tensor's importances.
    Quantiles are exact (the sorted value at ⌊q·(n − 1)⌋; `host_quantiles`: see `sorted_at`); mergekit's, exact up
    to 10^6 entries, come from a random sample of 10^6 in larger tensors."""
    p = jax.nn.softmax(model, axis=-1) + 1e-8
    q = jax.nn.softmax(base, axis=-1) + 1e-8
    kl = jnp.sum(p * jnp.log(p / q), axis=-1, keepdims=True)
    importance = jnp.abs(model - base) * kl
    n = importance.size
    if n == 0:
        return base
    q1, median, q3 = sorted_at(importance, tuple(int(f * (n - 1)) for f in (0.25, 0.5, 0.75)), host_quantiles)
    keep = importance >= median + 1.5 * (q3 - q1)
    return base + (model - base) * keep.astype(base.dtype)


def ram(deltas: jax.Array, epsilon: float, plus: bool = False, r: float = 0.1, alpha: float = 0.2) -> jax.Array:
    """mergekit 0.1.5's `ram` (and, with `plus`, `ramplus_tl`) on stacked deltas (n, ...): the merged delta. An
    entry a single model touches (|δ| > epsilon) keeps that model's value; one several touch is their mean. RAM+
    scales model i's unique entries by 1 + r·clip(shared_i / unique_i, 0, alpha)."""
    touched = jnp.abs(deltas) > epsilon
    counts = touched.sum(0)
    unique, overlap = counts == 1, counts > 1
    kept = deltas * touched
    scale = jnp.ones((deltas.shape[0],), jnp.float32)
    if plus:
        per_model = touched.reshape(deltas.shape[0], -1)
        shared = (per_model & overlap.reshape(1, -1)).sum(1).astype(jnp.float32)
        alone = (per_model & unique.reshape(1, -1)).sum(1).astype(jnp.float32)
        scale = 1 + r * jnp.clip(shared / jnp.maximum(alone, epsilon), 0.0, alpha)
    scale = scale.reshape((-1,) + (1,) * (deltas.ndim - 1))
    return (kept * unique * scale + kept * overlap / jnp.maximum(counts, 1)).sum(0)


def sce(deltas: jax.Array, select_topk: float) -> jax.Array:
    """mergekit 0.1.5's `sce` on stacked deltas (n, ...): the merged delta."""
    if select_topk < 1:
        var = jnp.var(deltas, axis=0)
        flat = jnp.abs(var).reshape(-1)
        if select_topk <= 0:
            keep = jnp.zeros_like(flat, bool)
        else:
            keep = select_mask(flat, (jnp.count_nonzero(flat) * select_topk).astype(jnp.int32))
        deltas = jnp.where(keep.reshape(var.shape), deltas, 0.0)
    majority = jnp.where(deltas.sum(0) >= 0, 1.0, -1.0)
    agree = jnp.sign(deltas) == majority
    energy = jnp.square(deltas).reshape(deltas.shape[0], -1).mean(1)
    total = energy.sum()
    c = jnp.where(jnp.abs(total) < 1e-6, 1.0 / deltas.shape[0], energy / jnp.where(jnp.abs(total) < 1e-6, 1.0, total))
    erased = jnp.where(agree, c.reshape((-1,) + (1,) * (deltas.ndim - 1)), 0.0)
    return (deltas * erased).sum(0) / jnp.maximum(erased.sum(0), 1e-6)


def exclude_pattern(exclude: str | None) -> re.Pattern | None:
    """`exclude` (a regex of tensor names that keep the base value) compiled; a malformed one is named."""
    if not exclude:
        return None
    try:
        return re.compile(exclude)
    except re.error as e:
        raise ValueError(f"exclude {exclude!r}: not a regular expression ({e})") from e


def check_model_count(spec: MergeSpec, n_models: int) -> None:
    low, high = MODEL_COUNTS.get(spec.method, (1, None))
    if n_models < low or (high is not None and n_models > high):
        wanted = f"exactly {low}" if low == high else f"at least {low}"
        raise ValueError(f"merge method {spec.method!r} takes {wanted} model(s) besides the base, got {n_models}")


def _consensus(deltas: jax.Array, weights: jax.Array, normalize: bool) -> jax.Array:
    wd = deltas * weights
    majority = jnp.where(wd.sum(0) >= 0, 1.0, -1.0)
    agree = jnp.sign(wd) == majority
    mixed = jnp.where(agree, wd, 0.0).sum(0)
    if normalize:
        div = jnp.where(agree, weights, 0.0).sum(0)
        mixed = mixed / jnp.where(div == 0, 1.0, div)
    return mixed


# Fields that enter `merge_tensor` only as numbers in arithmetic. A jitted merge takes them as arguments
# (`split_numbers`) rather than as part of its static spec, so that a gradient over the layers, which gives each
# layer its own t, λ or weights, does not compile one merge per tensor. The sparsifiers' drop rate, gamma and
# epsilon go in as their plan's numbers (`sparsity_plan`), their mode kept in the static spec.
TRACED_FIELDS = ("t", "lam", "elided_weight", "weights")
_MODE_DROP_RATE = {"keep": 0.0, "drop": 1.0, "some": 0.5}  # a drop rate that gives each mode (placeholders)


def split_numbers(spec: MergeSpec, n_models: int = 1, size: int = 0) -> tuple[MergeSpec, dict]:
    """(the spec with the traced fields at fixed values: what a jit keys on; those fields' values, as arrays), for
    `n_models` models of tensors of `size` entries."""
    numbers = {"t": np.float32(spec.t), "lam": np.float32(spec.lam), "elided_weight": np.float32(spec.elided_weight),
               "weights": None if spec.weights is None else np.asarray(spec.weights, np.float32)}
    fixed = dataclasses.replace(spec, t=0.5, lam=1.0, elided_weight=0.0,
                                weights=None if spec.weights is None else (1.0,) * len(spec.weights))
    if spec.method in SPARSIFIER:
        plans = [sparsity_plan(spec, i, size) for i in range(n_models)]
        numbers["sparsity"] = tuple(plan for _, plan in plans)
        drop_rates = tuple(_MODE_DROP_RATE[mode] for mode, _ in plans)
        per_model = tuple((name, drop_rates if name == "drop_rate" else (getattr(MergeSpec, name),) * n_models)
                          for name, _ in spec.per_model)
        fixed = dataclasses.replace(fixed, per_model=per_model, drop_rate=drop_rates[0], epsilon=MergeSpec.epsilon,
                                    gamma=MergeSpec.gamma)
    return fixed, numbers


def with_numbers(fixed: MergeSpec, numbers: dict) -> MergeSpec:
    """`fixed` with the (traced) values of `split_numbers` put back. They were checked when the spec was made,
    so the copy is not validated again (it could not be: they are tracers)."""
    spec = dataclasses.replace(fixed)
    for name, value in numbers.items():
        if value is not None:
            object.__setattr__(spec, name, value)
    return spec


def merge_compiled(base, models, keys, spec: MergeSpec, out_dtype, host_ranks: bool = False):
    """`merge_tensor` compiled once per tensor shape and fixed spec (the TRACED_FIELDS are arguments), cast to
    `out_dtype`, and whether it is finite (the streaming merge and the pytree API read that flag outside the jit)."""
    fixed, numbers = split_numbers(spec, len(models), int(np.prod(np.shape(base), dtype=np.int64)))
    return _merge_compiled(base, models, keys, numbers, fixed, np.dtype(out_dtype), host_ranks)


@functools.partial(jax.jit, static_argnames=("fixed", "out_dtype", "host_ranks"))
def _merge_compiled(base, models, keys, numbers, fixed, out_dtype, host_ranks):
    merged = merge_tensor(base, models, keys, with_numbers(fixed, numbers), host_ranks)
    return merged.astype(out_dtype), jnp.isfinite(merged).all()


def merge_tensor(base: jax.Array, models: list[jax.Array] | tuple[jax.Array, ...], keys: jax.Array | None,
                 spec: MergeSpec, host_ranks: bool = False) -> jax.Array:
    """Merge one tensor. `keys` is (n_models, key) from `tensor_key` when `spec.needs_rng`. Returns fp32.
    `host_ranks`: DELLA's row ranks and Arcee Fusion's quantiles by NumPy on a CPU backend (`row_ranks`,
    `sorted_at`; unsharded tensors only)."""
    base = base.astype(jnp.float32)
    thetas = jnp.stack([m.astype(jnp.float32) for m in models])
    n = thetas.shape[0]
    w = jnp.asarray(spec.weights if spec.weights is not None else (1.0,) * n, jnp.float32)
    if w.shape[0] != n:
        raise ValueError(f"{w.shape[0]} weights for {n} models")
    for name, values in spec.per_model:
        if len(values) != n:
            raise ValueError(f"{len(values)} per-model values of {name} for {n} models")
    wb = w.reshape((n,) + (1,) * base.ndim)
    if spec.method == "linear":
        mixed = (thetas * wb).sum(0)
        return mixed / w.sum() if spec.normalizes else mixed
    if spec.method in MODEL_COUNTS:
        check_model_count(spec, n)
        if spec.method == "slerp":
            return slerp(spec.t, base, thetas[0])
        if spec.method == "nuslerp":
            total = w.sum()
            t = jnp.where(jnp.abs(total) < 1e-6, 0.5, w[1] / jnp.where(jnp.abs(total) < 1e-6, 1.0, total))
            if not spec.nuslerp_base:
                return nuslerp(t, thetas[0], thetas[1], spec.nuslerp_flatten, spec.nuslerp_row_wise)
            return base + nuslerp(t, thetas[0] - base, thetas[1] - base, spec.nuslerp_flatten, spec.nuslerp_row_wise)
        if spec.method == "karcher":
            return karcher(thetas, spec.max_iter, spec.tol)
        if spec.method == "multislerp":
            if n == 1 or not spec.multislerp_base:  # (one model: mergekit returns it as it is)
                return multislerp(thetas, w, spec.normalizes, spec.multislerp_eps)
            return base + multislerp(thetas - base, w, spec.normalizes, spec.multislerp_eps)
        if spec.method == "nearswap":
            return nearswap(spec.t, base, thetas[0])
        if spec.method == "arcee_fusion":
            return arcee_fusion(base, thetas[0], host_ranks)
        return model_stock(base, thetas, spec.filter_wise)
    deltas = thetas - base
    if spec.method == "sce":
        return base + sce(deltas, spec.select_topk)
    if spec.method in ("ram", "ramplus_tl"):
        return base + ram(deltas, spec.ram_epsilon, spec.method == "ramplus_tl", spec.ram_r, spec.ram_alpha)
    if spec.method in SPARSIFIER:
        deltas = jnp.stack([sparsify(deltas[i], None if keys is None else keys[i], spec, i, host_ranks)
                            for i in range(n)])
    if spec.method == "dare":  # MergeLM's mask_merging, the paper's
        mixed = (deltas * wb).sum(0)
        if spec.apply == "average":
            return base + mixed / (w.sum() + spec.elided_weight)
        return base + spec.lam * mixed
    if spec.method in SIGN_ELECTION:
        return base + spec.lam * _consensus(deltas, wb, spec.normalizes)
    # task_arithmetic, dare_linear, della_linear, breadcrumbs: a weighted sum of the deltas (mergekit's generalised
    # task arithmetic without a sign election). A model elided as the base is mergekit's base entry, not one of
    # the models, so its weight is not in the sum (unlike DARE's average above, where the paper counts it).
    mixed = (deltas * wb).sum(0)
    if spec.normalizes:
        total = w.sum()
        mixed = mixed / jnp.where(jnp.abs(total) < 1e-8, 1.0, total)
    return base + spec.lam * mixed


def nonfinite_error(name: str, spec: MergeSpec) -> ValueError:
    """The error for a merged tensor with NaN or Inf in it, which no merge should write."""
    why = ("the models' weighted directions cancel (antipodal deltas with balancing weights; mergekit stops here "
           "too): change the weights" if spec.method == "multislerp" else "check the inputs for NaN or Inf")
    return ValueError(f"{name}: the {spec.method} merge gave NaN or Inf values; {why}")


def keys_for(spec: MergeSpec, name: str, n_models: int) -> jax.Array | None:
    if not spec.needs_rng:
        return None
    return jnp.stack([tensor_key(spec.seed, name, i) for i in range(n_models)])
