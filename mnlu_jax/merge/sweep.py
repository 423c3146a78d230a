"""Merge settings against evaluation scores: `mnlu-jax merge-sweep --config FILE [key=value ...]`.

Every combination of a grid of merge settings (a DARE drop rate by seed, TIES densities, SLERP's t, ...) is
merged (merge/streaming.py, streaming, so a 7B point fits a small machine), decoded and scored on the eval sets
(evaluate/cli.py), and the scores are tabulated and drawn. It is how one picks the paper's drop rate instead of
taking it, and how one sees how much DARE's random masks move a score at a given rate.

    output_dir: runs/sweep
    merge: {base: B, models: [B, FT], method: dare}   # a merge config (ours or mergekit's), without `out`
    grid: {drop_rate: [0.2, 0.5, 0.9], seed: [0, 1]}  # MergeConfig fields -> values: one merge per combination
    eval_dir: runs/demo/eval_sets                      # build-eval's output
    references: {base: B, finetuned: runs/demo/eval/finetuned}   # checkpoints (evaluated once) or evaluations

Writes under `output_dir`: `points/<key=value,...>/` (`point.json`: the merge's settings and times; `eval/`: the
predictions and scores; `merged/` with `keep_merges`), `references/<name>/`, `results.{md,csv,json}` (a row per
point, the best marked, with a paired bootstrap's 95% interval and chance of scoring at least the best; over
seeds, their mean, spread and range per setting) and `sweep.png`. Each point is
resumable: a scored point is not run again, a merge that finished is evaluated without merging it again, and an
interrupted evaluation goes on where it stopped. A rerun with other fixed settings (the merge config outside the
grid, the eval sets, the decoding, the references) is refused, naming what changed, once anything was made with
the old ones; a larger grid reuses the points it shares. Averages are over the sweep's sets, references' too.

`search:` instead of `grid:` proposes the points (CMA-ES or random search over ranges of numeric settings,
merge/search.py): one generation at a time from the scores of those before, replayed from the scored points on a
rerun, so a stopped search goes on and a larger budget continues it. `holdout:` scores the best point (merged
again if its merge was deleted) and the references on sets the sweep does not rank by. `metric: weighted mean`
ranks by `metric_weights` ({set or aggregate: weight}), as mergekit-evolve weighs its tasks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnlu_jax.config import (_did_you_mean, changed_settings, from_dict, save_config, write_csv_atomic,
                             write_text_atomic)
from mnlu_jax.merge.search import SearchSection, check_section, make_search, parse_space
from mnlu_jax.pipeline import DecodeSection

if TYPE_CHECKING:  # (merge.config imports jax: the command line's parser starts without it)
    from mnlu_jax.merge.config import MergeConfig

AGGREGATES = ("BLURB macro avg (paper)", "BLUE macro avg (paper)", "BLURB score")
# `metric: weighted mean` ranks by sum(w * score) / sum(w) over `metric_weights` (sets and aggregates), as
# mergekit-evolve weighs its tasks
WEIGHTED = "weighted mean"
# set by the sweep itself: a grid over them would write elsewhere or record a config that was not run
NOT_SWEPT = ("out", "mergekit_config")
# mergekit's names for settings the grid names as ours
MERGEKIT_NAMES = {"density": "drop_rate (1 - density)", "lambda": "lam", "weight": "weights (one per model)",
                  "merge_method": "method", "base_model": "base"}


@dataclasses.dataclass
class HoldoutSection:
    """Sets the sweep does not rank by, on which its best point is scored once it is known: a search (or a large
    grid) picks the best of the scores it sees, so that score is optimistic and this one is not."""
    eval_dir: str = ""
    sets: list[str] = dataclasses.field(default_factory=list)  # empty: every set in its manifest


@dataclasses.dataclass
class SweepConfig:
    output_dir: str = "runs/sweep"
    merge: dict[str, Any] = dataclasses.field(default_factory=dict)
    grid: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    # instead of a grid: random search or CMA-ES over ranges of numeric settings (merge/search.py)
    search: SearchSection | None = None
    eval_dir: str = ""
    sets: list[str] = dataclasses.field(default_factory=list)  # eval set names; empty: every set in the manifest
    metric: str = "BLURB macro avg (paper)"  # the score points are ranked by: an aggregate, a set, or WEIGHTED
    metric_weights: dict[str, float] = dataclasses.field(default_factory=dict)  # set or aggregate -> weight
    mode: str = "paper"                      # paper | official scoring
    # name -> a checkpoint (evaluated once, with the points' settings) or an evaluation's output directory (its
    # scores.json read as it is: the pipeline's eval/base, say)
    references: dict[str, str] = dataclasses.field(default_factory=dict)
    chat_template: str = "tokenizer"
    drop_system: bool = False                # as evaluate's --drop-system (the paper's, for non-Llama models)
    keep_merges: bool = False                # keep each point's merged checkpoint (else deleted once scored)
    # resamples of each set's instances for the metric's 95% interval and each point's chance of beating the best
    # (the same resamples for every point: paired); 0: none
    bootstrap: int = 200
    bootstrap_seed: int = 0
    decode: DecodeSection = dataclasses.field(default_factory=DecodeSection)
    # the best point (merged again if its merge was deleted) and the references scored on other sets
    holdout: HoldoutSection | None = None


@dataclasses.dataclass(frozen=True)
class Point:
    values: dict           # grid (or search space) key -> value
    name: str              # its directory name: key=value,...
    merge: MergeConfig     # the whole merge, `out` included


SLUG_CHARS = 120  # a longer name (a grid over `models` lists paths) is cut and made unique by a hash


def _slug(values: dict) -> str:
    """`drop_rate=0.2,seed=0`: readable, one path component (what is not a safe file name character is `_`)."""
    text = ",".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in values.items())
    slug = re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)
    if len(slug) > SLUG_CHARS:
        slug = f"{slug[:SLUG_CHARS - 11]}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"
    return slug


def plan_points(cfg: SweepConfig, where: str = "merge-sweep") -> list[Point]:
    """Every combination of the grid, in the grid's order, each merge config checked (settings, method, varying
    values) before any merge runs; errors name the field."""
    fixed = _fixed_merge(cfg, where)
    if cfg.search is not None:
        raise ValueError(f"{where}: a search proposes its points from the scores (search_points), not a plan")
    for key, values in cfg.grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: grid.{key}: expected a non-empty list of values, got {values!r}")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ValueError(f"{where}: grid.{key}: a value is listed twice in {values!r}")
    keys = list(cfg.grid)
    points = [_point(cfg, fixed, dict(zip(keys, combo)), where)
              for combo in itertools.product(*(cfg.grid[k] for k in keys))]
    seen: dict[str, dict] = {}
    for p in points:
        if p.name in seen:
            raise ValueError(f"{where}: points {seen[p.name]} and {p.values} have one directory name {p.name!r}")
        seen[p.name] = p.values
    return points


def _fixed_merge(cfg: SweepConfig, where: str) -> dict:
    """The merge config's fields, after checking that the sweep names its varying settings once (a grid or a
    search, over merge settings the merge config does not set model by model)."""
    from mnlu_jax.merge.config import MergeConfig

    fixed = _merge_fields(cfg, where)
    if fixed.get("out"):
        raise ValueError(f"{where}: merge.out: each point's merge is written under output_dir/points/; leave out "
                         "`out`")
    if cfg.grid and cfg.search is not None:
        raise ValueError(f"{where}: grid and search: give one (a grid lists values, a search ranges)")
    if not cfg.grid and cfg.search is None:
        raise ValueError(f"{where}: grid: expected {{FIELD: [VALUE, ...], ...}} (MergeConfig fields, e.g. "
                         "drop_rate: [0.2, 0.5, 0.9]), or search: {method, budget, space}; both are empty")
    block = "grid" if cfg.search is None else "search.space"
    names = {f.name for f in dataclasses.fields(MergeConfig)}
    for key in _swept(cfg):
        if key in NOT_SWEPT or key not in names:
            known = sorted(names - set(NOT_SWEPT))
            hint = (f" (the {block} takes our names, even over a mergekit config: {MERGEKIT_NAMES[key]})"
                    if key in MERGEKIT_NAMES else _did_you_mean([key], known))
            raise ValueError(f"{where}: {block}.{key}: not a merge setting to sweep{hint}; known: {known}")
        per_model = fixed.get("per_model") or {}
        if key in per_model:  # (a mergekit config's per-model density: it would win over the sweep's value)
            raise ValueError(f"{where}: {block}.{key}: the merge config sets {key} model by model "
                             f"({per_model[key]}), which would override the {block}'s value; set it once at the "
                             "top instead")
    return fixed


def _swept(cfg: SweepConfig) -> list[str]:
    """The merge settings the points vary: the grid's keys or the search space's."""
    return list(cfg.grid) if cfg.search is None else list(cfg.search.space or {})


def _point(cfg: SweepConfig, fixed: dict, values: dict, where: str) -> Point:
    """The point at `values`, its whole merge config checked (settings, method, varying values)."""
    from mnlu_jax.merge.config import MergeConfig

    name = _slug(values)
    data = {**fixed, **values, "out": str(Path(cfg.output_dir).absolute() / "points" / name / "merged")}
    merge = from_dict(MergeConfig, data, where=f"{where}: point {name}")
    try:
        merge.spec(), merge.schedule(), merge.tokenizer()  # every point's settings, before any merge runs
    except ValueError as e:
        raise ValueError(f"{where}: point {name}: {e}") from None
    if merge.method != "passthrough" and merge.slices is None and not (merge.base and merge.models):
        raise ValueError(f"{where}: merge: `base` and `models` are required (the checkpoints each point merges)")
    return Point(values, name, merge)


PENDING = object()  # a proposal not scored yet (what describe_plan's search stops at)


def search_points(cfg: SweepConfig, score_of, where: str = "merge-sweep", checked=None) -> list[tuple[Point, int]]:
    """Run the search (merge/search.py): ask for a generation, `score_of(point, number)` each proposal (its
    metric, None without one, or PENDING), tell the search, until the budget is spent or a generation holds a
    pending point. Returns (point, generation) per proposal, in order; a repeated proposal is listed again.
    `checked`: what `_check_search` returned, if the caller checked first (a fresh search, not yet asked)."""
    fixed, space, search = checked or _check_search(cfg, where)
    proposals: list[tuple[Point, int]] = []
    generation = 0
    while len(proposals) < cfg.search.budget:
        batch = search.ask()[:cfg.search.budget - len(proposals)]
        points = [_point(cfg, fixed, space.values(u), where) for u in batch]
        scores = []
        for point in points:
            proposals.append((point, generation))
            scores.append(score_of(point, len(proposals)))
        if any(s is PENDING for s in scores):
            break
        # (told the rounded points it scored, so that a rerun, which reads their values back, replays it exactly)
        search.tell([space.unit(p.values, where) for p in points], scores)
        generation += 1
    return proposals


def _check_search(cfg: SweepConfig, where: str):
    """(The merge config's fields, the search space, a fresh search) after checking the search settings and the
    merges at the space's low and high corners and the start: a range that reaches an invalid setting is named
    before anything is merged."""
    fixed = _fixed_merge(cfg, where)
    section, at = cfg.search, f"{where}: search"
    check_section(section, at)
    space = parse_space(section, len(fixed.get("models") or []), at)
    search = make_search(space, section, at)
    corners = [np.zeros(space.dims), np.ones(space.dims)]
    if section.start:  # (only CMA-ES takes one: its first mean)
        corners.append(search.mean)
    for u in corners:
        _point(cfg, fixed, space.values(u), where)
    return fixed, space, search


def _merge_fields(cfg: SweepConfig, where: str) -> dict:
    """The `merge:` config as our MergeConfig's fields (a mergekit config translated), without the mergekit config
    itself: each point records its own settings in point.json instead."""
    from mnlu_jax.merge.config import translate_merge_config

    if not isinstance(cfg.merge, dict) or not cfg.merge:
        raise ValueError(f"{where}: merge: expected a merge config (base, models, method, ...; ours or mergekit's)")
    fields = translate_merge_config(dict(cfg.merge), f"{where}: merge")
    fields.pop("mergekit_config", None)
    return fields


def fixed_settings(cfg: SweepConfig) -> dict:
    """What every point shares: a rerun with another of these would mix incomparable scores in one table."""
    merge = {k: v for k, v in _merge_fields(cfg, "merge").items() if k not in _swept(cfg)}
    return json.loads(json.dumps({
        "merge": merge, "eval_dir": str(Path(cfg.eval_dir).absolute()), "sets": sorted(cfg.sets),
        "chat_template": cfg.chat_template, "drop_system": cfg.drop_system, "decode": dataclasses.asdict(cfg.decode),
        "references": {k: str(Path(v).absolute()) for k, v in cfg.references.items()}}, default=str))


def _check(cfg: SweepConfig, where: str):
    """(The eval sets the sweep scores, the decoder's DecodeConfig), after checking the settings that do not need a
    merge; errors name them."""
    from mnlu_jax.data.chat import check_template_choice
    from mnlu_jax.weights.convert import check_source

    if not cfg.output_dir:
        raise ValueError(f"{where}: output_dir is required")
    sets = _eval_sets(cfg.eval_dir, cfg.sets, f"{where}: ")
    if cfg.mode not in ("paper", "official"):
        raise ValueError(f"{where}: mode {cfg.mode!r}: expected paper or official")
    _check_metric(cfg, sets, where)
    decode = cfg.decode.config()
    if cfg.bootstrap < 0:
        raise ValueError(f"{where}: bootstrap {cfg.bootstrap}: expected a number of resamples >= 0 (0: none)")
    check_template_choice(cfg.chat_template)
    for name, path in cfg.references.items():
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise ValueError(f"{where}: references.{name}: expected a plain name (letters, digits, . _ -)")
        if not isinstance(path, str) or not path:
            raise ValueError(f"{where}: references.{name}: expected a checkpoint path, got {path!r}")
        if not _is_evaluation(path):
            check_source(path, f"{where}: references.{name}")
    return sets, decode


def _check_metric(cfg: SweepConfig, sets: list[str], where: str, holdout: bool = False) -> None:
    """The metric (a weighted mean: each of its names and weights) can be computed on `sets`; errors name the
    field."""
    from mnlu_jax.evaluate.score import aggregates

    at = f"{where}: holdout.sets: " if holdout else f"{where}: "
    scorer = "holdout" if holdout else "sweep"
    weighted = cfg.metric == WEIGHTED
    if cfg.metric_weights and not weighted:
        raise ValueError(f"{where}: metric_weights: only with metric: {WEIGHTED} (metric is {cfg.metric!r})")
    if weighted:
        if not isinstance(cfg.metric_weights, dict) or not cfg.metric_weights:
            raise ValueError(f"{where}: metric_weights: expected {{set or aggregate: weight, ...}} for metric: "
                             f"{WEIGHTED}, got {cfg.metric_weights!r}")
        for name, weight in cfg.metric_weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not np.isfinite(weight) \
                    or weight <= 0:
                raise ValueError(f"{where}: metric_weights.{name}: expected a weight > 0, got {weight!r}")
    fields = ({n: f"metric_weights.{n}" for n in cfg.metric_weights} if weighted
              else {cfg.metric: f"metric {cfg.metric!r}"})
    # an aggregate none of whose sets (for the BLURB score: a set of each of its six task types) is scored would
    # be None for every point: the sweep would merge and decode them all and rank none
    uncomputable = {a for a, v in aggregates({n: 0.0 for n in sets}).items() if v is None}
    for name, field in fields.items():
        if name in uncomputable:
            needs = "a set of each of BLURB's six task types" if name == "BLURB score" else \
                f"at least one {name.split()[0]} set"
            raise ValueError(f"{at}{field}: not computable on the sets the {scorer} scores ({sets}): it needs "
                             f"{needs}")
        if name not in AGGREGATES and name not in sets:
            if holdout and not weighted:
                raise ValueError(f"{at}the metric {name!r} is a set the holdout does not score ({sets}); add it, "
                                 "or rank by an aggregate")
            choices = list(AGGREGATES) if weighted else [*AGGREGATES, WEIGHTED]
            raise ValueError(f"{at}{field}: expected one of {choices} or a set the {scorer} scores ({sets})")


def weighted_mean(scores: dict, weights: dict[str, float]) -> float | None:
    """sum(w * score) / sum(w) over `weights`' names; None when one of them has no score."""
    values = [scores.get(name) for name in weights]
    if any(v is None for v in values):
        return None
    return float(sum(w * v for w, v in zip(weights.values(), values)) / sum(weights.values()))


def _eval_sets(eval_dir: str, names: list[str], at: str) -> list[str]:
    """The eval sets a sweep scores: `names` (each checked to be in `eval_dir`'s manifest), or all of them."""
    from mnlu_jax.evaluate.sets import read_manifest

    manifest = Path(eval_dir) / "manifest.json"
    if not eval_dir or not manifest.is_file():
        raise FileNotFoundError(f"{at}eval_dir {eval_dir!r}: no manifest.json (build-eval writes the eval sets and "
                                "their manifest)")
    have = list(read_manifest(manifest))
    unknown = sorted(set(names) - set(have))
    if unknown:
        raise ValueError(f"{at}sets {unknown}: not in {manifest}, which has {have}")
    return list(names) or have


def _holdout_sets(cfg: SweepConfig, where: str) -> list[str] | None:
    """The held-out sets (None without `holdout:`), checked: the metric must be computable on them."""
    if cfg.holdout is None:
        return None
    sets = _eval_sets(cfg.holdout.eval_dir, cfg.holdout.sets, f"{where}: holdout.")
    _check_metric(cfg, sets, where, holdout=True)
    return sets


def _is_evaluation(path: str | Path) -> bool:
    """Whether a reference names an evaluation already made (its scores.json is read) rather than a checkpoint."""
    return (Path(path) / "scores.json").is_file()


def scores_of(eval_out: Path, system: str | None, mode: str, sets: list[str],
              weights: dict[str, float] | None = None) -> dict:
    """{set or aggregate: score} over `sets` from an evaluation's scores.json (`system` None: the one system it
    holds), with `weights` also their WEIGHTED mean. The aggregates are computed over `sets` alone, so that an
    evaluation of more sets (a reference read from the pipeline's) compares with the points."""
    from mnlu_jax.evaluate.score import aggregates

    systems = json.loads((eval_out / "scores.json").read_text())
    if system is None:
        if len(systems) != 1:
            raise ValueError(f"{eval_out}/scores.json: scores of {sorted(systems)}; expected one system's (an "
                             "evaluate output directory)")
        system = next(iter(systems))
    datasets = systems[system]["datasets"]
    missing = [n for n in sets if n not in datasets]
    if missing:
        raise ValueError(f"{eval_out}/scores.json: no scores for {missing}, which the sweep scores")
    per_set = {n: datasets[n][mode]["score"] for n in sets}
    scores = {**per_set, **aggregates(per_set)}
    return {**scores, WEIGHTED: weighted_mean(scores, weights)} if weights else scores


def run_sweep(cfg: SweepConfig, progress: bool = True, log=print) -> dict:
    """Merge, decode and score every point not yet scored, then write the results table and plot (module
    docstring). Returns results.json's contents."""
    from mnlu_jax.evaluate.cli import run_evaluate
    from mnlu_jax.locks import exclusive
    from mnlu_jax.merge.config import run_merge

    where = "merge-sweep"
    sets, decode = _check(cfg, where)
    held_out_sets = _holdout_sets(cfg, where)
    if cfg.search is None:
        points: list[Point] | None = plan_points(cfg, where)
    else:  # (a search's points come from its scores; its settings and ranges are checked here, before the lock)
        points = None
        checked = _check_search(cfg, where)
    out = Path(cfg.output_dir).absolute()
    settings = fixed_settings(cfg)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(out / "sweep.lock", str(out)):
        state = out / "sweep_settings.json"
        changed = changed_settings(json.loads(state.read_text()), settings) if state.exists() else []
        # what an earlier run made (merges, evaluations); a run that failed before it made any may be fixed
        made = [*out.glob("points/*/*"), *out.glob("references/*/*")]
        if changed and made:
            raise ValueError(f"{out}: holds a sweep of other settings ({'; '.join(changed)}); its points would "
                             "not compare with these: use another output_dir")
        if changed or not state.exists():
            write_text_atomic(state, json.dumps(settings, indent=2))
        save_config(cfg, out / "sweep.yaml")

        def evaluate(model: Path, eval_out: Path, system: str, eval_dir: str = cfg.eval_dir,
                     names: list[str] | None = list(cfg.sets) or None) -> float:
            start = time.perf_counter()
            run_evaluate(model, eval_dir, eval_out, decode, chat_template=cfg.chat_template,
                         drop_system=cfg.drop_system, dtype=cfg.decode.dtype, system_name=system,
                         names=names, progress=progress)
            return time.perf_counter() - start

        rows: dict[str, dict] = {}  # point name -> its row (a search may propose a point twice)
        scored: dict[str, Point] = {}  # point name -> the point (the holdout merges the best one again)

        def run_point(point: Point, tag: str) -> dict:
            if point.name in rows:
                log(f"{tag} {point.name}: proposed again (scored above)")
                return rows[point.name]
            home = out / "points" / point.name
            eval_out = home / "eval"
            merged = Path(point.merge.out)
            record_path = home / "point.json"
            record = json.loads(record_path.read_text()) if record_path.exists() else {
                "values": point.values, "merge": json.loads(json.dumps(dataclasses.asdict(point.merge), default=str))}
            if (eval_out / "scores.json").exists():
                log(f"{tag} {point.name}: already scored")
            else:
                home.mkdir(parents=True, exist_ok=True)
                if not (merged / "config.json").exists():  # (written atomically: present means whole)
                    log(f"{tag} {point.name}: merging")
                    start = time.perf_counter()
                    run_merge(point.merge, progress=progress)
                    record["merge_s"] = round(time.perf_counter() - start, 2)
                    write_text_atomic(record_path, json.dumps(record, indent=2))
                log(f"{tag} {point.name}: evaluating")
                record["eval_s"] = round(evaluate(merged, eval_out, point.name), 2)
                write_text_atomic(record_path, json.dumps(record, indent=2))
                if not cfg.keep_merges:  # (the merges this run evaluated; those of points scored before stay)
                    shutil.rmtree(merged)
            scores = scores_of(eval_out, point.name, cfg.mode, sets, cfg.metric_weights)
            log(f"{tag} {point.name}: {cfg.metric} {_fmt(scores.get(cfg.metric))}")
            if cfg.bootstrap and scores.get(cfg.metric) is not None:
                key = {"draws": cfg.bootstrap, "seed": cfg.bootstrap_seed, "metric": cfg.metric, "mode": cfg.mode,
                       "sets": sets, **({"weights": cfg.metric_weights} if cfg.metric == WEIGHTED else {})}
                if record.get("bootstrap", {}).get("key") != key:  # (kept in point.json: a rerun reads it)
                    record["bootstrap"] = {"key": key, "samples": bootstrap_samples(
                        eval_out / "predictions", sets, cfg.metric, cfg.mode, cfg.bootstrap, cfg.bootstrap_seed,
                        cfg.metric_weights)}
                    write_text_atomic(record_path, json.dumps(record, indent=2))
            rows[point.name] = {**record, "name": point.name, "scores": scores}
            scored[point.name] = point
            return rows[point.name]

        def score_held_out(best: str, held_out: list[str]) -> dict:
            """The best point and the references on the held-out sets; under holdout/<hash of its settings>/, so
            that another holdout is scored apart and a rerun reads what is scored."""
            key = {"eval_dir": str(Path(cfg.holdout.eval_dir).absolute()), "sets": held_out}
            home = out / "holdout" / hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
            home.mkdir(parents=True, exist_ok=True)
            write_text_atomic(home / "holdout.json", json.dumps(key, indent=2))
            point = scored[best]
            eval_out = home / best
            if not (eval_out / "scores.json").exists():
                merged, again = Path(point.merge.out), not (Path(point.merge.out) / "config.json").exists()
                if again:  # (deleted once scored; the same config and seed give the same merge)
                    log(f"holdout: {best}: merging again")
                    run_merge(point.merge, progress=progress)
                log(f"holdout: {best}: evaluating on {len(held_out)} held-out sets")
                evaluate(merged, eval_out, best, cfg.holdout.eval_dir, held_out)
                if again and not cfg.keep_merges:
                    shutil.rmtree(merged)
            scores = scores_of(eval_out, best, cfg.mode, held_out, cfg.metric_weights)
            log(f"holdout: {best}: {cfg.metric} {_fmt(scores.get(cfg.metric))}")
            refs: dict[str, dict | None] = {}
            for name, path in cfg.references.items():
                if _is_evaluation(path):  # (read if it scored every held-out set)
                    try:
                        refs[name] = scores_of(Path(path), None, cfg.mode, held_out, cfg.metric_weights)
                    except ValueError:
                        refs[name] = None
                    continue
                ref_out = home / "references" / name
                if not (ref_out / "scores.json").exists():
                    log(f"holdout: reference {name}: evaluating {path}")
                    evaluate(Path(path), ref_out, name, cfg.holdout.eval_dir, held_out)
                refs[name] = scores_of(ref_out, name, cfg.mode, held_out, cfg.metric_weights)
            return {**key, "point": best, "scores": scores, "references": refs}

        search = None
        if points is not None:
            for k, point in enumerate(points, 1):
                run_point(point, f"[{k}/{len(points)}]")
        else:
            budget = cfg.search.budget
            proposals = search_points(cfg, lambda p, k: run_point(p, f"[{k}/{budget}]")["scores"].get(cfg.metric),
                                      where, checked)
            search = _search_record(cfg, proposals, rows)
        references = {}
        for name, path in cfg.references.items():
            if _is_evaluation(path):
                references[name] = scores_of(Path(path), None, cfg.mode, sets, cfg.metric_weights)
                continue
            eval_out = out / "references" / name
            if not (eval_out / "scores.json").exists():
                log(f"reference {name}: evaluating {path}")
                evaluate(Path(path), eval_out, name)
            references[name] = scores_of(eval_out, name, cfg.mode, sets, cfg.metric_weights)
        results = summarize(list(rows.values()), _swept(cfg), sets, cfg.metric, cfg.mode, references, search)
        if cfg.metric == WEIGHTED:
            results["metric_weights"] = dict(cfg.metric_weights)
        if held_out_sets is not None and results["best"] is not None:
            results["holdout"] = score_held_out(results["best"]["name"], held_out_sets)
        write_results(results, out)
    return results


def _search_record(cfg: SweepConfig, proposals: list[tuple[Point, int]], rows: dict[str, dict]) -> dict:
    """results.json's `search`: each proposal in order with its score and the best so far; each row gets the
    number of its first proposal (and its CMA-ES generation)."""
    listed, best = [], None
    for number, (point, generation) in enumerate(proposals, 1):
        row = rows[point.name]
        row.setdefault("proposal", number)
        if cfg.search.method == "cmaes":
            row.setdefault("generation", generation)
        score = row["scores"].get(cfg.metric)
        if score is not None and (best is None or score > best):
            best = score
        listed.append({"number": number, "name": point.name, "score": score, "best_so_far": best})
    return {"method": cfg.search.method, "budget": cfg.search.budget, "seed": cfg.search.seed,
            "space": cfg.search.space, "proposals": listed}


def bootstrap_samples(pred_dir: Path, sets: list[str], metric: str, mode: str, draws: int, seed: int,
                      weights: dict[str, float] | None = None) -> list[float]:
    """The metric (WEIGHTED: the mean with `weights`) on `draws` resamples (with replacement) of each set's
    instances, sets resampled apart. The draws depend only on `seed` and the sets' sizes, with instances in id
    order, so every point of a sweep sees the same resamples and two points compare draw by draw."""
    from mnlu_jax.evaluate.metrics import score_records
    from mnlu_jax.evaluate.score import aggregates, load_predictions

    preds = load_predictions(pred_dir)
    rng = np.random.default_rng(seed)
    named = set(weights or ()) if metric == WEIGHTED else {metric}
    every_set = bool(named & set(AGGREGATES))
    per_set: dict[str, list[float]] = {}
    for name in sets:  # (every set draws, used or not, so that the draws do not depend on the metric)
        recs = sorted(preds[name], key=lambda r: str(r["id"]))
        draw = rng.integers(0, len(recs), size=(draws, len(recs)))
        if every_set or name in named:
            per_set[name] = [score_records([recs[i] for i in row], mode)["score"] for row in draw]
    samples = []
    for b in range(draws):
        scores = {n: v[b] for n, v in per_set.items()}
        if every_set:
            scores.update(aggregates(scores))
        samples.append(weighted_mean(scores, weights) if metric == WEIGHTED else scores[metric])
    return samples


def describe_plan(cfg: SweepConfig) -> str:
    """What a run would do, after every check it makes before merging: each point and whether it is scored, merged
    (to be evaluated) or to be merged. Writes nothing."""
    where = "merge-sweep"
    sets, _ = _check(cfg, where)
    held_out = _holdout_sets(cfg, where)
    home = Path(cfg.output_dir).absolute() / "points"
    after = [] if held_out is None else [f"  then the best point and the references scored on {len(held_out)} "
                                         f"held-out sets ({cfg.holdout.eval_dir})"]

    def state(p: Point) -> str:
        return ("scored" if (home / p.name / "eval" / "scores.json").exists() else
                "merged, to evaluate" if (Path(p.merge.out) / "config.json").exists() else "to merge and evaluate")

    if cfg.search is None:
        points = plan_points(cfg, where)
        lines = [f"{len(points)} points, each scored on {len(sets)} sets ({cfg.metric}, {cfg.mode} mode):"]
        lines += [f"  {p.name}: {state(p)}" for p in points]
        return "\n".join(lines + after)

    def score_of(p: Point, number: int):  # (what is scored replays the search; CMA-ES stops at the first unscored)
        if state(p) == "scored":
            return scores_of(home / p.name / "eval", p.name, cfg.mode, sets, cfg.metric_weights).get(cfg.metric)
        return None if cfg.search.method == "random" else PENDING

    proposals = search_points(cfg, score_of, where)
    budget = cfg.search.budget
    lines = [f"{cfg.search.method} search, {budget} points, each scored on {len(sets)} sets ({cfg.metric}, "
             f"{cfg.mode} mode):"]
    lines += [f"  [{k}] {p.name}: {state(p)}" for k, (p, _) in enumerate(proposals, 1)]
    if len(proposals) < budget:
        lines.append(f"  then {budget - len(proposals)} more, proposed from the scores of those before")
    return "\n".join(lines + after)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def summarize(rows: list[dict], keys: list[str], sets: list[str], metric: str, mode: str,
              references: dict[str, dict], search: dict | None = None) -> dict:
    """results.json: the points, the best by `metric` (None scores, a set the points do not cover, rank last), and
    with a `seed` key in the grid the metric's mean, standard deviation and range over seeds per other setting;
    a search's proposals in order (`search`)."""
    scored = [r for r in rows if r["scores"].get(metric) is not None]
    best = max(scored, key=lambda r: r["scores"][metric]) if scored else None
    if best is not None and "bootstrap" in best:
        best_samples = np.array(best["bootstrap"]["samples"])
        for r in rows:
            if "bootstrap" in r:
                samples = np.array(r["bootstrap"]["samples"])
                r["ci95"] = [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))]
                r["p_ge_best"] = float(np.mean(samples >= best_samples))
    by_setting = []
    if "seed" in keys:
        others = [k for k in keys if k != "seed"]
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(json.dumps([r["values"][k] for k in others]), []).append(r)
        for group in groups.values():
            scores = [r["scores"][metric] for r in group if r["scores"].get(metric) is not None]
            by_setting.append({"values": {k: group[0]["values"][k] for k in others}, "seeds": len(group),
                               **_spread(np.array(scores))})
    return {"metric": metric, "mode": mode, "grid": keys, "sets": sets, "points": rows,
            "best": None if best is None else {"name": best["name"], "values": best["values"],
                                               "score": best["scores"][metric]},
            "by_setting": by_setting, "references": references, "search": search}


