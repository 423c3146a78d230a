"""Build and tokenize throughput (instances/s) of the MNLU-Instruct builder on the shipped samples.

    python benchmarks/data.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from benchmarks.common import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=20, help="build the sample mix this many times (files re-read each time)")
    a = ap.parse_args()
    from mnlu_jax.config import load_config
    from mnlu_jax.data.build import MixConfig, build_mix
    from mnlu_jax.data.tiny_tokenizer import instance_texts, train_tiny_tokenizer
    from mnlu_jax.data.tokenize import tokenize_all

    cfg = load_config(MixConfig, ROOT / "configs/data/sample.yaml")
    inst = []
    t = time.perf_counter()
    for _ in range(a.repeat):
        built, _ = build_mix(cfg, ROOT / "configs/data")
        inst += built
    build_s = time.perf_counter() - t
    tok = train_tiny_tokenizer(instance_texts(inst[:500]), vocab_size=512)
    t = time.perf_counter()
    ex, _ = tokenize_all(inst, tok, "zephyr", 2048)
    tok_s = time.perf_counter() - t
    n_tokens = sum(len(e["inputs"]) for e in ex)
    write_result("data", {"instances": len(inst), "build_instances_per_s": len(inst) / build_s,
                          "tokenize_instances_per_s": len(inst) / tok_s, "tokens_per_s": n_tokens / tok_s,
                          "note": "build = read native files + Table 1 rendering + mixing; tokenize = chat template, "
                                  "prefix check and assistant mask (HF fast tokenizer)"})


if __name__ == "__main__":
    main()
