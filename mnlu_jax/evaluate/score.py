"""Scoring predictions and the Table-5-shaped report (Markdown, CSV, JSON, PNG charts, error files)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from mnlu_jax.config import write_csv_atomic, write_text_atomic
from mnlu_jax.evaluate.metrics import score_records
from mnlu_jax.data.schema import Instance, iter_jsonl
from mnlu_jax.evaluate.sets import BY_NAME, EVAL_SETS, gold_count, read_manifest

# The paper's Table 5 (zero-shot; NER 2-shot for the open models): ChatGPT (1-shot), GPT-4, LLaMA-3.1-8B,
# BioMistral-7B baseline and BioMistral-NLU. None where the paper reports "-".
PAPER_TABLE5 = {
    "BC2GM": (37.5, 54.6, 34.0, 34.1, 61.5), "BC5-chemical": (60.3, 78.2, 46.0, 45.0, 89.9),
    "BC5-disease": (51.8, 63.9, 35.2, 33.7, 67.0), "NCBI-disease": (50.5, 66.0, 49.4, 39.9, 61.8),
    "JNLPBA": (41.3, 45.4, 15.0, 25.6, 64.4), "EBM PICO": (55.6, 33.5, 12.2, 19.6, 55.3),
    "HoC": (51.2, 62.5, 37.6, 47.3, 63.8), "PubMedQA": (76.5, 70.6, 73.4, 72.0, 70.2),
    "BioASQ": (88.6, 85.7, 92.0, 74.9, 86.7), "GAD": (52.4, 51.5, 57.7, 55.0, 58.5),
    "DDI": (51.6, 37.7, 22.2, 10.0, 13.0), "ChemProt": (34.2, 37.6, 40.4, 28.6, 38.1),
    "i2b2-2010": (None, None, 40.6, 30.9, 41.8), "MedNLI": (None, None, 44.8, 49.3, 57.5),
    "BioSSES": (42.8, 89.3, 68.7, 69.1, 80.8),
}
PAPER_AVG = {"BLURB": (53.4, 59.7, 44.9, 42.7, 62.4), "BLUE": (None, None, 41.9, 39.2, 56.5)}
PAPER_SYSTEMS = ("ChatGPT", "GPT-4", "LLaMA-3.1-8B", "BioMistral", "BioMistral-NLU")
BLURB_TYPES = {"NER": ["BC5-chemical", "BC5-disease", "NCBI-disease", "BC2GM", "JNLPBA"], "PICO": ["EBM PICO"],
               "RE": ["ChemProt", "DDI", "GAD"], "STS": ["BioSSES"], "DC": ["HoC"], "QA": ["PubMedQA", "BioASQ"]}


def load_predictions(path: str | Path) -> dict[str, list[dict]]:
    """JSONL file(s) of eval instances with a `prediction`, grouped by dataset."""
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"{path}: no prediction .jsonl files")
    by: dict[str, list[dict]] = defaultdict(list)
    seen: dict[tuple[str, str], str] = {}  # (dataset, id) -> where it was first read
    for f in files:
        for n, r in iter_jsonl(f):
            for k in ("dataset", "type", "options", "gold", "prediction"):
                if k not in r:
                    raise ValueError(f"{f}:{n}: record lacks {k!r} (expected an eval instance plus 'prediction')")
            if not isinstance(r["prediction"], str):  # e.g. a failed request's null: not to be scored as "None"
                raise ValueError(f"{f}:{n}: prediction: expected the model's output text, got "
                                 f"{type(r['prediction']).__name__} {r['prediction']!r}")
            if "id" in r:  # an instance scored twice would count twice
                key = (str(r["dataset"]), str(r["id"]))
                if key in seen:
                    raise ValueError(f"{f}:{n}: {key[0]} instance {key[1]!r} again (first at {seen[key]})")
                seen[key] = f"{f.name}:{n}"
            by[r["dataset"]].append(r)
    return dict(by)


def check_complete(preds: dict[str, list[dict]], sets: dict[str, dict], where: str | Path) -> None:
    """Refuse predictions that cover only part of an eval set the manifest lists: its scores would be a subset's,
    with nothing in the report to say so (a decode that was stopped before it finished the set)."""
    short = [f"{name} {len(recs)} of {sets[name]['instances']}" for name, recs in sorted(preds.items())
             if name in sets and len(recs) != sets[name]["instances"]]
    if short:
        raise ValueError(f"{where}: predictions do not cover their eval sets ({'; '.join(short)} instances, by the "
                         "manifest); finish decoding them (generate and evaluate resume), or score without the "
                         "manifest")


def aggregates(scores: dict[str, float]) -> dict[str, float | None]:
    """BLURB score (mean of six task-type means), BLUE average, and the paper's plain macro averages."""
    out: dict[str, float | None] = {}
    type_means = []
    for names in BLURB_TYPES.values():
        have = [scores[n] for n in names if n in scores]
        if have:
            type_means.append(float(np.mean(have)))
    out["BLURB score"] = float(np.mean(type_means)) if len(type_means) == len(BLURB_TYPES) else None
    blurb = [scores[e.name] for e in EVAL_SETS if "blurb" in e.benchmarks and e.name in scores]
    blue = [scores[e.name] for e in EVAL_SETS if "blue" in e.benchmarks and e.name in scores]
    out["BLURB macro avg (paper)"] = float(np.mean(blurb)) if blurb else None
    out["BLUE macro avg (paper)"] = float(np.mean(blue)) if blue else None
    return out


