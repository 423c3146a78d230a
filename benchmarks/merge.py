"""Wall time and peak RSS of our streaming DARE merge vs mergekit 0.1.5 on the same pair of checkpoints.

Creates two Mistral-shaped bf16 checkpoints locally (a base and a "fine-tune" = base + small noise), then runs:
  ours:     mnlu-jax merge --method dare --drop-rate 0.2 (models [base, ft], average)  = MergeLM's mask_merging
  mergekit: dare_linear, rescale false, density 0.8, weight 0.625 (the same math, see reference notes)
each in its own process; peak RSS is that process's ru_maxrss. `--preset 7b` records our peak RSS on a 7B shape.

`--methods ties,dare_ties,...` instead runs one mergekit config per method through both tools as it is
(`mnlu-jax merge --config` and `mergekit-yaml`) and writes `results/merge_methods_<preset>.json`.

    python benchmarks/merge.py [--preset 1b] [--workdir /tmp/mnlu_merge_bench] [--no-reference]
    python benchmarks/merge.py --methods ties,dare_ties,slerp,sce,karcher
    python benchmarks/merge.py --methods slerp_slices,ties_lora     # a config's merge_method may differ from its key
    python benchmarks/merge.py --methods ties_density,della_gradient
    python benchmarks/merge.py --extract-lora 64      # mnlu-jax extract-lora against mergekit-extract-lora
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, measured, write_result  # noqa: E402

PRESETS = {
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
               num_key_value_heads=8),
    "7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8),
}


def make_checkpoint(config, d: Path, noise: float = 0.0) -> Path:
    """A random bf16 HF checkpoint of `config`'s shape at `d` (kept if already there): N(0, 0.02) weights seeded by
    tensor name, plus `noise`-scaled N(0, 1) (the "fine-tune")."""
    import ml_dtypes
    import numpy as np

    from mnlu_jax.weights import names as N
    from mnlu_jax.weights.safetensors_io import write_sharded

    specs = [(e.hf_name, e.hf_shape, np.dtype(ml_dtypes.bfloat16)) for e in N.entries(config)]
    if not (d / "config.json").exists():
        d.mkdir(parents=True, exist_ok=True)

        shapes = {t: s for t, s, _ in specs}

        def produce(n):
            shape = shapes[n]
            rng = np.random.default_rng(abs(hash(n)) % 2**32)
            x = rng.standard_normal(int(np.prod(shape)), dtype=np.float32) * 0.02
            if noise:
                x += np.random.default_rng(7).standard_normal(x.size, dtype=np.float32) * noise
            return x.reshape(shape).astype(ml_dtypes.bfloat16)

        write_sharded(d, specs, produce, max_shard_bytes=2 * 2**30)
        (d / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
    return d


def make_pair(preset: str, work: Path) -> tuple[Path, Path, int]:
    from mnlu_jax.model.config import ModelConfig

    config = ModelConfig(**PRESETS[preset], model_type="mistral", sliding_window=4096, torch_dtype="bfloat16")
    base, ft = (make_checkpoint(config, work / name, noise) for name, noise in (("base", 0.0), ("ft", 0.002)))
    return base, ft, config.num_params()


# one mergekit config per method over the pair (base, ft): the same file goes to both tools
METHOD_CONFIGS = {
    "dare_linear": {"models": [{"model": "{ft}", "parameters": {"weight": 1.0, "density": 0.8}}]},
    "ties": {"models": [{"model": "{ft}", "parameters": {"weight": 1.0, "density": 0.5}}]},
    "dare_ties": {"models": [{"model": "{ft}", "parameters": {"weight": 1.0, "density": 0.5}}]},
    "breadcrumbs": {"models": [{"model": "{ft}", "parameters": {"weight": 1.0, "density": 0.8, "gamma": 0.01}}]},
    "slerp": {"models": [{"model": "{base}"}, {"model": "{ft}"}], "parameters": {"t": 0.4}},
    "sce": {"models": [{"model": "{ft}"}], "parameters": {"select_topk": 0.5}},
    "della": {"models": [{"model": "{ft}", "parameters": {"weight": 1.0, "density": 0.5, "epsilon": 0.1}}]},
    "karcher": {"models": [{"model": "{base}"}, {"model": "{ft}"}]},
    # session 25; multislerp without base_model: the two models themselves on the sphere
    "multislerp": {"base_model": None, "models": [{"model": "{base}", "parameters": {"weight": 1.0}},
                                                  {"model": "{ft}", "parameters": {"weight": 1.0}}]},
    "nearswap": {"models": [{"model": "{ft}"}], "parameters": {"t": 0.001}},
    "arcee_fusion": {"models": [{"model": "{ft}"}]},
    "ram": {"models": [{"model": "{ft}"}], "parameters": {"epsilon": 0.001}},
    "ramplus_tl": {"models": [{"model": "{ft}"}], "parameters": {"epsilon": 0.001}},
    # depth up-scaling as SOLAR did it: layers 0-11 of one and 4-15 of the other stacked into 24 layers
    "passthrough": {"base_model": None, "slices": [{"sources": [{"model": "{base}", "layer_range": [0, 12]}]},
                                                   {"sources": [{"model": "{ft}", "layer_range": [4, 16]}]}]},
    # session 26: slerp slice by slice (a t gradient of its own in each half), and TIES over a LoRA reference (a
    # rank-16 PEFT adapter on every linear layer of the fine-tune; mergekit merges it with PEFT first)
    "slerp_slices": {"merge_method": "slerp", "slices": [
        {"sources": [{"model": "{base}", "layer_range": [0, 8]}, {"model": "{ft}", "layer_range": [0, 8]}],
         "parameters": {"t": [0.0, 0.5]}},
        {"sources": [{"model": "{base}", "layer_range": [8, 16]}, {"model": "{ft}", "layer_range": [8, 16]}],
         "parameters": {"t": [0.5, 1.0]}}]},
    "ties_lora": {"merge_method": "ties",
                  "models": [{"model": "{ft}+{lora}", "parameters": {"weight": 1.0, "density": 0.5}}]},
    # session 27: density (and DELLA's epsilon) gradients over the layers, each layer its own kept count
    "ties_density": {"merge_method": "ties",
                     "models": [{"model": "{ft}", "parameters": {"weight": 1.0, "density": [0.2, 0.8]}}]},
    "della_gradient": {"merge_method": "della",
                       "models": [{"model": "{ft}", "parameters": {"weight": 1.0, "density": [0.3, 0.7],
                                                                  "epsilon": [0.05, 0.15]}}]},
}
LORA_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                "mlp.up_proj", "mlp.down_proj")


def make_lora(config, d: Path, rank: int = 16) -> Path:
    """A random rank-`rank` PEFT LoRA adapter (bf16 A and B) on every linear layer of `config`'s shape, at `d`."""
    import ml_dtypes
    import numpy as np

    from mnlu_jax.weights import names as N
    from mnlu_jax.weights.safetensors_io import write_sharded

    if (d / "adapter_model.safetensors").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    shapes = {e.hf_name: e.hf_shape for e in N.entries(config)}
    specs = []
    for i in range(config.num_hidden_layers):
        for t in LORA_TARGETS:
            out_dim, in_dim = shapes[f"model.layers.{i}.{t}.weight"]
            key = f"base_model.model.model.layers.{i}.{t}"
            specs += [(f"{key}.lora_A.weight", (rank, in_dim), np.dtype(ml_dtypes.bfloat16)),
                      (f"{key}.lora_B.weight", (out_dim, rank), np.dtype(ml_dtypes.bfloat16))]
    sizes = dict((n, s) for n, s, _ in specs)

    def produce(n):
        rng = np.random.default_rng(abs(hash(n)) % 2**32)
        return (rng.standard_normal(sizes[n], dtype=np.float32) * 0.01).astype(ml_dtypes.bfloat16)

    write_sharded(d, specs, produce, max_shard_bytes=2**40)
    (d / "model.safetensors").rename(d / "adapter_model.safetensors")
    (d / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": sorted(
            {t.split(".")[1] for t in LORA_TARGETS}), "bias": "none", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": None}, indent=2))
    return d


