"""Searching merge settings instead of gridding them: merge-sweep's `search:` (random search or CMA-ES).

A grid over three settings at five values each is 125 merges and evaluations; a search proposes points one
generation at a time from the scores of the ones before, as mergekit-evolve does for its merge "genome":

    search:
      method: cmaes                 # or random (uniform, each proposal its own draw)
      budget: 24                    # points proposed in all
      space:                        # numeric merge settings -> ranges
        drop_rate: [0.05, 0.95]                        # a number
        lam: {range: [0.5, 2.0]}
        epsilon: {range: [0.0, 0.2], gradient: 3}      # a gradient over the layers: 3 control points
        weights: [[0.0, 1.0], [0.0, 1.0]]              # one range per model

Every coordinate lives in [0, 1] (the range's low end to its high end). CMA-ES (Hansen's (mu/mu_w, lambda) with
rank-one and rank-mu updates and cumulative step-size adaptation, as in his tutorial, arXiv:1604.00772) keeps a
mean, a step size and a covariance there; a sample outside the box is clipped onto it and the clipped point is
both evaluated and used in the update. Proposals are rounded (`decimals`) so each is a readable, reproducible
merge config.

The search is a pure function of its settings and the scores it is told: generation g draws from
`default_rng([seed, g])`, random proposal i from `default_rng([seed, i])`. So a rerun replays it from the scores
its points already hold (merge-sweep keeps them) and goes on where it stopped, and a larger budget continues the
same search rather than starting another.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from mnlu_jax.merge.settings import SCHEDULABLE, _number

SEARCH_METHODS = ("cmaes", "random")
SEARCHABLE = (*SCHEDULABLE, "weights")  # the merge's numeric settings


@dataclasses.dataclass
class SearchSection:
    method: str = "cmaes"
    budget: int = 12                  # points proposed in all (a repeated proposal is scored once)
    population: int = 0               # cmaes: points per generation; 0: 4 + floor(3 ln n), n the coordinates
    sigma: float = 0.25               # cmaes: the first step size, as a fraction of each range
    seed: int = 0                     # the search's own draws (the merge's mask seed is merge.seed)
    space: dict[str, Any] = dataclasses.field(default_factory=dict)
    start: dict[str, Any] = dataclasses.field(default_factory=dict)  # cmaes: the first mean; default each middle
    decimals: int = 4                 # each proposed value rounded to this many decimals


@dataclasses.dataclass(frozen=True)
class Space:
    """The coordinates of a search: `shapes[key]` is None for a number, else the length of its list (a gradient's
    control points or a weight per model); `low`/`high` per coordinate, in key order."""
    shapes: dict[str, int | None]
    low: np.ndarray
    high: np.ndarray
    decimals: int

    @property
    def dims(self) -> int:
        return len(self.low)

    def values(self, u: np.ndarray) -> dict[str, Any]:
        """The merge settings at unit coordinates `u` (clipped to [0, 1]), rounded (and kept in range where a bound
        has more decimals than `decimals`)."""
        x = self.low + np.clip(u, 0.0, 1.0) * (self.high - self.low)
        x = [min(max(round(float(v), self.decimals), lo), hi) + 0.0  # (+ 0.0: no -0.0 in a name)
             for v, lo, hi in zip(x, self.low.tolist(), self.high.tolist())]
        out, i = {}, 0
        for key, n in self.shapes.items():
            out[key] = x[i] if n is None else x[i:i + n]
            i += 1 if n is None else n
        return out

    def unit(self, values: dict[str, Any], where: str) -> np.ndarray:
        """Unit coordinates of given settings (a start), each checked against its range; a key not given is at
        its range's middle."""
        u, i = [], 0
        for key, n in self.shapes.items():
            count = 1 if n is None else n
            if key not in values:
                u += [0.5] * count
            else:
                v = values[key]
                flat = [v] if n is None else v
                if not isinstance(flat, list) or len(flat) != count or not all(map(_number, flat)):
                    raise ValueError(f"{where}.{key}: expected {'a number' if n is None else f'{n} numbers'} "
                                     f"like its space, got {v!r}")
                for k, x in enumerate(flat):
                    lo, hi = self.low[i + k], self.high[i + k]
                    if not lo <= x <= hi:
                        raise ValueError(f"{where}.{key}: {x} is outside its range [{lo}, {hi}]")
                    u.append((x - lo) / (hi - lo))
            i += count
        return np.array(u)


