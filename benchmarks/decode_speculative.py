"""Prompt-lookup speculative decoding (`DecodeConfig.speculate`) against plain greedy decoding, and against
transformers' own prompt lookup (`generate(prompt_lookup_num_tokens=N)`, batch 1 only), on SmolLM2-135M-Instruct.

The workload is real answers, not a fixed count: the first `--per-set` prompts of every evaluation set built
from the shipped samples (chat-formatted), EOS on, up to `--new-tokens` new tokens. Greedy output does not depend
on the method, so every side generates the same tokens (counted, and checked: `identical`). Ours runs plain and
with each draft length in `--drafts`, all with the same chunk length, at each batch size; transformers runs
plain and with prompt lookup at batch 1. Rounds alternate between the sides and medians are reported (this VM's
speed drifts by tens of percent within minutes); compilation is done in a warm-up call and reported apart.

    python benchmarks/decode_speculative.py [--per-set 1] [--new-tokens 64] [--batches 1,8] [--drafts 2,4]
                                            [--rounds 3] [--name decode_speculative]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from benchmarks.common import write_result  # noqa: E402
from benchmarks.decode import evalset_prompts, load_smollm2  # noqa: E402


def run_hf(hf, prompts, new_tokens, eos, lookup: int):
    """transformers greedy, one prompt at a time (its prompt lookup takes batch 1 only): tokens and seconds."""
    import torch

    outs, seconds = [], 0.0
    extra = {"prompt_lookup_num_tokens": lookup} if lookup else {}
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            t = time.perf_counter()
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                              eos_token_id=list(eos), pad_token_id=eos[0], **extra)
            seconds += time.perf_counter() - t
            toks = out[0, len(p):].tolist()
            outs.append(toks[:-1] if toks and toks[-1] in eos else toks)
    return outs, seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-set", type=int, default=1, help="prompts taken from each evaluation set")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--drafts", default="2,4", help="draft lengths (DecodeConfig.speculate) to compare")
    ap.add_argument("--chunk-steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--name", default="decode_speculative")
    args = ap.parse_args()
    from mnlu_jax.decode.engine import DecodeConfig, Generator

    threads, params, config, tok, hf = load_smollm2()
    prompts = evalset_prompts(tok, args.per_set)
    eos = tuple(config.eos_ids)
    drafts = [0] + [int(x) for x in args.drafts.split(",")]
    hf_drafts = sorted({0, max(drafts)})
    rows = []
    for bs in [int(x) for x in args.batches.split(",")]:
        gens, compile_s = {}, {}
        for k in drafts:
            gens[k] = Generator(params, config, DecodeConfig(
                batch_size=bs, max_new_tokens=args.new_tokens, prefill_batch=min(bs, 8), chunk_steps=args.chunk_steps,
                stop_ids=eos, speculate=k))
            t = time.perf_counter()
            gens[k].generate(prompts)  # compiles every shape
            compile_s[k] = time.perf_counter() - t
        seconds = {("ours", k): [] for k in drafts}
        if bs == 1:
            seconds.update({("hf", k): [] for k in hf_drafts})
        tokens, kept = {}, {}
        for _ in range(args.rounds):
            for side, k in seconds:
                if side == "hf":
                    tokens[side, k], s = run_hf(hf, prompts, args.new_tokens, eos, k)
                else:
                    gens[k].stats["draft_tokens_kept"] = 0
                    t = time.perf_counter()
                    tokens[side, k] = [r.tokens for r in gens[k].generate(prompts)]
                    s = time.perf_counter() - t
                    kept[k] = gens[k].stats["draft_tokens_kept"]
                seconds[side, k].append(s)
        n_tok = sum(len(t) for t in tokens["ours", 0])
        base = statistics.median(seconds["ours", 0])
        for (side, k), rounds in seconds.items():
            s = statistics.median(rounds)
            row = {"side": "ours" if side == "ours" else "transformers", "batch_size": bs, "speculate": k,
                   "prompts": len(prompts), "generated_tokens": sum(len(t) for t in tokens[side, k]),
                   "tokens_per_s": n_tok / s, "seconds": s, "seconds_rounds": rounds,
                   "speedup_vs_ours_plain": base / s,
                   "identical_to_ours_plain": sum(a == b for a, b in zip(tokens[side, k], tokens["ours", 0]))}
            if side == "ours":
                row.update({"compile_s": compile_s[k], "draft_tokens_kept": kept[k]})
            else:
                row["speedup_vs_transformers_plain"] = statistics.median(seconds["hf", 0]) / s
            print(row, flush=True)
            rows.append(row)
    write_result(args.name, {"model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised, fp32)", "threads": threads,
                             "workload": f"evalset, {args.per_set} prompt(s) per set, EOS on, "
                                         f"<= {args.new_tokens} new tokens", "chunk_steps": args.chunk_steps,
                             "rows": rows})


if __name__ == "__main__":
    main()
