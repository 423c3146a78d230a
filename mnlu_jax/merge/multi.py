"""Merges that build on merges, as `mergekit-multi` runs them: one YAML file of several documents, each a mergekit
config, named by a `name:` key (one may be unnamed: the final merge). A name used where a model is referenced
means that merge's output, so a recipe is written as it is thought of:

    name: medical
    merge_method: ties
    base_model: mistralai/Mistral-7B-v0.1
    models: [{model: runs/ft_ner/hf, parameters: {weight: 0.5, density: 0.5}}, ...]
    ---
    merge_method: slerp                  # the final merge (written to --out)
    base_model: BioMistral/BioMistral-7B
    models: [{model: BioMistral/BioMistral-7B}, {model: medical}]
    parameters: {t: 0.5}

`mnlu-jax merge-multi FILE --intermediate-dir DIR [--out OUT] [--no-lazy] [--seed N]`: each named merge is
written to DIR/NAME, the unnamed one to OUT, in an order where every merge comes after those it reads. A cycle, a
repeated name, two unnamed merges, or an unnamed one without `--out` is refused before anything is merged, and so
is a bad config, but for one that reads a merge not made yet (checked when its turn comes: reading a model may
need its layer count). As in mergekit, a merge whose output is already there is not run again (`--no-lazy` runs
it again); unlike mergekit, it must have been made from the same config (its `mergekit_config.yml`) and, for
DARE and DELLA, the same seed, else it is refused, naming what changed, instead of silently reused. Each output's
`mergekit_config.yml` holds its config with the names replaced by paths, which `mergekit-yaml` (and `mnlu-jax
merge --config`) runs as it is.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from mnlu_jax.config import changed_settings
from mnlu_jax.merge.math import SPARSIFIER
from mnlu_jax.merge.mergekit_config import is_mergekit_config, map_references, reference

NAME_KEY = "name"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One document: its name (None: the final merge), its config with names replaced by paths, the merges it
    reads, and where it is written."""
    name: str | None
    config: dict
    reads: tuple[str, ...]
    out: Path
    where: str