def _range(value: Any, where: str) -> tuple[float, float]:
    if not (isinstance(value, list) and len(value) == 2 and all(map(_number, value)) and value[0] < value[1]):
        raise ValueError(f"{where}: expected a range [low, high] with low < high, got {value!r}")
    return float(value[0]), float(value[1])


def parse_space(section: SearchSection, models: int, where: str) -> Space:
    """The search's coordinates from `space:` (module docstring); errors name the key and what was expected.
    `models`: how many models the merge takes (the length of `weights`)."""
    if not isinstance(section.space, dict) or not section.space:
        raise ValueError(f"{where}.space: expected {{SETTING: [low, high], ...}} over {list(SEARCHABLE)}; it is "
                         "empty")
    shapes: dict[str, int | None] = {}
    low, high = [], []
    for key, spec in section.space.items():
        at = f"{where}.space.{key}"
        if key not in SEARCHABLE:
            raise ValueError(f"{at}: not a numeric merge setting to search; expected one of {list(SEARCHABLE)} "
                             "(a grid: takes the others)")
        if key == "weights":
            if not (isinstance(spec, list) and spec and all(isinstance(r, list) for r in spec)):
                raise ValueError(f"{at}: expected a range per model, [[low, high], ...], got {spec!r}")
            if len(spec) != models:
                raise ValueError(f"{at}: {len(spec)} ranges for {models} models; expected one per model")
            ranges = [_range(r, f"{at}[{k}]") for k, r in enumerate(spec)]
            shapes[key] = len(ranges)
        else:
            if isinstance(spec, dict):
                unknown = sorted(set(spec) - {"range", "gradient"})
                if unknown or "range" not in spec:
                    raise ValueError(f"{at}: expected {{range: [low, high], gradient: N}} (gradient optional), got "
                                     f"{spec!r}")
                lo_hi, points = _range(spec["range"], f"{at}.range"), spec.get("gradient")
                if points is not None and (not isinstance(points, int) or isinstance(points, bool) or points < 2):
                    raise ValueError(f"{at}.gradient: expected a number of control points >= 2 over the layers, "
                                     f"got {points!r}")
            else:
                lo_hi, points = _range(spec, at), None
            ranges = [lo_hi] * (points or 1)
            shapes[key] = points
        low += [r[0] for r in ranges]
        high += [r[1] for r in ranges]
    if not 0 <= section.decimals <= 12:
        raise ValueError(f"{where}.decimals: expected 0-12, got {section.decimals}")
    return Space(shapes, np.array(low), np.array(high), section.decimals)


def check_section(section: SearchSection, where: str) -> None:
    if section.method not in SEARCH_METHODS:
        raise ValueError(f"{where}.method: {section.method!r}: expected one of {list(SEARCH_METHODS)}")
    if section.budget < 1:
        raise ValueError(f"{where}.budget: expected a number of points >= 1, got {section.budget}")
    if section.population and section.population < 2:
        raise ValueError(f"{where}.population: expected >= 2 points per generation (0: the default), got "
                         f"{section.population}")
    if not 0 < section.sigma <= 1:
        raise ValueError(f"{where}.sigma: expected a step in (0, 1] (a fraction of each range), got {section.sigma}")
    if section.method == "random" and (section.start or section.population):
        raise ValueError(f"{where}: start and population are CMA-ES settings; random search draws every point "
                         "uniformly")


class RandomSearch:
    """Uniform proposals, one at a time; proposal i is the same whatever came before."""

    def __init__(self, space: Space, section: SearchSection):
        self.space, self.seed, self.count = space, section.seed, 0

    def ask(self) -> list[np.ndarray]:
        u = np.random.default_rng([self.seed, self.count]).random(self.space.dims)
        self.count += 1
        return [u]

    def tell(self, points: list[np.ndarray], scores: list[float | None]) -> None:
        pass