def run_methods(methods: list[str], base: Path, ft: Path, work: Path) -> dict:
    import yaml

    from mnlu_jax.weights.named_tensors import NamedTensors

    out = {}
    for method in methods:
        if method not in METHOD_CONFIGS:
            raise SystemExit(f"--methods: {method!r} has no config here; expected some of {sorted(METHOD_CONFIGS)}")
        text = json.dumps(METHOD_CONFIGS[method]).replace("{base}", str(base)).replace("{ft}", str(ft))
        if "{lora}" in text:
            text = text.replace("{lora}", str(make_lora(NamedTensors(ft).config, work / "lora")))
        cfg = {"merge_method": method, "base_model": str(base), "dtype": "bfloat16", **json.loads(text)}
        cfg = {k: v for k, v in cfg.items() if v is not None}
        path = work / f"{method}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        runs = {}
        for tool in ("ours", "mergekit"):
            dest = work / f"{tool}_{method}"
            shutil.rmtree(dest, ignore_errors=True)
            seconds, rss, _ = measured(
                [sys.executable, "-m", "mnlu_jax", "merge", "--config", str(path), "--out", str(dest)] if tool == "ours"
                else ["mergekit-yaml", str(path), str(dest), "--random-seed", "0", "--quiet", "--lora-merge-cache",
                      str(work / f"lora_cache_{method}")])
            shutil.rmtree(work / f"lora_cache_{method}", ignore_errors=True)  # (mergekit's PEFT-merged model)
            runs[tool] = {"seconds": seconds, "peak_rss_gib": rss}
            shutil.rmtree(dest, ignore_errors=True)
        runs["wall_time_ratio_ours_over_mergekit"] = runs["ours"]["seconds"] / runs["mergekit"]["seconds"]
        runs["rss_ratio_ours_over_mergekit"] = runs["ours"]["peak_rss_gib"] / runs["mergekit"]["peak_rss_gib"]
        runs["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
        print(method, json.dumps(runs))
        out[method] = runs
    return out


def run_extract_lora(rank: int, base: Path, ft: Path, work: Path) -> dict:
    """Wall time and peak RSS of mergekit's extraction and ours (its full SVD, and our randomized one); how far
    our adapters' B·A are from mergekit's, and each one's residual ‖δ − B·A‖ over the best rank-r cut's."""
    import numpy as np
    from safetensors.numpy import load_file

    from mnlu_jax.weights.named_tensors import NamedTensors

    runs = {}
    tools = {"ours": [sys.executable, "-m", "mnlu_jax", "extract-lora", "--model", str(ft), "--base", str(base),
                      "--max-rank", str(rank), "--out"],
             "ours_randomized": [sys.executable, "-m", "mnlu_jax", "extract-lora", "--svd", "randomized", "--model",
                                 str(ft), "--base", str(base), "--max-rank", str(rank), "--out"],
             "mergekit": ["mergekit-extract-lora", "--model", str(ft), "--base-model", str(base), "--max-rank",
                          str(rank), "--out-path"]}
    for tool, command in tools.items():
        dest = work / f"{tool}_lora"
        shutil.rmtree(dest, ignore_errors=True)
        seconds, rss, _ = measured([*command, str(dest)])
        runs[tool] = {"seconds": seconds, "peak_rss_gib": rss}
    adapters = {tool: load_file(work / f"{tool}_lora" / "adapter_model.safetensors") for tool in tools}
    b_src, f_src = NamedTensors(base), NamedTensors(ft)
    worst_vs_mergekit, residual_ratio = 0.0, {"ours": [], "ours_randomized": []}
    for key in adapters["mergekit"]:
        if ".lora_A." not in key:
            continue
        b_key, name = key.replace(".lora_A.", ".lora_B."), key[len("base_model.model."):].replace(".lora_A.", ".")
        delta = np.asarray(f_src.get(name), np.float32) - np.asarray(b_src.get(name), np.float32)
        product = {t: a[b_key].astype(np.float32) @ a[key].astype(np.float32) for t, a in adapters.items()}
        worst_vs_mergekit = max(worst_vs_mergekit, float(np.abs(product["ours"] - product["mergekit"]).max()
                                                         / np.abs(product["mergekit"]).max()))
        reference = np.linalg.norm(delta - product["mergekit"])
        for t in residual_ratio:
            residual_ratio[t].append(float(np.linalg.norm(delta - product[t]) / reference))
    runs["same_tensor_names"] = all(set(a) == set(adapters["mergekit"]) for a in adapters.values())
    runs["largest_relative_difference_of_BA_ours_vs_mergekit"] = worst_vs_mergekit
    runs["residual_over_mergekits"] = {t: {"max": max(v), "mean": sum(v) / len(v)} for t, v in residual_ratio.items()}
    for t in ("ours", "ours_randomized"):
        runs[f"wall_time_ratio_{t}_over_mergekit"] = runs[t]["seconds"] / runs["mergekit"]["seconds"]
        runs[f"rss_ratio_{t}_over_mergekit"] = runs[t]["peak_rss_gib"] / runs["mergekit"]["peak_rss_gib"]
    for tool in tools:
        shutil.rmtree(work / f"{tool}_lora", ignore_errors=True)
    return runs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="1b", choices=list(PRESETS))
    ap.add_argument("--workdir", default="/tmp/mnlu_merge_bench")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    ap.add_argument("--methods", default=None, help="comma-separated mergekit methods, each config through both tools")
    ap.add_argument("--extract-lora", type=int, default=None, metavar="RANK",
                    help="instead: a rank-RANK LoRA extracted from the pair by both tools (extract_lora_<preset>.json)")
    a = ap.parse_args()
    work = Path(a.workdir) / a.preset
    t = time.perf_counter()
    base, ft, n_params = make_pair(a.preset, work)
    create_s = time.perf_counter() - t
    if a.extract_lora is not None:
        write_result(f"extract_lora_{a.preset}", {
            "preset": a.preset, "params": n_params, "dtype": "bfloat16", "rank": a.extract_lora,
            "note": "mnlu-jax extract-lora (full SVD, and --svd randomized) and mergekit-extract-lora on the same "
                    "pair, each in its own process; the fine-tune is the base plus full-rank noise (a flat spectrum: "
                    "the hardest case for the randomized SVD), so every layer is cut to the rank; residuals are "
                    "||delta - B A||_F over mergekit's, per linear layer",
            **run_extract_lora(a.extract_lora, base, ft, work)})
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        return
    if a.methods:
        # methods measured before keep their rows (each with its date) unless measured again
        earlier_path = RESULTS / f"merge_methods_{a.preset}.json"
        earlier = json.loads(earlier_path.read_text()) if earlier_path.exists() else {"methods": {}}
        methods = {m: {**r, "date": r.get("date", earlier["date"])} for m, r in earlier["methods"].items()}
        methods.update(run_methods(a.methods.split(","), base, ft, work))
        res = {"preset": a.preset, "params": n_params, "dtype": "bfloat16", "checkpoint_gib": n_params * 2 / 2**30,
               "note": "one mergekit config per method, run as it is by `mnlu-jax merge --config` and by "
                       "`mergekit-yaml`, each in its own process; `date` says when each method was run",
               "methods": methods}
        write_result(f"merge_methods_{a.preset}", res)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        return
    shutil.rmtree(work / "ours", ignore_errors=True)
    ours_s, ours_rss, _ = measured([sys.executable, "-m", "mnlu_jax", "merge", "--base", str(base), "--models", str(base),
                                 str(ft), "--method", "dare", "--drop-rate", "0.2", "--seed", "0", "--out",
                                 str(work / "ours")])
    res = {"preset": a.preset, "params": n_params, "dtype": "bfloat16", "checkpoint_gib": n_params * 2 / 2**30,
           "create_seconds": create_s, "ours": {"seconds": ours_s, "peak_rss_gib": ours_rss}}
    if not a.no_reference:
        import yaml

        cfg = {"merge_method": "dare_linear", "base_model": str(base), "dtype": "bfloat16",
               "parameters": {"rescale": False, "normalize": False},
               "models": [{"model": str(ft), "parameters": {"weight": 0.625, "density": 0.8}}]}
        (work / "mergekit.yaml").write_text(yaml.safe_dump(cfg))
        shutil.rmtree(work / "mergekit", ignore_errors=True)
        mk_s, mk_rss, _ = measured(["mergekit-yaml", str(work / "mergekit.yaml"), str(work / "mergekit"),
                                 "--random-seed", "0", "--quiet"])
        res["mergekit"] = {"seconds": mk_s, "peak_rss_gib": mk_rss}
        res["wall_time_ratio_ours_over_mergekit"] = ours_s / mk_s
        res["rss_ratio_ours_over_mergekit"] = ours_rss / mk_rss
    res["target"] = "<= 0.5x mergekit wall time and <= mergekit peak RSS"
    write_result(f"merge_{a.preset}", res)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