def _spread(scores: np.ndarray) -> dict:
    """Mean, sample standard deviation (0 for one seed), minimum and maximum; None each without a score."""
    if not len(scores):
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": float(scores.mean()), "std": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
            "min": float(scores.min()), "max": float(scores.max())}


def write_results(results: dict, out: Path) -> None:
    """results.json, results.md (the points, then the seed summary and the references), results.csv (the points)
    and sweep.png."""
    keys, metric, sets = results["grid"], results["metric"], results["sets"]
    columns = _score_columns(metric, sets)
    best = results["best"]["name"] if results["best"] else None
    boot = any("ci95" in r for r in results["points"])
    search = results.get("search")
    order = [] if not search else ["#", "generation"] if search["method"] == "cmaes" else ["#"]
    header = [*order, *keys, metric, *(["95% interval", "P(>= best)"] if boot else []), *columns[1:], "merge s",
              "eval s"]
    table = [header]
    for r in results["points"]:
        interval = ["-", "-"] if "ci95" not in r else [f"{r['ci95'][0]:.1f} - {r['ci95'][1]:.1f}",
                                                        f"{r['p_ge_best']:.2f}"]
        first = [str(r["proposal"]), *([str(r["generation"])] if "generation" in r else [])] if search else []
        table.append(first + [json.dumps(r["values"][k]) for k in keys] + [_fmt(r["scores"].get(metric))]
                     + (interval if boot else []) + [_fmt(r["scores"].get(c)) for c in columns[1:]]
                     + [str(r.get("merge_s", "-")), str(r.get("eval_s", "-"))])
    write_csv_atomic(out / "results.csv", table)
    title = f"{search['method']} search, {len(search['proposals'])} proposals" if search else "Merge sweep"
    md = [f"# {title}: {metric} ({results['mode']} mode)", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r, line in zip(results["points"], table[1:]):
        if r["name"] == best:
            line = [f"**{c}**" for c in line]
        md.append("| " + " | ".join(line) + " |")
    if results.get("metric_weights"):
        weights = results["metric_weights"]
        md += ["", f"{WEIGHTED}: sum(weight x score) / {sum(weights.values()):g} over "
               + ", ".join(f"{name} x {w:g}" for name, w in weights.items()) + "."]
    if best:
        md += ["", f"Best by {metric}: {best} ({_fmt(results['best']['score'])})."]
    if search:
        md += [f"`#`: the point's first proposal (of {search['budget']}); a search picks the best of the scores it "
               "optimizes, so the best score is optimistic: score the best point on sets the search did not see "
               "(`holdout:`)."]
    if boot:
        draws = next(r["bootstrap"]["key"]["draws"] for r in results["points"] if "bootstrap" in r)
        md += [f"95% interval: the metric's 2.5th to 97.5th percentile over {draws} resamples of each set's "
               "instances; P(>= best): the share of those resamples (the same for every point) in which the point "
               "scores at least the best point's score."]
    if results["by_setting"]:
        others = [k for k in keys if k != "seed"]
        md += ["", f"Over seeds ({metric}):", "", "| " + " | ".join([*others, "seeds", "mean", "std", "min", "max"])
               + " |", "|" + "---|" * (len(others) + 5)]
        for s in results["by_setting"]:
            md.append("| " + " | ".join([*(json.dumps(s["values"][k]) for k in others), str(s["seeds"]),
                                         *(_fmt(s[x]) for x in ("mean", "std", "min", "max"))]) + " |")
    if results["references"]:
        md += ["", "References:", "", "| model | " + " | ".join(columns) + " |",
               "|---|" + "---|" * len(columns)]
        for name, scores in results["references"].items():
            md.append(f"| {name} | " + " | ".join(_fmt(scores.get(c)) for c in columns) + " |")
    held = results.get("holdout")
    if held:
        cols = _score_columns(metric, held["sets"])
        md += ["", f"Held out ({held['eval_dir']}, {len(held['sets'])} sets, not used to rank the points): the best "
               "point and the references.", "", "| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols),
               f"| {held['point']} | " + " | ".join(_fmt(held["scores"].get(c)) for c in cols) + " |"]
        for name, scores in held["references"].items():
            md.append(f"| {name} | " + (" | ".join(_fmt(scores.get(c)) for c in cols) if scores else
                                        "not scored on every held-out set (an evaluation read as it is)") + " |")
    write_text_atomic(out / "results.md", "\n".join(md) + "\n")
    plot_sweep(results, out / "sweep.png")
    write_text_atomic(out / "results.json", json.dumps(results, indent=2))  # last: the sweep's done mark


def _score_columns(metric: str, sets: list[str]) -> list[str]:
    """A results table's score columns: the metric, then the aggregates and the sets."""
    return [metric, *[a for a in AGGREGATES if a != metric], *[s for s in sets if s != metric]]


def plot_sweep(results: dict, path: Path) -> None:
    """The metric against the first numeric grid setting other than the seed (else the points in order), a line
    per combination of the other settings, seeds as dots around their mean with their bootstrap intervals as
    bars; references as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if results.get("search"):
        return _plot_search(results, path, plt)
    keys, metric, rows = results["grid"], results["metric"], results["points"]
    numeric = [k for k in _numeric_keys(keys, rows) if k != "seed"]
    x_key = numeric[0] if numeric else None
    others = [k for k in keys if k not in ("seed", x_key)]
    fig, ax = plt.subplots(figsize=(7, 4))
    lines: dict[str, list[dict]] = {}
    for r in rows:
        lines.setdefault(", ".join(f"{k}={json.dumps(r['values'][k])}" for k in others), []).append(r)
    for label, group in lines.items():
        xs = [r["values"][x_key] for r in group] if x_key else [rows.index(r) for r in group]
        ys = [np.nan if r["scores"].get(metric) is None else r["scores"][metric] for r in group]
        ax.scatter(xs, ys, s=14, alpha=0.5)
        _interval_bars(ax, xs, group)
        at_x: dict = {}  # x -> its seeds' scores
        for x, y in zip(xs, ys):
            at_x.setdefault(x, []).append(y)
        line_x = sorted(at_x)
        line_y = [np.nan if np.isnan(at_x[x]).all() else np.nanmean(at_x[x]) for x in line_x]
        ax.plot(line_x, line_y, marker="o", label=label or ("mean over seeds" if "seed" in keys else None))
    _reference_lines(ax, results, first_colour=len(lines))
    ax.set_xlabel(x_key or "point")
    if not x_key:
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["name"] for r in rows], rotation=40, ha="right", fontsize=7)
    ax.set_ylabel(f"{metric}, {results['mode']} scoring")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_search(results: dict, path: Path, plt) -> None:
    """A search: each proposal's score against its number (coloured by CMA-ES generation), its bootstrap interval
    as a bar, the best so far as a step line, references as dashed lines; beside it, with two numeric settings in
    the space, where the proposals fell in the first two, coloured by score, the best starred."""
    metric, search = results["metric"], results["search"]
    rows = {r["name"]: r for r in results["points"]}
    scalar = _numeric_keys(results["grid"], list(rows.values()))
    fig, axes = plt.subplots(1, 2 if len(scalar) >= 2 else 1, figsize=(12 if len(scalar) >= 2 else 7, 4),
                             squeeze=False)
    ax = axes[0][0]
    xs = [p["number"] for p in search["proposals"]]
    ys = [np.nan if p["score"] is None else p["score"] for p in search["proposals"]]
    colour = [rows[p["name"]].get("generation", 0) for p in search["proposals"]]
    ax.scatter(xs, ys, c=colour, cmap="viridis", s=18, zorder=3, label="proposals")
    _interval_bars(ax, xs, [rows[p["name"]] for p in search["proposals"]])
    best = [np.nan if p["best_so_far"] is None else p["best_so_far"] for p in search["proposals"]]
    ax.step(xs, best, where="post", color="k", label="best so far")
    _reference_lines(ax, results, first_colour=1)
    ax.set_xlabel(f"proposal ({search['method']}" + (", colour: generation)" if search["method"] == "cmaes" else ")"))
    ax.set_ylabel(f"{metric}, {results['mode']} scoring")
    ax.legend(fontsize=8)
    if len(scalar) >= 2:
        ax, (a, b) = axes[0][1], scalar[:2]
        scored = [r for r in rows.values() if r["scores"].get(metric) is not None]
        dots = ax.scatter([r["values"][a] for r in scored], [r["values"][b] for r in scored],
                          c=[r["scores"][metric] for r in scored], cmap="viridis", s=30)
        fig.colorbar(dots, ax=ax, label=metric)
        if results["best"]:
            ax.scatter([results["best"]["values"][a]], [results["best"]["values"][b]], marker="*", s=220,
                       facecolors="none", edgecolors="r", label="best")
            ax.legend(fontsize=8)
        (lo_a, hi_a), (lo_b, hi_b) = (_bounds(search["space"][k]) for k in (a, b))
        ax.set_xlim(lo_a, hi_a)
        ax.set_ylim(lo_b, hi_b)
        ax.set_xlabel(a)
        ax.set_ylabel(b)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _numeric_keys(keys: list[str], rows: list[dict]) -> list[str]:
    """The settings that are a number at every point (not a list, such as a gradient; not a flag)."""
    return [k for k in keys if all(isinstance(r["values"][k], (int, float)) and not isinstance(r["values"][k], bool)
                                   for r in rows)]


def _interval_bars(ax, xs: list, rows: list[dict]) -> None:
    """Each point's 95% bootstrap interval as a bar at its x (points without one: none)."""
    bars = [(x, r["ci95"]) for x, r in zip(xs, rows) if "ci95" in r]
    if bars:
        ax.vlines([x for x, _ in bars], [lo for _, (lo, _) in bars], [hi for _, (_, hi) in bars], alpha=0.25)


def _reference_lines(ax, results: dict, first_colour: int) -> None:
    """The references' scores as dashed lines, coloured on from the plot's own colours."""
    metric = results["metric"]
    for k, (name, scores) in enumerate(results["references"].items()):
        if scores.get(metric) is not None:
            ax.axhline(scores[metric], linestyle="--", color=f"C{(k + first_colour) % 10}", label=name)


def _bounds(spec) -> tuple[float, float]:
    """A scalar search range's ends ([low, high] or {range: [low, high]})."""
    low, high = spec["range"] if isinstance(spec, dict) else spec
    return low, high