class CMAES:
    """(mu/mu_w, lambda)-CMA-ES maximizing the score in the unit box (module docstring). A point without a score
    (its metric could not be computed) ranks last."""

    def __init__(self, space: Space, section: SearchSection, start: np.ndarray):
        n = space.dims
        self.n, self.seed, self.generation = n, section.seed, 0
        self.lam = section.population or 4 + int(3 * math.log(n))
        self.mu = self.lam // 2
        w = math.log(self.mu + 0.5) - np.log(np.arange(1, self.mu + 1))
        self.weights = w / w.sum()
        self.mueff = 1.0 / float(np.sum(self.weights ** 2))
        self.cc = (4 + self.mueff / n) / (n + 4 + 2 * self.mueff / n)
        self.cs = (self.mueff + 2) / (n + self.mueff + 5)
        self.c1 = 2 / ((n + 1.3) ** 2 + self.mueff)
        self.cmu = min(1 - self.c1, 2 * (self.mueff - 2 + 1 / self.mueff) / ((n + 2) ** 2 + self.mueff))
        self.damps = 1 + 2 * max(0.0, math.sqrt((self.mueff - 1) / (n + 1)) - 1) + self.cs
        self.chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
        self.mean, self.sigma = start.astype(np.float64), float(section.sigma)
        self.pc, self.ps = np.zeros(n), np.zeros(n)
        self._set_cov(np.eye(n))

    def _set_cov(self, cov: np.ndarray) -> None:
        """C and its eigendecomposition, once per update (ask samples with it, tell whitens with it)."""
        self.cov = cov
        vals, self._vecs = np.linalg.eigh(cov)
        self._sqrt_vals = np.sqrt(np.maximum(vals, 1e-20))

    def ask(self) -> list[np.ndarray]:
        """A generation: `lam` samples of N(mean, sigma^2 C), clipped onto the unit box."""
        rng = np.random.default_rng([self.seed, self.generation])
        scale = self._vecs * self._sqrt_vals  # B D
        z = rng.standard_normal((self.lam, self.n))
        return [np.clip(self.mean + self.sigma * scale @ zi, 0.0, 1.0) for zi in z]

    def tell(self, points: list[np.ndarray], scores: list[float | None]) -> None:
        """Update from a generation's (clipped) points and their scores; the generation may be cut short by the
        budget, in which case nothing more is asked of it."""
        self.generation += 1
        if len(points) < self.lam:  # (the budget's last, partial generation: the search ends here)
            return
        order = sorted(range(len(points)), key=lambda i: -math.inf if scores[i] is None else scores[i],
                       reverse=True)[:self.mu]
        x = np.array([points[i] for i in order])
        old = self.mean
        self.mean = self.weights @ x
        y = (x - old) / self.sigma
        step = (self.mean - old) / self.sigma
        inv_sqrt = self._vecs @ np.diag(1 / self._sqrt_vals) @ self._vecs.T
        self.ps = (1 - self.cs) * self.ps + math.sqrt(self.cs * (2 - self.cs) * self.mueff) * inv_sqrt @ step
        # (Hansen's h_sigma: stall the rank-one path while the step-size path is long, early on)
        norm_ps = float(np.linalg.norm(self.ps))
        hsig = norm_ps / math.sqrt(1 - (1 - self.cs) ** (2 * self.generation)) / self.chi_n < 1.4 + 2 / (self.n + 1)
        self.pc = (1 - self.cc) * self.pc + hsig * math.sqrt(self.cc * (2 - self.cc) * self.mueff) * step
        rank_mu = (y.T * self.weights) @ y
        cov = ((1 - self.c1 - self.cmu + (1 - hsig) * self.c1 * self.cc * (2 - self.cc)) * self.cov
               + self.c1 * np.outer(self.pc, self.pc) + self.cmu * rank_mu)
        self._set_cov((cov + cov.T) / 2)
        self.sigma *= math.exp((self.cs / self.damps) * (norm_ps / self.chi_n - 1))
        self.sigma = min(self.sigma, 1.0)  # (the box is the unit cube: a larger step only clips)


def make_search(space: Space, section: SearchSection, where: str):
    if section.method == "random":
        return RandomSearch(space, section)
    unknown = sorted(set(section.start or {}) - set(space.shapes))
    if unknown:
        raise ValueError(f"{where}.start: {unknown} not in space ({sorted(space.shapes)})")
    return CMAES(space, section, space.unit(section.start or {}, f"{where}.start"))