def count_documents(path: str | Path) -> int:
    """How many non-empty YAML documents `path` holds (0 if it does not parse: its reader names the error)."""
    try:
        return sum(doc is not None for doc in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return 0


def read_stages(path: str | Path, intermediate_dir: str | Path, out: str | Path | None) -> list[Stage]:
    """The merges of the multi-document file `path`, each after the merges it reads; errors name the document."""
    path, intermediate_dir = Path(path), Path(intermediate_dir)
    try:
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read ({e})") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise ValueError(f"{path}:{mark.line + 1 if mark else '?'}: {e.problem or e.context}") from None
    named: dict[str | None, tuple[dict, str]] = {}  # name -> (config, "document K (NAME)")
    for k, doc in enumerate(docs):
        label = f"document {k + 1}"
        where = f"{path}: {label}"
        if doc is None:  # an empty document (a trailing `---`) holds no merge
            continue
        if not is_mergekit_config(doc):
            raise ValueError(f"{where}: expected a mergekit config (a mapping with merge_method), got "
                             f"{type(doc).__name__}" + (f" with keys {sorted(doc)}" if isinstance(doc, dict) else ""))
        doc = dict(doc)
        name = doc.pop(NAME_KEY, None)
        if name is not None:
            if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
                raise ValueError(f"{where}: name: expected a directory name under the intermediate directory, got "
                                 f"{name!r}")
            label = f"{label} ({name})"
            where = f"{path}: {label}"
        if name in named:
            raise ValueError(f"{where}: " + (f"the name {name!r} is also {named[name][1]}'s" if name is not None else
                                             f"a second unnamed merge ({named[None][1]} is one); only the final "
                                             "merge goes unnamed"))
        named[name] = (doc, label)
    if not named:
        raise ValueError(f"{path}: no merge in it")
    if None in named and out is None:
        raise ValueError(f"{path}: {named[None][1]}: an unnamed (final) merge is written to --out, which was not "
                         "given")
    names = {n for n in named if n is not None}
    stages = {}
    for name, (doc, label) in named.items():
        where = f"{path}: {label}"
        reads: list[str] = []

        def patch(value: Any, here: str) -> Any:
            if value in ("base", "union") and here.endswith(("tokenizer_source", "tokenizer.source")):
                return value  # (the tokenizer's keywords, even beside a merge named so)
            text = reference(value, here)
            if not isinstance(text, str):
                return value
            model, plus, lora = text.partition("+")
            head, at, _ = model.partition("@")
            if head not in names:
                return value
            if at:
                raise ValueError(f"{here}: {model!r} names the merge {head!r}, which has no revisions")
            if head not in reads:
                reads.append(head)
            return str((intermediate_dir / head).absolute()) + plus + lora

        config = map_references(doc, patch, where)
        target = Path(out) if name is None else intermediate_dir / name
        stages[name] = Stage(name, config, tuple(reads), target.absolute(), where)
    return _ordered(stages)


def _ordered(stages: dict[str | None, Stage]) -> list[Stage]:
    """`stages` with each after the ones it reads (the file's order otherwise), or an error naming a cycle."""
    done: list[Stage] = []
    state: dict[str | None, str] = {}

    def visit(name: str | None, trail: list[str | None]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = trail[trail.index(name):] + [name]
            raise ValueError(f"{stages[name].where}: the merges read each other in a cycle: "
                             + " -> ".join("(final)" if n is None else n for n in cycle))
        state[name] = "visiting"
        for dep in stages[name].reads:
            visit(dep, trail + [name])
        state[name] = "done"
        done.append(stages[name])

    for name in stages:
        visit(name, [])
    return done


def _made_from(out: Path) -> dict | None:
    """The config a finished merge at `out` recorded ({} if none; None: no finished merge there, since a merge's
    directory appears whole or not at all)."""
    if not (out / "config.json").exists():
        return None
    record = out / "mergekit_config.yml"
    if not record.exists():
        return {}
    return yaml.safe_load(record.read_text(encoding="utf-8")) or {}


def _seeds(out: Path) -> set:
    """The seeds a finished merge's merge_config.json records (one per slice merged slice by slice; none for
    passthrough)."""
    found: set = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "seed" and value is not None:
                    found.add(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    record = out / "merge_config.json"
    if record.exists():
        walk(json.loads(record.read_text(encoding="utf-8")))
    return found


def run_stages(stages: list[Stage], lazy: bool = True, progress: bool = True, seed: int | None = None) -> list[Path]:
    """Merge `stages` in order (see the module docstring); the paths written or found finished."""
    from mnlu_jax.merge.config import run_merge

    # the configs checked before the first merge starts, but for those that read a merge not made yet (reading one
    # may need its layer count); those are checked when reached, and a rerun after a fix finds the others made
    # (each stage's output changes only at its own turn, so what each holds is read once, here)
    made = {s.name: _made_from(s.out) for s in stages}
    finished = {name for name, before in made.items() if name is not None and before is not None}
    configs = {s.name: _merge_config(s, seed) for s in stages if set(s.reads) <= finished}
    if lazy:  # and the finished merges' configs compared, so that a changed one is refused before anything runs
        for stage in stages:
            if stage.name in configs:
                _finished_as_configured(stage, configs[stage.name], made[stage.name])
    written = []
    for stage in stages:
        label = "final merge" if stage.name is None else f"merge {stage.name!r}"
        cfg = configs[stage.name] if stage.name in configs else _merge_config(stage, seed)
        before = made[stage.name]
        if lazy and _finished_as_configured(stage, cfg, before):
            print(f"{label}: {stage.out} is already merged from this config; not merged again")
            written.append(stage.out)
            continue
        if before is None and stage.out.exists() and any(stage.out.iterdir()):
            raise ValueError(f"{stage.where}: {stage.out} exists and holds no finished merge; remove it first")
        print(f"{label} -> {stage.out}")
        if before is None:
            run_merge(cfg, progress=progress)
        else:  # --no-lazy over a finished merge: the new one is made beside it, then takes its place
            fresh = stage.out.with_name(f".{stage.out.name}.new")
            shutil.rmtree(fresh, ignore_errors=True)
            run_merge(dataclasses.replace(cfg, out=str(fresh)), progress=progress)
            old = stage.out.with_name(f".{stage.out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            stage.out.rename(old)
            fresh.rename(stage.out)
            shutil.rmtree(old)
        written.append(stage.out)
    return written


def _finished_as_configured(stage: Stage, cfg, before: dict | None) -> bool:
    """Whether `stage.out` holds a finished merge (False: none there; `before` is what `_made_from` read there),
    made from this config with this seed; one made otherwise is an error naming what changed."""
    if before is None:
        return False
    changed = changed_settings(before, stage.config) if before else ["no mergekit_config.yml there"]
    seeds = _seeds(stage.out) if SPARSIFIER.get(cfg.method) in ("random", "magprune") else set()
    if seeds and seeds != {cfg.seed}:  # (DARE's and DELLA's masks are drawn from it; others do not use it)
        changed.append(f"seed: {sorted(seeds)} then, {cfg.seed} now")
    if changed:
        raise ValueError(f"{stage.where}: {stage.out} holds a merge of another config ({'; '.join(changed)}); "
                         "remove it, or pass --no-lazy to merge it again")
    return True


def _merge_config(stage: Stage, seed: int | None):
    """The MergeConfig of one stage (its config translated as `mnlu-jax merge --config` translates it)."""
    from mnlu_jax.config import from_dict
    from mnlu_jax.merge.config import MergeConfig, translate_merge_config

    fields = dict(translate_merge_config(stage.config, stage.where), out=str(stage.out))
    if seed is not None:
        fields["seed"] = seed
    return from_dict(MergeConfig, fields, where=stage.where)
