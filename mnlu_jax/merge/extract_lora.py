"""A LoRA adapter extracted from a fine-tune and its base, as `mergekit-extract-lora` extracts one: each linear
layer's task vector δ = W_ft − W_base cut to its top singular directions, δ ≈ B·A (A = √S·Vᵀ, B = U·√S, or with
`distribute_scale` off A = S·Vᵀ, B = U), written as a PEFT adapter that PEFT and `MODEL+ADAPTER` references
load (both tested). What a fine-tune changed, at a fraction of its size (a rank-r adapter of a linear layer of shape
(m, n) holds r·(m + n) numbers against m·n), and a way to study how low-rank a fine-tune's update is.

    mnlu-jax extract-lora --model runs/ft/hf --base BioMistral/BioMistral-7B --out lora/ [--max-rank 128]

As in mergekit 0.1.5:
- rank min(`max_rank`, the layer's smaller side), lowered to the count of singular values above `sv_epsilon`
  when that is set; `r` is the largest rank, `lora_alpha = r` (so PEFT's scale is 1), and layers of other ranks
  are listed in `rank_pattern` and `alpha_pattern` (a layer left with rank 0 is left out of the adapter, where
  mergekit writes a rank-0 LoRA that PEFT refuses);
- the embeddings and LM head are saved whole (`modules_to_save`) unless `embed_lora` (then the embedding's LoRA is
  the transposed one PEFT uses for embeddings), and always when the two vocabularies differ;
- tensors that are not linear layers (the RMSNorm weights) are saved whole, or left out with
  `skip_undecomposable`; `save_modules` names more modules to save whole; `include` / `exclude` regexes choose
  the modules by name (one left out is neither extracted nor saved);
- the factors are computed in fp32 and stored in the fine-tune's dtype.
Past mergekit, `svd="randomized"` (`--svd randomized`) finds each layer's top directions by a randomized SVD
(`randomized_svd`, its sketch seeded by `seed` and the tensor's name) instead of a full one: several times faster
where the rank is well below the layer's sides, the same where the update's rank is below the sketch's, and
otherwise a little off the best approximation (measured in benchmarks/merge.py --extract-lora).
The SVD of each layer runs in JAX, one layer at a time; the factors are kept until the adapter is written (its
size: 0.67 GB in bf16 for a 7B model at rank 128), the tensors saved whole are read as they are written.
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from mnlu_jax.merge.math import tensor_key
from mnlu_jax.weights import names as N
from mnlu_jax.weights.convert import atomic_dir, source_name
from mnlu_jax.weights.lora import PREFIX
from mnlu_jax.weights.named_tensors import NamedTensors
from mnlu_jax.weights.safetensors_io import write_sharded

ADAPTER_FILE = "adapter_model.safetensors"
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def _module(name: str) -> str:
    """A tensor's module (`model.layers.0.mlp.up_proj.weight` -> `model.layers.0.mlp.up_proj`)."""
    return name.removesuffix(".weight")


