"""Wall time and peak RSS of checkpoint conversion (HF -> our Orbax checkpoint -> HF) against transformers.

Creates a Mistral-shaped bf16 HF checkpoint with random weights (the merge benchmark's shapes), then runs, each
in its own process:
  ours hf-to-flax:     mnlu-jax convert hf-to-flax HF_DIR OURS
  ours flax-to-hf:     mnlu-jax convert flax-to-hf OURS BACK         (BACK is checked tensor by tensor against HF_DIR)
  transformers:        AutoModelForCausalLM.from_pretrained(HF_DIR, torch_dtype=bfloat16).save_pretrained(OUT)
                       (reading the same checkpoint and writing one: what a transformers user runs to re-save it)
`--baseline DIR` also runs both of our commands from another checkout of this repository (e.g. an earlier commit:
`git worktree add /tmp/old REV`), for a before/after on the same machine and files.
`--source bin` converts from `pytorch_model.bin` copies of the checkpoint instead (torch's zip format, which is
memory-mapped, and the pre-1.6 legacy format, which is read whole), against transformers loading the same file
(results in convert_<preset>_bin.json).

    python benchmarks/convert.py [--preset 1b] [--baseline /tmp/old] [--no-reference]
    python benchmarks/convert.py --preset 7b --repeats 1 --no-reference    # the 7B row (13.5 GiB, three copies)
    python benchmarks/convert.py --source bin
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import measured, write_result  # noqa: E402
from benchmarks.merge import PRESETS, make_checkpoint  # noqa: E402

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
    return {"seconds": min(r[0] for r in runs), "peak_rss_gib": max(r[1] for r in runs),
            "peak_anon_gib": max(r[2] for r in runs), "all_seconds": [r[0] for r in runs]}


def same_tensors(a: Path, b: Path) -> dict:
    """How many of `a`'s safetensors tensors `b` has with the same dtype, shape and bytes."""
    import numpy as np

    from mnlu_jax.weights.safetensors_io import SafetensorsCheckpoint

    x, y = SafetensorsCheckpoint(a), SafetensorsCheckpoint(b)
    same = [n for n in x.names() if n in y.names() and x.dtype(n) == y.dtype(n) and x.shape(n) == y.shape(n)
            and np.array_equal(np.asarray(x.get(n)).view(np.uint8), np.asarray(y.get(n)).view(np.uint8))]
    return {"tensors": len(x.names()), "identical": len(same)}


def bin_copies(hf: Path, work: Path) -> dict[str, Path]:
    """`hf` re-saved as a single `pytorch_model.bin` (+ config.json) in torch's zip and legacy formats."""
    import torch

    from mnlu_jax.weights.convert import TensorSource

    state = {n: torch.from_numpy(a.view("int16").copy()).view(torch.bfloat16) for n, a in TensorSource(hf).items()}
    dirs = {}
    for fmt in ("zip", "legacy"):
        d = dirs[fmt] = work / f"hf_bin_{fmt}"
        if not (d / "config.json").exists():
            d.mkdir(parents=True, exist_ok=True)
            torch.save(state, d / "pytorch_model.bin", _use_new_zipfile_serialization=fmt == "zip")
            shutil.copy(hf / "config.json", d / "config.json")
    return dirs


def bin_runs(a, hf: Path, work: Path, res: dict) -> None:
    """hf-to-flax from the safetensors original and from each .bin copy, whose output is checked against it."""
    import numpy as np

    from mnlu_jax.weights.named_tensors import NamedTensors

    reference = work / "ours_from_safetensors"
    res["runs"]["ours_hf_to_flax_safetensors"] = best_of(a.repeats, cli(ROOT, "convert", "hf-to-flax", str(hf),
                                                                        str(reference)), reference)
    print("safetensors", res["runs"]["ours_hf_to_flax_safetensors"], flush=True)
    for fmt, src in bin_copies(hf, work).items():
        out = work / f"ours_from_bin_{fmt}"
        res["runs"][f"ours_hf_to_flax_bin_{fmt}"] = best_of(a.repeats, cli(ROOT, "convert", "hf-to-flax", str(src),
                                                                            str(out)), out)
        x, y = NamedTensors(reference), NamedTensors(out)
        same = sum(np.array_equal(np.asarray(x.get(n)).view(np.uint8), np.asarray(y.get(n)).view(np.uint8))
                   for n in x.names())
        res[f"bin_{fmt}_same_as_safetensors"] = {"tensors": len(x.names()), "identical": int(same)}
        print(fmt, res["runs"][f"ours_hf_to_flax_bin_{fmt}"], res[f"bin_{fmt}_same_as_safetensors"], flush=True)
        shutil.rmtree(out)
        if not a.no_reference:
            tf_out = work / "transformers_resave"
            res["runs"][f"transformers_load_save_bin_{fmt}"] = best_of(
                a.repeats, [sys.executable, "-c", TRANSFORMERS_RESAVE, str(src), str(tf_out)], tf_out)
            print("transformers", fmt, res["runs"][f"transformers_load_save_bin_{fmt}"], flush=True)
            shutil.rmtree(tf_out, ignore_errors=True)
    shutil.rmtree(reference)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="1b", choices=list(PRESETS))
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout of mnlu-jax to time as well")
    ap.add_argument("--no-reference", action="store_true", help="skip transformers (needs torch)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each command (best time, largest memory)")
    ap.add_argument("--workdir", default="/tmp/mnlu_convert_bench")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    ap.add_argument("--source", default="safetensors", choices=["safetensors", "bin"],
                    help="bin: hf-to-flax from pytorch_model.bin copies (zip and legacy formats)")
    a = ap.parse_args()
    from mnlu_jax.model.config import ModelConfig

    work = Path(a.workdir) / a.preset
    config = ModelConfig(**PRESETS[a.preset], model_type="mistral", sliding_window=4096, torch_dtype="bfloat16")
    t = time.perf_counter()
    hf = make_checkpoint(config, work / "hf")
    res: dict = {"preset": a.preset, "params": config.num_params(), "dtype": "bfloat16", "repeats": a.repeats,
                 "checkpoint_gib": config.num_params() * 2 / 2**30, "create_seconds": time.perf_counter() - t,
                 "runs": {}}
    if a.source == "bin":
        bin_runs(a, hf, work, res)
        write_result(f"convert_{a.preset}_bin", res)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        return
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
