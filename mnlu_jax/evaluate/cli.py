"""Subcommands of the evaluation stage: build-eval, score, evaluate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from mnlu_jax.config import write_text_atomic

if TYPE_CHECKING:  # (the decoder imports jax: a command line that does not decode starts without it)
    from mnlu_jax.decode.engine import DecodeConfig


def run_evaluate(model, eval_dir: str | Path, out: str | Path, decode: DecodeConfig, chat_template: str | None = None,
                 drop_system: bool = False, dtype: str = "float32", system_name: str = "ours",
                 tokenizer=None, config=None, names: list[str] | None = None, progress: bool = True) -> dict:
    """Decode every eval set in `eval_dir` (resumable per set) into `out/predictions/`, then score into `out/`.

    `model` is a checkpoint path (ours, HF or GGUF) or a params pytree (then pass `config` and `tokenizer`)."""
    from mnlu_jax.data.chat import check_template_choice
    from mnlu_jax.decode.generate import load_generator, run_generate
    from mnlu_jax.evaluate.score import run_score
    from mnlu_jax.evaluate.sets import read_manifest

    eval_dir, out = Path(eval_dir), Path(out)
    if not (eval_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"{eval_dir}: no manifest.json (build-eval writes the eval sets and their manifest)")
    sets = read_manifest(eval_dir / "manifest.json")
    check_template_choice(chat_template)  # before the model is loaded
    unknown = sorted(set(names or ()) - set(sets))
    if unknown:
        raise ValueError(f"{eval_dir}/manifest.json has no eval sets {unknown}; it has {sorted(sets)}")
    generator, tokenizer = load_generator(model, decode, dtype, tokenizer, config)
    pred_dir = out / "predictions"
    stats = {}
    for name, info in sets.items():
        if names and name not in names:
            continue
        stats[name] = run_generate(model, eval_dir / info["file"], pred_dir / info["file"], decode,
                                   chat_template=chat_template, drop_system=drop_system, tokenizer=tokenizer,
                                   progress=progress, generator=generator, dtype=dtype,
                                   model_name=None if isinstance(model, (str, Path)) else system_name)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "generation_stats.json", json.dumps(stats, indent=2, default=str))
    run_score({system_name: pred_dir}, out, manifest=eval_dir / "manifest.json")  # scores.json last: the done mark
    return stats


def prediction_systems(items: list[str]) -> dict[str, str]:
    """`--predictions` items -> system name: path. NAME=PATH names a system; a bare path is "ours" when it is the only
    one, else named by its file or folder name (the folder above for evaluate's `<out>/predictions`). A name given
    twice is an error (one would replace the other)."""

    def named(path: str) -> str:
        p = Path(path).absolute()
        return p.parent.name if p.name == "predictions" else p.stem

    systems: dict[str, str] = {}
    for item in items:
        name, path = item.split("=", 1) if "=" in item else ("ours" if len(items) == 1 else named(item), item)
        if not name or not path:
            raise ValueError(f"--predictions {item!r}: expected FILE_OR_DIR or NAME=FILE_OR_DIR")
        if name in systems:
            raise ValueError(f"--predictions: system {name!r} given twice ({systems[name]} and {path}); name them "
                             "NAME=FILE_OR_DIR")
        systems[name] = path
    return systems


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-eval", help="build the BLURB/BLUE test sets in the unified format")
    p.add_argument("--benchmark", choices=["blurb", "blue", "all"], default="all")
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--shots", type=int, default=0, help="in-context examples for NER (the paper used 2 for baselines)")
    p.add_argument("--seed", type=int, default=0)

    def build(a):
        from mnlu_jax.evaluate.sets import build_eval

        m = build_eval(a.benchmark, a.data_root, a.out, a.shots, a.seed)
        print(f"built {len(m['sets'])} sets, skipped {len(m['skipped'])}; manifest in {a.out}/manifest.json")
        return 0

    p.set_defaults(func=build)

    s = sub.add_parser("score", help="score predictions (paper and official modes) and write the Table 5 report")
    s.add_argument("--predictions", nargs="+", required=True, help="FILE_OR_DIR or NAME=FILE_OR_DIR (several systems)")
    s.add_argument("--out", required=True)
    s.add_argument("--manifest", help="eval-set manifest.json (gold counts beside the paper's)")

    def score(a):
        from mnlu_jax.evaluate.score import markdown, run_score, table5

        results = run_score(prediction_systems(a.predictions), a.out, a.manifest)
        print(markdown(table5(results, "paper")))
        return 0

    s.set_defaults(func=score)

    e = sub.add_parser("evaluate", help="decode the eval sets with a model, then score (resumable)")
    e.add_argument("--model", required=True)
    e.add_argument("--eval-dir", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--max-new-tokens", type=int, default=256)
    e.add_argument("--buckets", default="128,256,512,1024,2048")
    e.add_argument("--prompt-overflow", default="middle", choices=["middle", "left", "error"],
                   help="as for generate")
    e.add_argument("--chat-template", default="tokenizer")
    e.add_argument("--drop-system", action="store_true")
    e.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    e.add_argument("--name", default="ours", help="system name in the report")
    e.add_argument("--layer-loop", default="auto", choices=["auto", "scan", "unrolled", "feature_major"],
                   help="as for generate")
    e.add_argument("--no-prefix-cache", action="store_true", help="as for generate")
    e.add_argument("--speculate", type=int, default=0, metavar="N", help="as for generate")

    def evaluate(a):
        from mnlu_jax.decode.engine import DecodeConfig, parse_buckets

        dc = DecodeConfig(batch_size=a.batch_size, max_new_tokens=a.max_new_tokens,
                          buckets=parse_buckets(a.buckets), prefill_batch=min(4, a.batch_size),
                          layer_loop=a.layer_loop, prefix_cache=not a.no_prefix_cache, speculate=a.speculate,
                          prompt_overflow=a.prompt_overflow)
        run_evaluate(a.model, a.eval_dir, a.out, dc, a.chat_template, a.drop_system, a.dtype, a.name)
        print((Path(a.out) / "table5_paper.md").read_text())
        return 0

    e.set_defaults(func=evaluate)