def score_all(preds: dict[str, list[dict]]) -> dict:
    result = {"datasets": {}, "modes": ["paper", "official"]}
    for name, recs in preds.items():
        result["datasets"][name] = {mode: score_records(recs, mode) for mode in ("paper", "official")}
        result["datasets"][name]["task"] = recs[0].get("task", recs[0]["type"])  # for sets outside Table 5
    for mode in ("paper", "official"):
        result[f"aggregates_{mode}"] = aggregates({n: d[mode]["score"] for n, d in result["datasets"].items()})
    return result


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def table5(results: dict[str, dict], mode: str = "paper") -> list[list[str]]:
    """Rows shaped like the paper's Table 5, one column per system in `results` after the paper's columns."""
    systems = list(results)
    header = ["Task", "Metric", "Dataset", "Num Instances (paper)", "Gold count (ours)", *PAPER_SYSTEMS,
              *[f"{s} ({mode})" for s in systems]]
    rows = [header]
    for es in EVAL_SETS:
        if not any(es.name in r["datasets"] for r in results.values()):
            continue
        mark = "".join(m for b, m in (("blurb", "†"), ("blue", "*")) if b in es.benchmarks)
        gold = next((r["datasets"][es.name].get("gold_count") for r in results.values() if es.name in r["datasets"]), None)
        ours = [_fmt(r["datasets"][es.name][mode]["score"]) if es.name in r["datasets"] else "-" for r in results.values()]
        rows.append([es.task, es.metric, f"{es.name} {mark}", f"{es.paper_count:,}", "-" if gold is None else f"{gold:,}",
                     *[_fmt(x) for x in PAPER_TABLE5[es.name]], *ours])
    # sets of the user's own (another name, another corpus): scored the same way, listed after Table 5's, outside
    # the averages (they used to be in scores.json only)
    others = sorted({n for r in results.values() for n in r["datasets"] if n not in BY_NAME})
    for name in others:
        first = next(r["datasets"][name] for r in results.values() if name in r["datasets"])
        gold = first.get("gold_count")
        rows.append([first.get("task", "-"), f"{mode} mode", f"{name} (not in Table 5)", "-",
                     "-" if gold is None else f"{gold:,}", *["-"] * len(PAPER_SYSTEMS),
                     *[_fmt(r["datasets"][name][mode]["score"]) if name in r["datasets"] else "-"
                       for r in results.values()]])
    for bench, key in (("BLURB", "BLURB macro avg (paper)"), ("BLUE", "BLUE macro avg (paper)")):
        rows.append(["Benchmark", "Macro AVG", bench, "-", "-", *[_fmt(x) for x in PAPER_AVG[bench]],
                     *[_fmt(r[f"aggregates_{mode}"][key]) for r in results.values()]])
    rows.append(["Benchmark", "BLURB score", "BLURB (6 task types)", "-", "-", *["-"] * 5,
                 *[_fmt(r[f"aggregates_{mode}"]["BLURB score"]) for r in results.values()]])
    return rows


