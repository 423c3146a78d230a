"""`mnlu-jax` console script: one subcommand per stage, each a thin call into the stage's module.

    convert hf-to-flax | flax-to-hf     weights/convert.py
    convert flax-to-gguf                weights/gguf_export.py
    build-data                          data/build.py
    build-eval                          evaluate/build.py
    train                               train/loop.py
    merge, merge-multi, merge-stats     merge/streaming.py, merge/multi.py, merge/stats.py
    merge-sweep                         merge/sweep.py
    extract-lora                        merge/extract_lora.py
    generate                            decode/generate.py
    score, evaluate                     evaluate/score.py
    pipeline                            pipeline.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _size(text: str) -> int:
    units = {"k": 10**3, "m": 10**6, "g": 10**9, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10,
             "mib": 2**20, "gib": 2**30}
    t = text.strip().lower()
    try:
        for u in sorted(units, key=len, reverse=True):
            if t.endswith(u):
                return int(float(t[: -len(u)]) * units[u])
        return int(t)
    except ValueError:
        raise ValueError(f"--shard-size {text!r}: expected a size such as 2GB, 500MB or 1GiB") from None


def cmd_convert(a: argparse.Namespace) -> int:
    from mnlu_jax.weights.convert import flax_to_hf, hf_to_flax

    if a.direction == "hf-to-flax":
        out = hf_to_flax(a.src, a.out, dtype=a.dtype)
    elif a.direction == "flax-to-gguf":
        from mnlu_jax.weights.gguf_export import export_gguf

        out = export_gguf(a.src, a.out, tensor_type=a.gguf_type, tokenizer_pre=a.tokenizer_pre)
    else:
        out = flax_to_hf(a.src, a.out, dtype=a.dtype, max_shard_bytes=_size(a.shard_size))
    print(f"wrote {out}")
    return 0


def cmd_merge(a: argparse.Namespace) -> int:
    from mnlu_jax.merge.config import MergeConfig, run_merge, translate_merge_config
    from mnlu_jax.config import load_config

    overrides = list(a.overrides)
    for key in ("base", "out", "method", "drop_rate", "rescale", "rescale_norm", "normalize", "apply", "lam", "seed",
                "exclude", "dtype", "vocab_policy", "epsilon", "gamma", "t", "filter_wise"):
        v = getattr(a, key)
        if v is not None:
            overrides.append(f"{key}={json.dumps(v) if not isinstance(v, str) else v}")
    if a.models:
        overrides.append(f"models={json.dumps(a.models)}")
    if a.weights:
        overrides.append(f"weights={json.dumps(a.weights)}")
    if a.config is not None:
        from mnlu_jax.merge.multi import count_documents

        n = count_documents(a.config)
        if n > 1:
            raise ValueError(f"{a.config}: {n} YAML documents; a file of merges that build on merges runs with "
                             f"`mnlu-jax merge-multi {a.config} --intermediate-dir DIR [--out OUT]`")
    cfg = load_config(MergeConfig, a.config, overrides, translate=translate_merge_config)
    out = run_merge(cfg)
    print(f"wrote {out}")
    return 0


def cmd_merge_multi(a: argparse.Namespace) -> int:
    from mnlu_jax.merge.multi import read_stages, run_stages

    written = run_stages(read_stages(a.config, a.intermediate_dir, a.out), lazy=a.lazy, seed=a.seed)
    print(f"{len(written)} merges; the last: {written[-1]}")
    return 0


def cmd_merge_sweep(a: argparse.Namespace) -> int:
    from mnlu_jax.config import load_config
    from mnlu_jax.merge.sweep import SweepConfig, describe_plan, run_sweep

    cfg = load_config(SweepConfig, a.config, a.overrides)
    if a.dry_run:
        print(describe_plan(cfg))
        return 0
    run_sweep(cfg)
    print((Path(cfg.output_dir) / "results.md").read_text())
    print(f"results: {Path(cfg.output_dir) / 'results.md'}, plot: {Path(cfg.output_dir) / 'sweep.png'}")
    return 0


def cmd_extract_lora(a: argparse.Namespace) -> int:
    from mnlu_jax.merge.extract_lora import extract_lora

    out = extract_lora(a.model, a.base, a.out, max_rank=a.max_rank, distribute_scale=a.distribute_scale,
                       embed_lora=a.embed_lora, save_modules=tuple(a.save_module), include=tuple(a.include),
                       exclude=tuple(a.exclude), sv_epsilon=a.sv_epsilon, skip_undecomposable=a.skip_undecomposable,
                       svd=a.svd, seed=a.seed)
    print(f"wrote {out}")
    return 0


def cmd_merge_stats(a: argparse.Namespace) -> int:
    from mnlu_jax.merge.stats import merge_stats

    rows = merge_stats(a.base, a.models, a.out)
    print(f"{len(rows)} tensors; table and plot in {a.out}")
    return 0


def cmd_generate(a: argparse.Namespace) -> int:
    from mnlu_jax.decode.engine import DecodeConfig, parse_buckets
    from mnlu_jax.decode.generate import run_generate

    dc = DecodeConfig(batch_size=a.batch_size, max_new_tokens=a.max_new_tokens, buckets=parse_buckets(a.buckets),
                      prefill_batch=min(a.prefill_batch, a.batch_size), chunk_steps=a.chunk_steps,
                      layer_loop=a.layer_loop, prefix_cache=not a.no_prefix_cache, speculate=a.speculate,
                      prompt_overflow=a.prompt_overflow)
    stats = run_generate(a.model, a.input, a.out, dc, chat_template=a.chat_template, dtype=a.dtype,
                         drop_system=a.drop_system)
    print(json.dumps({k: v for k, v in stats.items() if k != "compiled"}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mnlu_jax import __version__

    p = argparse.ArgumentParser(prog="mnlu-jax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"mnlu-jax {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert checkpoints between HF (safetensors/.bin/GGUF) and ours (Orbax); "
                                       "export a GGUF file")
    c.add_argument("direction", choices=["hf-to-flax", "flax-to-hf", "flax-to-gguf"])
    c.add_argument("src", help="HF model directory or .gguf file (hf-to-flax); our checkpoint (flax-to-hf, "
                               "flax-to-gguf, which also takes an HF directory or a GGUF file)")
    c.add_argument("out", help="output directory (must not exist or be empty); a .gguf file for flax-to-gguf")
    c.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="cast parameters (default: keep the source dtype; GGUF dequantises to float32)")
    c.add_argument("--shard-size", default="5GB", help="flax-to-hf: max safetensors shard size (e.g. 2GB, 500MB)")
    c.add_argument("--gguf-type", dest="gguf_type", default="f16", choices=["f32", "f16", "bf16", "q8_0"],
                   help="flax-to-gguf: type of the matrices (1-D tensors stay f32)")
    c.add_argument("--tokenizer-pre", dest="tokenizer_pre", default=None,
                   help="flax-to-gguf: llama.cpp's name of the pre-tokenizer (tokenizer.ggml.pre) when it is not "
                        "recognised from tokenizer.json (e.g. smollm, llama-bpe, qwen2)")
    c.set_defaults(func=cmd_convert)

    m = sub.add_parser("merge", help="merge fine-tunes into a base (DARE, TIES, DELLA, Breadcrumbs, SLERP, NuSLERP, "
                                     "Multi-SLERP, Model Stock, SCE, Karcher, NearSwap, Arcee Fusion, RAM, linear, "
                                     "task arithmetic), whole or slice by slice, or stack layer slices "
                                     "(passthrough); also runs mergekit configs")
    m.add_argument("--config", default=None, help="YAML MergeConfig (e.g. configs/merge/biomistral_nlu_dare.yaml) "
                                                   "or a mergekit config (merge_method, base_model, models: ...)")
    m.add_argument("--base")
    m.add_argument("--models", nargs="+")
    m.add_argument("--weights", nargs="+", type=float)
    m.add_argument("--method", help="linear, task_arithmetic, dare (default), dare_linear, ties, dare_ties, della, "
                                    "della_linear, breadcrumbs, breadcrumbs_ties, slerp, nuslerp, multislerp, "
                                    "model_stock, sce, karcher, nearswap, arcee_fusion, ram, ramplus_tl (their own "
                                    "settings as key=value: multislerp_base=false, ram_epsilon=1e-5, ...) or "
                                    "passthrough ('slices=[{model: A, layer_range: [0, 12]}, ...]': layers stacked); "
                                    "any of them slice by slice with 'slices=[{sources: [{model: A, layer_range: "
                                    "[0, 8]}, {model: B, layer_range: [0, 8]}], t: 0.3}, ...]'")
    m.add_argument("--drop-rate", dest="drop_rate", type=float)
    m.add_argument("--rescale", dest="rescale", action="store_true", default=None)
    m.add_argument("--no-rescale", dest="rescale", action="store_false",
                   help="(default: rescale for DARE and DELLA methods, not for the others)")
    m.add_argument("--rescale-norm", dest="rescale_norm", choices=["l1", "l2", "linf"],
                   help="rescale what is kept to the delta's norm, as mergekit (default: 1/keep-probability per entry)")
    m.add_argument("--normalize", dest="normalize", action="store_true", default=None,
                   help="divide by the summed weights (default: on for linear, ties, della)")
    m.add_argument("--no-normalize", dest="normalize", action="store_false")
    m.add_argument("--apply", choices=["average", "task_arithmetic"])
    m.add_argument("--lambda", dest="lam", type=float)
    m.add_argument("--epsilon", type=float)
    m.add_argument("--gamma", type=float, help="breadcrumbs: fraction of the largest |delta| dropped")
    m.add_argument("--t", type=float, help="slerp: 0 the base, 1 the model (default 0.5); nearswap (required): the "
                                          "distance within which an entry takes the model's value")
    m.add_argument("--filter-wise", dest="filter_wise", action="store_true", default=None,
                   help="model_stock: one angle per row")
    m.add_argument("--seed", type=int)
    m.add_argument("--exclude", help="regex of tensor names that keep the base value")
    m.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    m.add_argument("--vocab-policy", dest="vocab_policy", choices=["error", "pad_mean", "truncate"])
    m.add_argument("--out")
    m.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    m.set_defaults(func=cmd_merge)

    mm = sub.add_parser("merge-multi", help="merges that build on merges, as mergekit-multi: one YAML file of "
                                            "mergekit configs, each named (`name:`) but the final one, a name "
                                            "standing for that merge's output where a model is referenced")
    mm.add_argument("config", help="the YAML file, its documents separated by ---")
    mm.add_argument("--intermediate-dir", "-I", required=True, help="where each named merge is written (DIR/NAME)")
    mm.add_argument("--out", help="where the unnamed (final) merge is written")
    mm.add_argument("--no-lazy", dest="lazy", action="store_false",
                    help="merge again what is already merged (by default a finished merge of the same config is "
                         "kept, and one of another config refused)")
    mm.add_argument("--seed", type=int, help="the DARE/DELLA masks' seed for every merge")
    mm.set_defaults(func=cmd_merge_multi)

    w = sub.add_parser("merge-sweep", help="merge every combination of a grid of merge settings (or the points a "
                                           "CMA-ES or random search proposes), evaluate each on the eval sets, and "
                                           "tabulate and plot the scores")
    w.add_argument("--config", required=True, help="a sweep YAML (configs/merge/sweep_demo.yaml)")
    w.add_argument("overrides", nargs="*", help="key=value overrides (e.g. output_dir=runs/x keep_merges=true)")
    w.add_argument("--dry-run", action="store_true", help="check everything, list the points and what each needs, "
                                                          "merge nothing")
    w.set_defaults(func=cmd_merge_sweep)

    x = sub.add_parser("extract-lora", help="a PEFT LoRA adapter from a fine-tune and its base (each linear "
                                             "layer's difference cut to its top singular directions), as "
                                             "mergekit-extract-lora")
    x.add_argument("--model", required=True, help="the fine-tune")
    x.add_argument("--base", required=True, help="its base model")
    x.add_argument("--out", required=True)
    x.add_argument("--max-rank", type=int, default=128)
    x.add_argument("--no-distribute-scale", dest="distribute_scale", action="store_false",
                   help="A = S V^T, B = U (default: the singular values' square roots in both)")
    x.add_argument("--embed-lora", action="store_true", help="a LoRA of the embeddings and LM head too (default: "
                                                             "saved whole)")
    x.add_argument("--save-module", action="append", default=[], metavar="NAME", help="a module saved whole")
    x.add_argument("--include", "-i", action="append", default=[], metavar="REGEX",
                   help="only the modules matching one of these")
    x.add_argument("--exclude", "-e", action="append", default=[], metavar="REGEX", help="no module matching this")
    x.add_argument("--sv-epsilon", type=float, default=0.0, help="drop singular values at or below this")
    x.add_argument("--skip-undecomposable", action="store_true",
                   help="leave out the tensors that are not linear layers (default: saved whole)")
    x.add_argument("--svd", choices=["exact", "randomized"], default="exact",
                   help="each layer's top directions by a full SVD (mergekit's) or a randomized one (faster where "
                        "the rank is well below the layer's sides)")
    x.add_argument("--seed", type=int, default=0, help="the randomized SVD's sketches")
    x.set_defaults(func=cmd_extract_lora)

    s = sub.add_parser("merge-stats", help="per-tensor delta norms, sparsity, cosine and sign conflicts")
    s.add_argument("--base", required=True)
    s.add_argument("--models", nargs="+", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_merge_stats)

    g = sub.add_parser("generate", help="batched greedy decoding: prompts JSONL -> predictions JSONL")
    g.add_argument("--model", required=True, help="our checkpoint, an HF directory or a .gguf file")
    g.add_argument("--input", required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--prefill-batch", type=int, default=4)
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--chunk-steps", type=int, default=16)
    g.add_argument("--buckets", default="64,128,256,512,1024,2048")
    g.add_argument("--prompt-overflow", default="middle", choices=["middle", "left", "error"],
                   help="prompts longer than the largest bucket: keep their first and last halves (middle: the "
                        "instruction and the options stay), their end (left), or stop with an error")
    g.add_argument("--chat-template", default="tokenizer", help="tokenizer | zephyr | path to a Jinja file")
    g.add_argument("--drop-system", action="store_true", help="drop system messages (the original did for non-Llama)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    g.add_argument("--layer-loop", default="auto", choices=["auto", "scan", "unrolled", "feature_major"],
                   help="unrolled: per-layer weights (small-batch decoding on GPUs: 2.3x faster per step on an H100 "
                        "for a 7B model) with fused Q/K/V and gate/up; feature_major: unrolled with (out, in) weights "
                        "and (features, tokens) activations (1.5-1.9x faster steps on CPUs); auto: feature_major on "
                        "CPU, scan elsewhere. Both unrolled loops need twice the weight memory while converting")
    g.add_argument("--no-prefix-cache", action="store_true",
                   help="prefill every prompt whole instead of computing heads shared by several prompts once")
    g.add_argument("--speculate", type=int, default=0, metavar="N",
                   help="prompt-lookup speculative decoding: check N drafted tokens per step (the ones that followed "
                        "the last few tokens' latest earlier occurrence in the prompt or output); the same tokens, "
                        "fewer steps. Pays where reading the weights bounds a step (small batches; 2 drafts at "
                        "batch 1 on a 2-core CPU: 1.12x on the eval prompts); slower at larger CPU batches. 0: off")
    g.set_defaults(func=cmd_generate)

    for register in _extra_registrations():
        register(sub)
    return p


def _extra_registrations():
    """Subcommands contributed by other stages (kept in their modules so this file stays small)."""
    regs = []
    for mod in ("mnlu_jax.data.build", "mnlu_jax.evaluate.cli", "mnlu_jax.train.cli", "mnlu_jax.pipeline"):
        try:
            module = __import__(mod, fromlist=["register_cli"])
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        regs.append(module.register_cli)
    return regs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mnlu_jax.compile_cache import enable_compilation_cache

    enable_compilation_cache()  # before anything compiles; see compile_cache.py
    try:
        return args.func(args) or 0
    # input and setup errors whose message names the file or field; anything else keeps its traceback
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError,
            ImportError) as e:
        print(f"mnlu-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
