"""Wall time and peak RSS of checkpoint conversion (HF -> our Orbax checkpoint -> HF) against transformers.

Creates a Mistral-shaped bf16 HF checkpoint with random weights (the merge benchmark's shapes), then runs, each
in its own process:
  ours hf-to-flax:     mnlu-jax convert hf-to-flax HF_DIR OURS
  ours flax-to-hf:     mnlu-jax convert flax-to-hf OURS BACK         (BACK is checked tensor by tensor against HF_DIR)
  transformers:        AutoModelForCausalLM.from_pretrained(HF_DIR, torch_dtype=bfloat16).save_pretrained(OUT)
                       (reading the same checkpoint and writing one: what a transformers user runs to re-save it)
`--baseline DIR` also runs both of our commands from another checkout of this repository (e.g. an earlier commit:
`git worktree add /tmp/old REV`), for a before/after on the same machine and files.

    python benchmarks/convert.py [--preset 1b] [--baseline /tmp/old] [--no-reference]
    python benchmarks/convert.py --preset 7b --repeats 1 --no-reference    # the 7B row (13.5 GiB, three copies)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import write_result  # noqa: E402
from benchmarks.merge import PRESETS, make_checkpoint, measured  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRANSFORMERS_RESAVE = """
import sys, torch, transformers
m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.bfloat16)
m.save_pretrained(sys.argv[2])
"""


def cli(checkout: Path, *args: str) -> list[str]:
    """Our console script, run from `checkout`'s source (not whichever copy is installed)."""
    boot = f"import sys; sys.path.insert(0, {str(checkout)!r}); from mnlu_jax.cli import main; sys.exit(main())"
    return [sys.executable, "-c", boot, *args]


def best_of(repeats: int, cmd: list[str], clear: Path) -> dict:
    """The shortest wall time and the largest peak RSS of `repeats` runs of `cmd` (removing `clear`, its output,
    before each): the page cache and the machine's other work make single wall times vary by 2x here."""
    runs = []
    for _ in range(repeats):
        shutil.rmtree(clear, ignore_errors=True)
        runs.append(measured(cmd))
    return {"seconds": min(t for t, _ in runs), "peak_rss_gib": max(m for _, m in runs),
            "all_seconds": [t for t, _ in runs]}


def same_tensors(a: Path, b: Path) -> dict:
    """How many of `a`'s safetensors tensors `b` has with the same dtype, shape and bytes."""
    import numpy as np

    from mnlu_jax.weights.safetensors_io import SafetensorsCheckpoint

    x, y = SafetensorsCheckpoint(a), SafetensorsCheckpoint(b)
    same = [n for n in x.names() if n in y.names() and x.dtype(n) == y.dtype(n) and x.shape(n) == y.shape(n)
            and np.array_equal(np.asarray(x.get(n)).view(np.uint8), np.asarray(y.get(n)).view(np.uint8))]
    return {"tensors": len(x.names()), "identical": len(same)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="1b", choices=list(PRESETS))
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout of mnlu-jax to time as well")
    ap.add_argument("--no-reference", action="store_true", help="skip transformers (needs torch)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each command (best time, largest memory)")
    ap.add_argument("--workdir", default="/tmp/mnlu_convert_bench")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    a = ap.parse_args()
    from mnlu_jax.model.config import ModelConfig

    work = Path(a.workdir) / a.preset
    config = ModelConfig(**PRESETS[a.preset], model_type="mistral", sliding_window=4096, torch_dtype="bfloat16")
    t = time.perf_counter()
    hf = make_checkpoint(config, work / "hf")
    res: dict = {"preset": a.preset, "params": config.num_params(), "dtype": "bfloat16", "repeats": a.repeats,
                 "checkpoint_gib": config.num_params() * 2 / 2**30, "create_seconds": time.perf_counter() - t,
                 "runs": {}}
    checkouts = {"ours": ROOT} | ({"baseline": a.baseline.resolve()} if a.baseline else {})
    for label, checkout in checkouts.items():
        ours, back = work / f"{label}_ckpt", work / f"{label}_back"
        for name, cmd, output in (
                (f"{label}_hf_to_flax", cli(checkout, "convert", "hf-to-flax", str(hf), str(ours)), ours),
                (f"{label}_flax_to_hf", cli(checkout, "convert", "flax-to-hf", str(ours), str(back)), back)):
            res["runs"][name] = best_of(a.repeats, cmd, output)
            print(name, res["runs"][name], flush=True)
        res[f"{label}_round_trip"] = same_tensors(hf, back)
        print(label, "round trip", res[f"{label}_round_trip"], flush=True)
        if not a.keep:
            shutil.rmtree(ours), shutil.rmtree(back)
    if not a.no_reference:
        out = work / "transformers_resave"
        res["runs"]["transformers_load_save"] = best_of(a.repeats, [sys.executable, "-c", TRANSFORMERS_RESAVE,
                                                                   str(hf), str(out)], out)
        print("transformers_load_save", res["runs"]["transformers_load_save"], flush=True)
        shutil.rmtree(out, ignore_errors=True)
        r = res["runs"]
        for m in ("seconds", "peak_rss_gib"):  # one conversion each way against transformers' load + save
            res[f"{m}_ratio_hf_to_flax_over_transformers"] = r["ours_hf_to_flax"][m] / r["transformers_load_save"][m]
            res[f"{m}_ratio_flax_to_hf_over_transformers"] = r["ours_flax_to_hf"][m] / r["transformers_load_save"][m]
    if a.baseline:
        res["baseline_checkout"] = str(a.baseline)
    write_result(f"convert_{a.preset}", res)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