def markdown(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out) + "\n"


def plot_bars(results: dict[str, dict], path: Path, mode: str = "paper") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [e.name for e in EVAL_SETS if any(e.name in r["datasets"] for r in results.values())]
    if not names:
        return
    systems = list(results)
    width = 0.8 / (len(systems) + 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4))
    x = np.arange(len(names))
    # a score that does not exist (a set a system was not run on, the paper's "-") draws no bar, not a zero
    paper = [np.nan if PAPER_TABLE5[n][4] is None else PAPER_TABLE5[n][4] for n in names]
    ax.bar(x, paper, width, label="BioMistral-NLU (paper)", color="#bbbbbb")
    for k, s in enumerate(systems):
        vals = [results[s]["datasets"][n][mode]["score"] if n in results[s]["datasets"] else np.nan for n in names]
        ax.bar(x + (k + 1) * width, vals, width, label=s)
    ax.set_xticks(x + width * len(systems) / 2)
    ax.set_xticklabels(names, rotation=40, ha="right")
    ax.set_ylabel(f"score ({mode} mode)")
    ax.set_ylim(0, 100)
    # above the axes: inside, it covered the last sets' bars
    ax.legend(fontsize=8, ncol=len(systems) + 1, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    # one small chart per dataset: the paper's five systems and ours
    charts = path.parent / f"charts_{mode}"
    charts.mkdir(exist_ok=True)
    for n in names:
        labels = [*PAPER_SYSTEMS, *systems]
        vals = [np.nan if v is None else v for v in PAPER_TABLE5[n]] + [
            results[s]["datasets"][n][mode]["score"] if n in results[s]["datasets"] else np.nan for s in systems]
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar(range(len(labels)), vals, color=["#bbbbbb"] * len(PAPER_SYSTEMS) + ["#1f77b4"] * len(systems))
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{n} ({BY_NAME[n].metric}, {mode} mode)")
        ax.set_ylim(0, 100)
        fig.tight_layout()
        fig.savefig(charts / f"{n.replace(' ', '_')}.png", dpi=80)
        plt.close(fig)


def write_report(results: dict[str, dict], out: str | Path) -> dict:
    """scores.json, table5_{paper,official}.{md,csv}, scores_{mode}.png and errors/<system>/<dataset>.jsonl."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    slim = {}
    for system, res in results.items():
        slim[system] = json.loads(json.dumps(res))
        for name, d in slim[system]["datasets"].items():
            for mode in ("paper", "official"):
                errs = d[mode].pop("errors", [])
                if mode == "paper" and errs:
                    edir = out / "errors" / system
                    edir.mkdir(parents=True, exist_ok=True)
                    with open(edir / f"{name.replace(' ', '_')}.jsonl", "w") as f:
                        for e in errs:
                            f.write(json.dumps(e) + "\n")
    for mode in ("paper", "official"):
        rows = table5(results, mode)
        write_text_atomic(out / f"table5_{mode}.md", markdown(rows))
        write_csv_atomic(out / f"table5_{mode}.csv", rows)
        plot_bars(results, out / f"scores_{mode}.png", mode)
    # last and whole: the pipeline takes a scores.json as a finished evaluation
    write_text_atomic(out / "scores.json", json.dumps(slim, indent=2))
    return slim


def run_score(predictions: dict[str, str | Path], out: str | Path, manifest: str | Path | None = None) -> dict:
    """`predictions`: system name -> prediction file or directory. With `manifest` (build-eval's manifest.json) the
    gold counts sit beside the paper's, and every set it lists that a system has predictions for must be covered
    whole (`check_complete`)."""
    results = {}
    sets = {}
    if manifest is not None:
        sets = read_manifest(manifest)
    counts = {k: v["gold_count"] for k, v in sets.items()}
    for system, path in predictions.items():
        preds = load_predictions(path)
        check_complete(preds, sets, path)
        res = score_all(preds)
        for name, d in res["datasets"].items():
            if name in counts:
                d["gold_count"] = counts[name]
            elif name in BY_NAME:
                d["gold_count"] = gold_count(BY_NAME[name], [Instance.from_dict(r) for r in preds[name]])
        results[system] = res
    write_report(results, out)
    return results
