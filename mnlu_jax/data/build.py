"""`mnlu-jax build-data`: the MNLU-Instruct builder (mixer config -> JSONL shards + statistics).

A mixer config lists datasets like the original `dataset_mixer`: each has a reader (native format), a path,
a task with its parameters, a fraction of its instances to keep (SNLI 0.03 ...; > 1 repeats), and a domain.
Ablation mixes take a fixed total split equally over the selected tasks, and a domain filter.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import inspect
import json
import math
import random
from pathlib import Path
from typing import Any

from mnlu_jax.config import load_config, save_config, write_text_atomic
from mnlu_jax.data import tasks as T
from mnlu_jax.data.formats import READERS
from mnlu_jax.data.formats.hf import HUB_PREFIX
from mnlu_jax.data.schema import TASKS, DataError, Instance, read_text, shard_name, write_jsonl


@dataclasses.dataclass
class DatasetSpec:
    name: str
    reader: str
    path: str
    task: str                                   # NER ETE EAE EAC (events) DC RE QA NLI STS SUM
    fraction: float = 1.0
    domain: str = "biomed"                      # biomed | clinical | general
    reader_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    types: list[str] | None = None              # NER entity types (default: all found)
    label_map: dict[str, str] | None = None     # abbreviation -> expanded name
    labels: list[str] | None = None             # DC labels
    subject: str = "the topic"                  # DC: "Which options best describe {subject} ..."
    multi_label: bool = True                    # DC
    relation_set: str | None = None             # RE over BLUE masked sentences: chemprot | ddi | gad | i2b2_2010
    relation_types: list[str] | None = None     # RE over annotated entities
    negative_ratio: float = 1.0                 # RE over annotated entities
    scale: str = "stsb"                         # STS: stsb | biosses
    attribute_values: dict[str, list[str]] | None = None  # EAC
    document_ids: str | None = None             # keep only the documents listed in this file (one id a line):
                                                # a split given as an id list over one folder (NLM-Gene)


@dataclasses.dataclass
class MixConfig:
    datasets: list[DatasetSpec] = dataclasses.field(default_factory=list)
    seed: int = 42
    style: str = "mnlu"                          # mnlu | medtuned
    total_instances: int | None = None           # ablations: a fixed total ...
    balance: str = "none"                        # ... split equally over tasks ("task") or not ("none")
    tasks: list[str] | None = None               # keep only these tasks (ablations: k = 1, 3, 5)
    domains: list[str] | None = None             # keep only these domains (BioMed / Clinical / Both)
    shard_size: int = 10000                      # instances per JSONL shard
    base_dir: str | None = None                  # paths are relative to this (default: the config's folder)
    base_config: str | None = None               # take `datasets` from this mixer (ablations reuse the full mix)


SPEC_TASKS = TASKS + ("EE",)  # EE: all three event subtasks (ETE, EAE, EAC) of one corpus


def _task_family(task: str) -> str:
    return "EE" if task in ("ETE", "EAE", "EAC") else task


# per-document counts some readers keep of annotations they left out -> the note that sums them
READER_COUNTS = {"skipped_annotations": "annotations_skipped",  # a reader's bad_spans=skip (each logged)
                 "individual_mentions_dropped": "individual_mentions_dropped",  # BC5CDR BioC's composite parts
                 "relations_not_evaluated": "relations_not_evaluated",  # ChemProt's unscored groups (evaluated_only)
                 "passages_moved": "passages_moved",  # BioC passages whose offsets count XML escapes (not left out)
                 "false_associations": "false_associations"}  # EU-ADR's FA pairs (no relation; sampled as such)


# reader options that name a file or folder of their own: relative to the mixer config, as `path` is (options that
# name something inside `path`, such as ebmnlp's `annotations` or ChemProt's file names, stay as given)
PATH_OPTIONS = ("docs", "trials", "ground_truth", "entries")


def listed_documents(docs: list[dict], id_file: Path, dataset: str) -> tuple[list[dict], int]:
    """The documents whose ids `id_file` lists (one a line, blank lines ignored), in the reader's order, and how
    many were not listed. A listed id without a document is a DataError: a list for another release or folder."""
    try:
        wanted = {line.strip() for line in read_text(id_file).splitlines() if line.strip()}
    except DataError as e:
        raise DataError(f"dataset {dataset}: document_ids {e}") from e
    if not wanted:
        raise DataError(f"dataset {dataset}: document_ids {id_file}: no ids")
    missing = sorted(wanted - {str(d["id"]) for d in docs})
    if missing:
        raise DataError(f"dataset {dataset}: document_ids {id_file}: {len(missing)} listed ids have no document "
                        f"(first: {', '.join(missing[:5])})")
    kept = [d for d in docs if str(d["id"]) in wanted]
    return kept, len(docs) - len(kept)


def dataset_instances(spec: DatasetSpec, seed: int, style: str, base: Path) -> tuple[list[Instance], dict]:
    """Read one dataset and turn it into Instances; returns also notes (e.g. skipped unlabeled pairs)."""
    if spec.reader not in READERS:
        raise DataError(f"dataset {spec.name}: unknown reader {spec.reader!r}; expected one of {sorted(READERS)}")
    if spec.path.startswith(HUB_PREFIX):  # a Hub id, not a file: downloaded (or read from the cache) by the reader
        if spec.reader != "hf_dataset":
            raise DataError(f"dataset {spec.name}: path {spec.path!r} names a Hub dataset, which only the "
                            f"'hf_dataset' reader reads (this one is {spec.reader!r})")
        path = spec.path
    else:
        path = Path(spec.path)
        if not path.is_absolute():
            path = base / path
        if not path.exists():
            raise FileNotFoundError(f"dataset {spec.name}: {path} does not exist")
    takes = [k for k in inspect.signature(READERS[spec.reader]).parameters if k != "path"]
    unknown = sorted(set(spec.reader_options) - set(takes))
    if unknown:
        raise DataError(f"dataset {spec.name}: reader_options {unknown} are not options of the {spec.reader!r} "
                        f"reader; it takes {takes}")
    options = {k: str(base / v) if k in PATH_OPTIONS and not Path(v).is_absolute() else v
               for k, v in spec.reader_options.items()}
    docs = READERS[spec.reader](path, **options)
    not_listed = 0
    if spec.document_ids is not None:
        id_file = Path(spec.document_ids)
        docs, not_listed = listed_documents(docs, id_file if id_file.is_absolute() else base / id_file, spec.name)
    # a record a reader read but no instance can use carries `left_out`, the note that counts it (BioNLI's tag swaps)
    left_out = collections.Counter(d["left_out"] for d in docs if "left_out" in d)
    docs = [d for d in docs if "left_out" not in d]
    notes: dict[str, Any] = {"documents": len(docs), "task": spec.task, **left_out}
    if not_listed:
        notes["documents_not_listed"] = not_listed
    for doc_key, note_key in READER_COUNTS.items():
        count = sum(d.get(doc_key, 0) for d in docs)
        if count:
            notes[note_key] = count
    t = spec.task
    if t in ("NER",):
        inst = T.ner_instances(docs, spec.name, spec.types, seed, spec.label_map, style=style,
                               scoring_type="PICO" if spec.reader == "pico_tsv" else None)
    elif t in ("ETE", "EAE", "EAC", "EE"):
        inst = T.event_instances(docs, spec.name, seed, spec.label_map, spec.attribute_values)
        without_trigger = sum(ev["trigger"] is None for d in docs for ev in d["events"])
        if without_trigger:
            notes["events_without_trigger"] = without_trigger
        if t != "EE":
            inst = [i for i in inst if i.task == t]
    elif t == "DC":
        empty = sum(not d["text"].strip() for d in docs)  # MTSamples has rows without a transcription
        if empty:
            notes["texts_empty"] = empty
            docs = [d for d in docs if d["text"].strip()]
        labels = spec.labels or sorted({l for d in docs for l in d["labels"]})
        inst = T.dc_instances(docs, spec.name, labels, spec.subject, seed, spec.label_map, style, spec.multi_label)
    elif t == "RE":
        if spec.relation_set:
            inst = T.re_masked_instances(docs, spec.name, spec.relation_set, seed, style)
        else:
            inst, counts = T.re_kb_instances(docs, spec.name, spec.relation_types, seed, spec.label_map,
                                             spec.negative_ratio, style)
            notes.update(counts)
    elif t == "QA":
        inst = T.qa_instances(docs, spec.name, seed, style)
    elif t == "NLI":
        inst, skipped = T.nli_instances(docs, spec.name, seed, style)
        notes["skipped_unlabeled"] = skipped
    elif t == "STS":
        inst = T.sts_instances(docs, spec.name, spec.scale, seed, style)
    elif t == "SUM":
        inst = T.summarization_instances(docs, spec.name, style)
    else:
        raise DataError(f"dataset {spec.name}: unknown task {t!r}")
    return inst, notes


def _take(items: list, n: int, rng: random.Random) -> list:
    """n items: a seeded sample without replacement, repeating the whole list when n exceeds it."""
    if n <= 0 or not items:
        return []
    out = []
    while len(out) + len(items) <= n:
        out += items
    rest = list(items)
    rng.shuffle(rest)
    return out + rest[: n - len(out)]


def apportion(sizes: dict[str, dict[str, int]], total: int) -> dict[str, int]:
    """Instances per dataset for `total`: equal quotas per group ({group: {dataset: size}}), each split in proportion
    to the datasets' sizes, rounded by largest remainders so that the shares add up to the total (rounding each share
    alone misses it by up to one per dataset: four datasets of one size and a quota of 10 give 4 x round(2.5) = 8);
    ties go to the dataset listed first. A group with no instances leaves its quota unused."""
    quota = total / len(sizes)
    exact = {n: quota * size / sum(group.values()) if sum(group.values()) else 0.0
             for group in sizes.values() for n, size in group.items()}
    shares = {n: math.floor(x) for n, x in exact.items()}
    for n in sorted(exact, key=lambda n: shares[n] - exact[n])[:int(round(sum(exact.values()))) - sum(shares.values())]:
        shares[n] += 1
    return shares


def check_mix(cfg: MixConfig, where: str) -> None:
    """Settings no corpus needs to be read to refuse, named by field before any reading: a repeated dataset name
    (its instances would share ids and its statistics would be summed), a negative fraction or total (they gave an
    empty mix without a word), a shard size of 0, an unknown task, style or balance."""
    problems = []
    if cfg.style not in ("mnlu", "medtuned"):
        problems.append(f"style {cfg.style!r}: expected mnlu or medtuned")
    if cfg.balance not in ("none", "task"):
        problems.append(f"balance {cfg.balance!r}: expected none or task")
    if cfg.total_instances is not None and cfg.total_instances < 1:
        problems.append(f"total_instances {cfg.total_instances}: expected at least 1 (or leave it out)")
    if cfg.shard_size < 1:
        problems.append(f"shard_size {cfg.shard_size}: expected at least 1")
    seen: dict[str, int] = {}
    for k, s in enumerate(cfg.datasets):
        at = f"datasets[{k}] ({s.name})"
        if s.name in seen:
            problems.append(f"{at}: the name of datasets[{seen[s.name]}] again (names key instance ids and stats)")
        seen.setdefault(s.name, k)
        if s.task not in SPEC_TASKS:
            problems.append(f"{at}: task {s.task!r}: expected one of {list(SPEC_TASKS)}")
        for field in ("fraction", "negative_ratio"):
            if getattr(s, field) < 0:
                problems.append(f"{at}: {field} {getattr(s, field)}: expected >= 0")
    if problems:
        raise DataError(f"{where}: " + "; ".join(problems))


def build_mix(cfg: MixConfig, base: Path) -> tuple[list[Instance], dict]:
    specs = [s for s in cfg.datasets
             if (cfg.domains is None or s.domain in cfg.domains)
             and (cfg.tasks is None or _task_family(s.task) in cfg.tasks or s.task in cfg.tasks)]
    if not specs:
        raise DataError("the mix selects no dataset (check tasks/domains filters)")
    per_ds: dict[str, list[Instance]] = {}
    notes = {}
    for s in specs:
        inst, note = dataset_instances(s, cfg.seed, cfg.style, base)
        rng = random.Random(f"{cfg.seed}|{s.name}|fraction")
        per_ds[s.name] = _take(inst, int(round(s.fraction * len(inst))), rng)
        notes[s.name] = {**note, "available": len(inst), "fraction": s.fraction}
    if cfg.total_instances is not None:
        groups: dict[str, list[str]] = collections.defaultdict(list)
        for s in specs:
            groups[_task_family(s.task) if cfg.balance == "task" else "all"].append(s.name)
        sizes = {g: {n: len(per_ds[n]) for n in names} for g, names in groups.items()}
        for n, share in apportion(sizes, cfg.total_instances).items():
            per_ds[n] = _take(per_ds[n], share, random.Random(f"{cfg.seed}|{n}|total"))
    out = [i for s in specs for i in per_ds[s.name]]
    random.Random(cfg.seed).shuffle(out)
    return out, notes


def statistics(instances: list[Instance], notes: dict, truncation: dict | None = None) -> dict:
    stats: dict[str, Any] = {"total": len(instances), "datasets": {}}
    for name, note in notes.items():  # a dataset that gave no instance is listed too (with its reasons)
        stats["datasets"][name] = {"task": note.get("task"), "instances": 0, "labels": collections.Counter()}
    for i in instances:
        d = stats["datasets"].setdefault(i.dataset, {"task": i.task, "instances": 0, "labels": collections.Counter()})
        d["instances"] += 1
        if "labels" in i.gold:
            for l in i.gold["labels"] or ["None"]:
                d["labels"][l.split(") ", 1)[-1][:60]] += 1
        elif "entities" in i.gold:
            for t, spans in i.gold["entities"].items():
                d["labels"][t] += len(spans)
    for name, d in stats["datasets"].items():
        d["labels"] = dict(d["labels"].most_common())
        d.update(notes.get(name, {}))
        if truncation:
            d["truncated"] = truncation.get(name, 0)
    by_task = collections.Counter(i.task for i in instances)
    stats["tasks"] = dict(by_task)
    return stats


# notes of dataset_instances that count what a corpus held but no instance could use
LEFT_OUT = ("skipped_unlabeled", "relations_unresolved", "relations_not_on_entities", "pairs_ambiguous",
            "annotations_skipped", "individual_mentions_dropped", "relations_not_evaluated", "events_without_trigger",
            "events_not_binary", "texts_empty", "documents_not_listed", "tag_swaps_left_out")


def stats_markdown(stats: dict) -> str:
    lines = ["| dataset | task | instances | available | fraction | truncated | left out | top labels |",
             "|---|---|---|---|---|---|---|---|"]
    for name, d in sorted(stats["datasets"].items()):
        top = ", ".join(f"{k} ({v})" for k, v in list(d["labels"].items())[:4])
        left = ", ".join(f"{k.replace('_', ' ')} {d[k]}" for k in LEFT_OUT if d.get(k))
        lines.append(f"| {name} | {d['task']} | {d['instances']} | {d.get('available', '')} | {d.get('fraction', '')} | "
                     f"{d.get('truncated', '')} | {left} | {top} |")
    lines += ["", "| task | instances |", "|---|---|"] + [f"| {t} | {n} |" for t, n in sorted(stats["tasks"].items())]
    return "\n".join(lines) + "\n"


def run_build(config_path: str | Path, out: str | Path, overrides: list[str] | None = None,
              tokenizer: str | None = None, max_seq_length: int = 2048, chat_template: str = "zephyr") -> dict:
    """Read, render and mix the corpora of a mixer config into shards in `out`; with `tokenizer`, count per dataset
    the instances training would truncate at `max_seq_length` with `chat_template` (the trainer's defaults)."""
    cfg = load_config(MixConfig, config_path, overrides)
    base = Path(cfg.base_dir) if cfg.base_dir else Path(config_path).parent
    if cfg.base_config:
        if cfg.datasets:
            raise DataError(f"{config_path}: give either datasets or base_config, not both")
        parent = Path(config_path).parent / cfg.base_config
        inner = load_config(MixConfig, parent)
        cfg.datasets = inner.datasets
        base = Path(inner.base_dir) if inner.base_dir else parent.parent
    check_mix(cfg, str(config_path))
    instances, notes = build_mix(cfg, base)
    if not instances:
        available = ", ".join(f"{n}: {d.get('available', 0)} available" for n, d in notes.items())
        raise DataError(f"{config_path}: the mix gives no instances ({available}); nothing written")
    truncation = None
    if tokenizer:
        from mnlu_jax.data.tokenize import count_truncations
        from mnlu_jax.weights.convert import load_tokenizer

        # as the trainer tokenises: sequences of max_seq_length + 1 tokens give max_seq_length inputs and targets
        truncation = count_truncations(instances, load_tokenizer(tokenizer), max_seq_length + 1, chat_template)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, math.ceil(len(instances) / cfg.shard_size))
    for k in range(n_shards):
        write_jsonl(out / shard_name(k, n_shards), instances[k * cfg.shard_size:(k + 1) * cfg.shard_size])
    written = {shard_name(k, n_shards) for k in range(n_shards)}
    for old in out.glob("train-*-of-*.jsonl"):  # an earlier build's shards: the trainer would read them too
        if old.name not in written:
            old.unlink()
    stats = statistics(instances, notes, truncation)
    write_text_atomic(out / "stats.json", json.dumps(stats, indent=2))
    write_text_atomic(out / "stats.md", stats_markdown(stats))
    save_config(cfg, out / "mix_config.yaml")
    return stats


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-data", help="build MNLU-Instruct JSONL shards from native corpora (mixer config)")
    p.add_argument("--config", required=True, help="mixer YAML, e.g. configs/data/sample.yaml")
    p.add_argument("--out", required=True)
    p.add_argument("--tokenizer", help="count truncations at --max-seq-length with this tokenizer/checkpoint/GGUF")
    p.add_argument("--max-seq-length", type=int, default=2048, help="as the training config's data.max_seq_length")
    p.add_argument("--chat-template", default="zephyr",
                   help="as the training config's data.chat_template: zephyr | tokenizer | a Jinja file")
    p.add_argument("overrides", nargs="*", help="key=value overrides (e.g. style=medtuned total_instances=500)")

    def run(a):
        stats = run_build(a.config, a.out, a.overrides, a.tokenizer, a.max_seq_length, a.chat_template)
        print(stats_markdown(stats))
        print(f"wrote {stats['total']} instances to {a.out}")
        return 0

    p.set_defaults(func=run)
