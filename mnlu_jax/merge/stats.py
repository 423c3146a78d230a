"""Merge statistics: what the deltas of fine-tunes look like before you merge them.

Per tensor: ‖δ_i‖₂ and ‖δ_i‖₂/‖θ_b‖₂ per model, the fraction of exactly-zero delta entries, the cosine
similarity between every pair of deltas, and the sign-conflict rate (share of entries where non-zero
deltas disagree in sign: what TIES' sign election resolves). Written as CSV, JSON and a PNG per layer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mnlu_jax.config import write_csv_atomic, write_text_atomic


def tensor_stats(base: np.ndarray, models: list[np.ndarray]) -> dict:
    b = np.asarray(base, np.float32).ravel()
    deltas = [np.asarray(m, np.float32).ravel() - b for m in models]
    bn = float(np.linalg.norm(b)) or 1.0
    row: dict = {}
    for i, d in enumerate(deltas):
        n = float(np.linalg.norm(d))
        row[f"delta_norm_{i}"] = n
        row[f"relative_delta_{i}"] = n / bn
        row[f"zero_fraction_{i}"] = float(np.mean(d == 0))
    for i in range(len(deltas)):
        for j in range(i + 1, len(deltas)):
            a, c = deltas[i], deltas[j]
            den = float(np.linalg.norm(a) * np.linalg.norm(c))
            row[f"cosine_{i}_{j}"] = float(a @ c) / den if den else 0.0
            both = (a != 0) & (c != 0)
            row[f"sign_conflict_{i}_{j}"] = float(np.mean(np.sign(a[both]) != np.sign(c[both]))) if both.any() else 0.0
    return row


def merge_stats(base: str | Path, models: list[str | Path], out: str | Path, plot: bool = True) -> list[dict]:
    from mnlu_jax.merge.streaming import check_compatible
    from mnlu_jax.weights.convert import source_name
    from mnlu_jax.weights.named_tensors import NamedTensors, ordered

    b = NamedTensors(base)
    ms = [NamedTensors(m) for m in models]
    # a fine-tune that added tokens has more vocabulary rows: its embedding and head are compared on the rows all
    # share (the vocabulary's first rows are the same tokens), and the record says how many
    shared = check_compatible(b, ms, "truncate")
    rows = []
    for name in tqdm(ordered(b.names(), b.config), desc="merge-stats", unit="tensor"):
        n = shared.get(name)
        row = {"tensor": name, **tensor_stats(b.get(name)[:n], [m.get(name)[:n] for m in ms])}
        rows.append(row)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header = list(rows[0])
    write_csv_atomic(out / "merge_stats.csv", [header, *([r[k] for k in header] for r in rows)])
    write_text_atomic(out / "merge_stats.json", json.dumps(rows, indent=1))
    # which model each column's index is (the columns stay indexed: names can be long and repeat)
    write_text_atomic(out / "merge_stats_models.json", json.dumps(
        {"base": source_name(base), "models": {str(i): source_name(m) for i, m in enumerate(models)},
         **({"vocabulary_rows_compared": shared} if shared else {})}, indent=1))
    if plot:
        _plot(rows, short_names(models), out / "merge_stats.png")
    return rows


def short_names(paths: list[str | Path]) -> list[str]:
    """Legend labels: `i: parent/name` (a trainer's `final` or a hub snapshot needs its parent to be told apart)."""
    return [f"{i}: {Path(p).parent.name}/{Path(p).name}" if Path(p).parent.name else f"{i}: {Path(p).name}"
            for i, p in enumerate(paths)]


def _plot(rows: list[dict], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mnlu_jax.weights.names import layer_index

    layers: dict[int, list[dict]] = {}
    for r in rows:
        index = layer_index(r["tensor"])
        if index is not None:
            layers.setdefault(index, []).append(r)
    xs = sorted(layers)
    n_models = len(names)
    panels = 2 if n_models > 1 else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    for i in range(n_models):
        axes[0][0].plot(xs, [np.mean([r[f"relative_delta_{i}"] for r in layers[x]]) for x in xs], marker="o",
                        label=names[i])
    axes[0][0].set(xlabel="layer", ylabel="mean ‖δ‖/‖θ_base‖", title="relative delta per layer")
    axes[0][0].legend()
    if n_models > 1:
        axes[0][1].plot(xs, [np.mean([r["cosine_0_1"] for r in layers[x]]) for x in xs], marker="o", label="cosine")
        axes[0][1].plot(xs, [np.mean([r["sign_conflict_0_1"] for r in layers[x]]) for x in xs], marker="s",
                        label="sign conflict")
        axes[0][1].set(xlabel="layer", title=f"{names[0]} vs {names[1]}")
        axes[0][1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
