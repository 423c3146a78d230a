"""Wall time and peak RSS of our GGUF export against llama.cpp's own converter, and whether the files agree.

Creates a Llama-shaped bf16 HF checkpoint with random weights and SmolLM2's tokenizer (a byte-level BPE whose
split rule llama.cpp knows), converts it to our Orbax checkpoint (not timed), then runs, each in its own process:
  ours (HF):        mnlu-jax convert flax-to-gguf HF_DIR       --gguf-type f16 | q8_0
  ours (Orbax):     mnlu-jax convert flax-to-gguf OUR_CKPT     --gguf-type f16 | q8_0
  llama.cpp:        python convert_hf_to_gguf.py HF_DIR --outtype f16 | q8_0   (with --llama-cpp DIR)
and compares every tensor's bytes between the files of the same type (names, types, shapes and data).
llama.cpp's converter is not on PyPI: point --llama-cpp at a llama.cpp source tree (the one vendored in the
llama-cpp-python sdist works: `pip download --no-deps --no-binary :all: llama-cpp-python`; it needs torch).

    python benchmarks/gguf_export.py [--preset 1b] [--llama-cpp DIR] [--types f16 q8_0] [--sources hf orbax]
    python benchmarks/gguf_export.py --preset 7b --sources hf --types q8_0 --llama-cpp DIR   # the 7B row
(`--sources orbax` first converts the checkpoint with hf-to-flax, not timed.)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import measured, write_result  # noqa: E402
from benchmarks.merge import make_checkpoint  # noqa: E402

PRESETS = {
    "1b": dict(vocab_size=49152, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
               num_attention_heads=16, num_key_value_heads=8),
    "7b": dict(vocab_size=49152, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8),
}


def compare(a: Path, b: Path) -> dict:
    """Tensors of two GGUF files by name: how many, and how many have the same type, shape and bytes."""
    import gguf
    import numpy as np

    ta = {t.name: t for t in gguf.GGUFReader(str(a)).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(str(b)).tensors}
    same = [n for n in ta if n in tb and ta[n].tensor_type == tb[n].tensor_type
            and list(ta[n].shape) == list(tb[n].shape)
            and np.asarray(ta[n].data).tobytes() == np.asarray(tb[n].data).tobytes()]
    return {"tensors": len(ta), "tensors_other": len(tb), "identical": len(same),
            "differing": sorted(set(ta) - set(same))[:10], "only_other": sorted(set(tb) - set(ta))[:10]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="1b", choices=list(PRESETS))
    ap.add_argument("--llama-cpp", type=Path, default=None, help="a llama.cpp source tree (convert_hf_to_gguf.py)")
    ap.add_argument("--types", nargs="+", default=["f16", "q8_0"])
    ap.add_argument("--sources", nargs="+", default=["hf", "orbax"], choices=["hf", "orbax"],
                    help="what ours exports from: the HF directory and/or our Orbax checkpoint of it")
    ap.add_argument("--workdir", default="/tmp/mnlu_gguf_bench")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints and files")
    a = ap.parse_args()
    from mnlu_jax.model.config import ModelConfig
    from mnlu_jax.weights.convert import hf_to_flax, smollm2_path
    from mnlu_jax.weights.gguf_io import gguf_tokenizer

    work = Path(a.workdir) / a.preset
    config = ModelConfig(**PRESETS[a.preset], model_type="llama", tie_word_embeddings=False,
                         torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2)
    t = time.perf_counter()
    hf = make_checkpoint(config, work / "hf")
    gguf_tokenizer(smollm2_path()).save_pretrained(str(hf))
    ours_ckpt = work / "ours"
    if "orbax" in a.sources and not ours_ckpt.exists():
        hf_to_flax(hf, ours_ckpt, progress=False)
    res: dict = {"preset": a.preset, "params": config.num_params(), "dtype": "bfloat16",
                 "checkpoint_gib": config.num_params() * 2 / 2**30, "create_seconds": time.perf_counter() - t,
                 "runs": {}}
    cli = [sys.executable, "-m", "mnlu_jax", "convert", "flax-to-gguf"]
    sources = {"hf": hf, "orbax": ours_ckpt}
    for kind in a.types:
        runs = {f"ours_{name}_{kind}": cli + [str(sources[name]), str(work / f"ours_{name}_{kind}.gguf"),
                                              "--gguf-type", kind] for name in a.sources}
        if a.llama_cpp is not None:
            runs[f"llama_cpp_{kind}"] = [sys.executable, str(a.llama_cpp / "convert_hf_to_gguf.py"), str(hf),
                                         "--outfile", str(work / f"llama_cpp_{kind}.gguf"), "--outtype", kind]
        for name, cmd in runs.items():
            seconds, rss, _ = measured(cmd)
            res["runs"][name] = {"seconds": seconds, "peak_rss_gib": rss,
                                 "file_gib": (work / f"{name}.gguf").stat().st_size / 2**30}
            print(name, res["runs"][name], flush=True)
        if {"hf", "orbax"} <= set(a.sources):
            res[f"ours_orbax_vs_ours_hf_{kind}"] = compare(work / f"ours_orbax_{kind}.gguf",
                                                           work / f"ours_hf_{kind}.gguf")
        if a.llama_cpp is not None and "hf" in a.sources:
            res[f"ours_hf_vs_llama_cpp_{kind}"] = compare(work / f"ours_hf_{kind}.gguf",
                                                          work / f"llama_cpp_{kind}.gguf")
            r = res["runs"]
            for m in ("seconds", "peak_rss_gib"):
                res[f"{m}_ratio_ours_over_llama_cpp_{kind}"] = r[f"ours_hf_{kind}"][m] / r[f"llama_cpp_{kind}"][m]
        for name in runs:  # (a 7B's files do not all fit on a small disk at once)
            if not a.keep:
                (work / f"{name}.gguf").unlink()
    if a.llama_cpp is not None:
        rev = subprocess.run(["git", "-C", str(a.llama_cpp), "rev-parse", "HEAD"], capture_output=True, text=True)
        res["llama_cpp_source"] = str(a.llama_cpp) + (f" @ {rev.stdout.strip()}" if rev.returncode == 0 else "")
    write_result(f"gguf_export_{a.preset}", res)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
