"""Output tokens/s of our batched greedy decoder vs transformers generate() on SmolLM2-135M-Instruct (CPU).

Same prompts (chat-formatted NLU prompts of mixed lengths), same number of generated tokens per prompt (EOS
disabled on both sides), fp32, torch limited to the same thread count as the machine's cores. Batch sizes 1, 8, 32.
Ours is timed after a warm-up that compiles every shape (compilation is reported separately).

    python benchmarks/decode.py [--new-tokens 32] [--batches 1,8,32]
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


def prompts_for(tok, n):
    drugs = ["aspirin", "metformin", "warfarin", "cisplatin", "insulin", "heparin", "tamoxifen", "ibuprofen"]
    out = []
    for i in range(n):
        d = drugs[i % len(drugs)]
        q = (f"Extract all relevant medical named entities from the medical text below. Focus on identifying following "
             f"entities: Chemical, Disease.\nMedical text: The patient received {d} for {i % 5 + 2} weeks" + " and improved" * (i % 4))
        text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        out.append(tok(text, add_special_tokens=False)["input_ids"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batches", default="1,8,32")
    args = ap.parse_args()
    import numpy as np
    import torch
    import transformers

    from mnlu_jax.decode.engine import DecodeConfig, Generator
    from mnlu_jax.weights.convert import smollm2_path
    from mnlu_jax.weights.convert import load_model, load_tokenizer

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    gguf = smollm2_path()
    params, config, _ = load_model(gguf)
    tok = load_tokenizer(gguf)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32)
    hf.eval()
    rows = []
    for bs in [int(x) for x in args.batches.split(",")]:
        prompts = prompts_for(tok, bs)
        n_tok = bs * args.new_tokens
        # ours: stop ids disabled so every row generates exactly new_tokens
        gen = Generator(params, config, DecodeConfig(batch_size=bs, max_new_tokens=args.new_tokens,
                                                     prefill_batch=min(bs, 8), chunk_steps=16, stop_ids=(-1,)))
        t = time.perf_counter()
        gen.generate(prompts)  # compiles
        compile_s = time.perf_counter() - t
        t = time.perf_counter()
        res = gen.generate(prompts)
        ours_s = time.perf_counter() - t
        assert all(len(r.tokens) == args.new_tokens for r in res)
        # transformers: left-padded batch, greedy, exactly new_tokens
        tok.padding_side = "left"
        batch = tok.pad({"input_ids": prompts}, return_tensors="pt")
        with torch.no_grad():
            hf.generate(**batch, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)  # warm-up
            t = time.perf_counter()
            out = hf.generate(**batch, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                              pad_token_id=tok.pad_token_id, eos_token_id=None)
            hf_s = time.perf_counter() - t
        assert out.shape[1] - batch["input_ids"].shape[1] == args.new_tokens
        row = {"batch_size": bs, "new_tokens_per_prompt": args.new_tokens, "ours_tokens_per_s": n_tok / ours_s,
               "hf_tokens_per_s": n_tok / hf_s, "speedup": hf_s / ours_s, "ours_compile_s": compile_s,
               "ours_seconds": ours_s, "hf_seconds": hf_s}
        print(row, flush=True)
        rows.append(row)
    write_result("decode", {"model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised, fp32)", "threads": threads,
                            "rows": rows, "target": ">= 3x transformers at batch 32 on a 2-core CPU",
                            "speedup_at_32": next((r["speedup"] for r in rows if r["batch_size"] == 32), None)})


if __name__ == "__main__":
    main()