def factors(delta: np.ndarray, max_rank: int, sv_epsilon: float = 0.0, distribute_scale: bool = True,
            sketch_key: jax.Array | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) of shapes (r, n) and (m, r) with B·A the rank-r approximation of `delta` (m, n) in fp32: the best
    one (a full SVD), or with a `sketch_key` the randomized SVD's (`randomized_svd`; a full SVD where the sketch
    would be as wide as the matrix)."""
    x = jnp.asarray(delta, jnp.float32)
    if sketch_key is not None and max_rank + OVERSAMPLE < min(x.shape):
        u, s, vh = randomized_svd(x, max_rank, sketch_key)
    else:
        u, s, vh = jnp.linalg.svd(x, full_matrices=False)
    s = np.asarray(s)
    rank = min(max_rank, s.shape[0])
    if sv_epsilon > 0:
        rank = min(int((s > sv_epsilon).sum()), rank)
    # only the kept directions leave the device (a full SVD's U of a 14336 x 4096 layer is 235 MB)
    u, vh = np.asarray(u[:, :rank]), np.asarray(vh[:rank])
    if distribute_scale:
        root = np.sqrt(s[:rank])
        return root[:, None] * vh, u * root[None, :]
    return s[:rank, None] * vh, u


OVERSAMPLE, POWER_ITERATIONS = 16, 4


@functools.partial(jax.jit, static_argnums=(1,))
def randomized_svd(x, rank: int, key):
    """The top `rank` singular triplets of `x` (m, n) by Halko, Martinsson and Tropp's randomized SVD: a Gaussian
    sketch of `rank + OVERSAMPLE` columns, `POWER_ITERATIONS` rounds of subspace iteration (re-orthonormalised
    each half step), then the exact SVD of the small projection. Costs O(m·n·(rank + 16)) per round against the
    full SVD's O(m·n·min(m, n)); exact where the update's rank is below the sketch's, and close to the best
    rank-r approximation where its singular values decay."""
    k = rank + OVERSAMPLE
    q, _ = jnp.linalg.qr(x @ jax.random.normal(key, (x.shape[1], k), x.dtype))
    for _ in range(POWER_ITERATIONS):
        z, _ = jnp.linalg.qr(x.T @ q)
        q, _ = jnp.linalg.qr(x @ z)
    small_u, s, vh = jnp.linalg.svd(q.T @ x, full_matrices=False)
    return (q @ small_u)[:, :rank], s[:rank], vh[:rank]


def extract_lora(model: str | Path, base: str | Path, out: str | Path, max_rank: int = 128,
                 distribute_scale: bool = True, embed_lora: bool = False, save_modules: tuple[str, ...] = (),
                 include: tuple[str, ...] = (), exclude: tuple[str, ...] = (), sv_epsilon: float = 0.0,
                 skip_undecomposable: bool = False, svd: str = "exact", seed: int = 0, progress: bool = True) -> Path:
    """Write the PEFT adapter that takes `base` to `model` (see the module docstring) to `out`, atomically."""
    if max_rank < 1:
        raise ValueError(f"max_rank: expected a positive rank, got {max_rank}")
    if svd not in ("exact", "randomized"):
        raise ValueError(f"svd {svd!r}: expected exact (mergekit's full SVD) or randomized")
    if Path(out).exists() and any(Path(out).iterdir()):  # (before the SVDs, not after them)
        raise FileExistsError(f"{Path(out).absolute()}: output directory exists and is not empty")
    for field, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{field} {pattern!r}: not a regular expression ({e})") from None
    ft, ref = NamedTensors(model), NamedTensors(base)
    ft.check()
    ref.check()
    entries = {e.hf_name: e for e in N.entries(ft.config)}
    vocab_rows = ft.shape(EMBED)[0], ref.shape(EMBED)[0]
    if embed_lora and vocab_rows[0] != vocab_rows[1]:
        warnings.warn(f"{model} has {vocab_rows[0]} vocabulary rows and {base} {vocab_rows[1]}: the embeddings and "
                      "LM head are saved whole (embed_lora off), as mergekit does", stacklevel=2)
        embed_lora = False
    # a tied LM head is the embedding: PEFT adapts (or saves) it as a module of its own, so mergekit writes it too
    has_head = {source: HEAD in source.names() for source in (ft, ref)}
    tied = [HEAD] if not has_head[ft] and ft.config.tie_word_embeddings else []

    def read(source: NamedTensors, name: str) -> np.ndarray:
        return np.asarray(source.get(EMBED if name == HEAD and not has_head[source] else name))

    save_modules = list(save_modules)
    plan: list[tuple[str, str]] = []  # (tensor name, "lora" | "embedding" | "whole")
    for name in [*ft.names(), *tied]:
        module = _module(name)
        leaf = module.rsplit(".", 1)[-1]
        entry = entries.get(name)
        vocabulary = leaf in ("embed_tokens", "lm_head")
        if vocabulary and not embed_lora and not any(re.search(p, module) for p in exclude) \
                and leaf not in save_modules:
            save_modules.append(leaf)
        if module in save_modules or leaf in save_modules:
            plan.append((name, "whole"))
        elif include and not any(re.search(p, module) for p in include) or any(re.search(p, module) for p in exclude):
            continue
        elif name in tied or entry is not None and (entry.transpose or leaf == "embed_tokens"):
            shapes = [source.shape(EMBED if name in tied else name) for source in (ft, ref)]
            if shapes[0] != shapes[1]:
                raise ValueError(f"{name}: {shapes[0]} in {model} but {shapes[1]} in {base}; a LoRA extracts the "
                                 "difference of tensors of one shape")
            plan.append((name, "embedding" if leaf == "embed_tokens" else "lora"))
        elif not skip_undecomposable:  # (a norm's weight: saved whole, its module listed as mergekit lists it)
            if leaf not in save_modules:
                save_modules.append(leaf)
            plan.append((name, "whole"))
    if not plan:
        raise ValueError(f"extract-lora: no tensor of {model} is extracted or saved (include {list(include)}, "
                         f"exclude {list(exclude)})")
    decomposed = {}
    for name, kind in tqdm(plan, desc="extract-lora (SVD)", unit="tensor", disable=not progress):
        if kind == "whole":
            continue
        delta = read(ft, name).astype(np.float32) - read(ref, name).astype(np.float32)
        sketch = tensor_key(seed, name, 0) if svd == "randomized" else None
        a, b = factors(delta.T if kind == "embedding" else delta, max_rank, sv_epsilon, distribute_scale, sketch)
        if a.shape[0] == 0:  # no singular value above sv_epsilon: nothing to adapt (PEFT refuses a rank-0 LoRA,
            continue         # which mergekit writes)
        dtype = ft.dtype(EMBED if name in tied else name)
        decomposed[name] = (a.astype(dtype), b.astype(dtype))
    plan = [(name, kind) for name, kind in plan if kind == "whole" or name in decomposed]
    specs, produce = [], {}
    for name, kind in plan:
        module = _module(name)
        if kind == "whole":
            key = PREFIX + name
            stored = EMBED if name in tied else name
            specs.append((key, ft.shape(stored), ft.dtype(stored)))
            produce[key] = (lambda n: lambda: read(ft, n))(name)
            continue
        a, b = decomposed[name]
        names = (f"{module}.lora_embedding_A", f"{module}.lora_embedding_B") if kind == "embedding" else \
            (f"{module}.lora_A.weight", f"{module}.lora_B.weight")
        for key, factor in zip(names, (a, b)):
            specs.append((PREFIX + key, factor.shape, factor.dtype))
            produce[PREFIX + key] = (lambda x: lambda: x)(factor)
    ranks = {_module(n): a.shape[0] for n, (a, _) in decomposed.items()}
    r = max(ranks.values(), default=0)
    different = {m: k for m, k in ranks.items() if k != r}
    config = {"base_model_name_or_path": source_name(base), "peft_type": "LORA", "use_rslora": False,
              "target_modules": sorted({m.rsplit(".", 1)[-1] for m in ranks}), "modules_to_save": save_modules,
              "task_type": "CAUSAL_LM", "r": r, "lora_alpha": r, "rank_pattern": different,
              "alpha_pattern": different, "lora_dropout": 0.0, "fan_in_fan_out": False, "inference_mode": True}
    with atomic_dir(out) as tmp:
        write_sharded(tmp, specs, lambda key: produce[key](), max_shard_bytes=2**62)
        (tmp / "model.safetensors").rename(tmp / ADAPTER_FILE)
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
        (tmp / "README.md").write_text(_card(source_name(base), source_name(model), Path(out).name, config, ranks,
                                             "a full SVD" if svd == "exact" else f"a randomized SVD (seed {seed})"))
    return Path(out)


def _card(base: str, model: str, name: str, config: dict, ranks: dict[str, int], how: str) -> str:
    sizes = sorted(set(ranks.values()))
    return "\n".join([
        "---", f"base_model: {base}", "library_name: peft", "tags: [mnlu-jax, lora, extracted]", "---", "",
        f"# {name}", "",
        f"A LoRA adapter extracted with mnlu-jax (`mnlu-jax extract-lora`) from `{model}` against its base "
        f"`{base}`: each linear layer's difference cut to its top singular directions ({how}), rank "
        + (f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]} to {sizes[-1]}") + f" over {len(ranks)} layers.",
        "", f"Saved whole: {', '.join(config['modules_to_save']) or 'nothing'}.", ""])
