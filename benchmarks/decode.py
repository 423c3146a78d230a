"""Output tokens/s of our batched greedy decoder vs transformers generate() on SmolLM2-135M-Instruct (CPU).

Same prompts, same number of generated tokens per prompt (EOS disabled on both sides), fp32, torch limited to the
same thread count as the machine's cores, batch sizes 1, 8 and 32, two workloads:

- `synthetic`: as many prompts as the batch size, one NER instruction with a short varying sentence (lengths
  64-72 tokens), one batch on both sides.
- `evalset`: the first prompts of every evaluation set built from the shipped samples (`data/eval_samples`,
  BLURB and BLUE, chat-formatted with SmolLM2's template, 60-250 tokens), in set order. transformers gets them as
  a user would feed them: consecutive left-padded batches of the batch size. Ours takes the whole list.

Ours runs twice per row, with prefix caching (the default) and without, each timed after a warm-up call that
compiles every shape (compilation reported separately). With `--rounds N` transformers and both of ours take turns
N times and each side's median is reported (this VM's speed drifts by tens of percent within minutes).
`identical` counts prompts whose tokens equal transformers' (left-padded batches may flip near-ties on the
transformers side, so it is reported, not asserted).

    python benchmarks/decode.py [--new-tokens 32] [--batches 1,8,32] [--workloads synthetic,evalset] [--per-set 3]
                                [--rounds 3] [--name decode]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from benchmarks.common import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def synthetic_prompts(tok, n):
    drugs = ["aspirin", "metformin", "warfarin", "cisplatin", "insulin", "heparin", "tamoxifen", "ibuprofen"]
    out = []
    for i in range(n):
        d = drugs[i % len(drugs)]
        q = (f"Extract all relevant medical named entities from the medical text below. Focus on identifying following "
             f"entities: Chemical, Disease.\nMedical text: The patient received {d} for {i % 5 + 2} weeks" + " and improved" * (i % 4))
        text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        out.append(tok(text, add_special_tokens=False)["input_ids"])
    return out


def evalset_prompts(tok, per_set: int):
    """The first `per_set` prompts of each evaluation set built from the shipped samples, in set order."""
    from mnlu_jax.decode.generate import encode_records, read_jsonl
    from mnlu_jax.evaluate.sets import build_eval

    with tempfile.TemporaryDirectory() as d:
        manifest = build_eval("all", ROOT / "data" / "eval_samples", d, log=lambda *_: None)
        prompts = []
        for info in manifest["sets"].values():
            path = Path(d) / info["file"]
            prompts += encode_records(read_jsonl(path)[:per_set], tok, None, False, 2048, str(path), "error")[0]
    return prompts


def load_smollm2():
    """(threads, our params, config, tokenizer, transformers model) for SmolLM2-135M-Instruct, torch on every core."""
    import torch
    import transformers

    from mnlu_jax.weights.convert import load_model, load_tokenizer, smollm2_path

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    gguf = smollm2_path()
    params, config, _ = load_model(gguf)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                           torch_dtype=torch.float32)
    hf.eval()
    return threads, params, config, load_tokenizer(gguf), hf


def build_ours(params, config, prompts, bs, new_tokens, prefix_cache):
    """A warmed-up generator (every shape compiled) and the seconds that took."""
    from mnlu_jax.decode.engine import DecodeConfig, Generator

    # stop ids disabled so every row generates exactly new_tokens
    gen = Generator(params, config, DecodeConfig(batch_size=bs, max_new_tokens=new_tokens, prefill_batch=min(bs, 8),
                                                 chunk_steps=16, stop_ids=(-1,), prefix_cache=prefix_cache))
    t = time.perf_counter()
    gen.generate(prompts)  # compiles every shape
    return gen, time.perf_counter() - t


def run_ours(gen, prompts, new_tokens):
    for k in ("prefill_tokens", "head_tokens_reused"):
        gen.stats[k] = 0
    t = time.perf_counter()
    res = gen.generate(prompts)
    seconds = time.perf_counter() - t
    assert all(len(r.tokens) == new_tokens for r in res)
    return [r.tokens for r in res], seconds, dict(gen.stats)


def run_hf(hf, tok, prompts, bs, new_tokens):
    import torch

    tok.padding_side = "left"
    outs, seconds = [], 0.0
    with torch.no_grad():
        warm = tok.pad({"input_ids": prompts[:bs]}, return_tensors="pt")
        hf.generate(**warm, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)
        for s in range(0, len(prompts), bs):
            batch = tok.pad({"input_ids": prompts[s:s + bs]}, return_tensors="pt")
            t = time.perf_counter()
            out = hf.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              pad_token_id=tok.pad_token_id, eos_token_id=None)
            seconds += time.perf_counter() - t
            assert out.shape[1] - batch["input_ids"].shape[1] == new_tokens
            outs += out[:, batch["input_ids"].shape[1]:].tolist()
    return outs, seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--workloads", default="synthetic,evalset")
    ap.add_argument("--per-set", type=int, default=3, help="evalset: prompts taken from each evaluation set")
    ap.add_argument("--rounds", type=int, default=1, help="timed rounds per side, alternating; medians reported")
    ap.add_argument("--name", default="decode", help="results file benchmarks/results/NAME.json")
    args = ap.parse_args()
    threads, params, config, tok, hf = load_smollm2()
    rows = []
    for workload in args.workloads.split(","):
        if workload == "evalset":
            all_prompts = evalset_prompts(tok, args.per_set)
        elif workload != "synthetic":
            raise SystemExit(f"--workloads: unknown workload {workload!r} (expected synthetic, evalset)")
        for bs in [int(x) for x in args.batches.split(",")]:
            prompts = synthetic_prompts(tok, bs) if workload == "synthetic" else all_prompts
            n_tok = len(prompts) * args.new_tokens
            gens = {pc: build_ours(params, config, prompts, bs, args.new_tokens, pc) for pc in (True, False)}
            # rounds alternate between the sides (this VM's speed drifts by tens of percent within minutes);
            # each side's median round is reported
            hf_rounds, ours_rounds = [], {True: [], False: []}
            for _ in range(args.rounds):
                ref, s = run_hf(hf, tok, prompts, bs, args.new_tokens)
                hf_rounds.append(s)
                for pc, (gen, _) in gens.items():
                    ours_rounds[pc].append(run_ours(gen, prompts, args.new_tokens))
            hf_s = statistics.median(hf_rounds)
            row = {"workload": workload, "batch_size": bs, "prompts": len(prompts),
                   "prompt_tokens": sum(len(p) for p in prompts),
                   "prompt_lengths": [min(len(p) for p in prompts), max(len(p) for p in prompts)],
                   "new_tokens_per_prompt": args.new_tokens, "rounds": args.rounds,
                   "hf_tokens_per_s": n_tok / hf_s, "hf_seconds": hf_s, "hf_seconds_rounds": hf_rounds}
            for prefix_cache in (True, False):
                tag = "ours" if prefix_cache else "ours_no_prefix_cache"
                rounds = ours_rounds[prefix_cache]
                toks, _, stats = rounds[0]
                s = statistics.median(r[1] for r in rounds)
                compile_s = gens[prefix_cache][1]
                row.update({f"{tag}_tokens_per_s": n_tok / s, f"{tag}_seconds": s, f"{tag}_compile_s": compile_s,
                            f"{tag}_seconds_rounds": [r[1] for r in rounds],
                            f"{tag}_speedup": hf_s / s, f"{tag}_identical": sum(a == b for a, b in zip(toks, ref)),
                            f"{tag}_prefill_tokens": stats["prefill_tokens"],
                            f"{tag}_head_tokens_reused": stats["head_tokens_reused"]})
            row["speedup"] = row["ours_speedup"]
            print(row, flush=True)
            rows.append(row)
    at32 = {r["workload"]: r["speedup"] for r in rows if r["batch_size"] == 32}
    write_result(args.name, {"model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised, fp32)", "threads": threads,
                            "rows": rows, "target": ">= 3x transformers at batch 32 on a 2-core CPU",
                            "speedup_at_32": at32})


if __name__ == "__main__":
    main()
