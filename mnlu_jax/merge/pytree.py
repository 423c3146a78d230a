"""In-memory merging of parameter pytrees (any layout, sharded arrays welcome) with the per-tensor math."""

from __future__ import annotations

import functools
import re
from typing import Any

import jax
import jax.numpy as jnp

from mnlu_jax.merge.math import MergeSpec, keys_for, merge_tensor


def _path_name(path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


@functools.partial(jax.jit, static_argnames=("spec",))
def _merge_leaf(base, models, keys, spec):
    return merge_tensor(base, models, keys, spec).astype(base.dtype)


def merge_pytrees(base: Any, models: list[Any], spec: MergeSpec, exclude: str | None = None) -> Any:
    """Merge `models` into `base` leaf by leaf. Leaves keep the base's dtype (and sharding, under jit).

    Each leaf's masks depend only on (spec.seed, the leaf's dotted path, model index); leaves whose path
    matches `exclude` (a regex) or that are not floating point keep the base value.
    """
    pattern = re.compile(exclude) if exclude else None
    flat, treedef = jax.tree_util.tree_flatten_with_path(base)
    model_leaves = []
    for i, m in enumerate(models):
        mflat, mdef = jax.tree_util.tree_flatten_with_path(m)
        if mdef != treedef:
            raise ValueError(f"model {i}: parameter tree differs from the base's")
        model_leaves.append([x for _, x in mflat])
    out = []
    for j, (path, b) in enumerate(flat):
        name = _path_name(path)
        ms = [ml[j] for ml in model_leaves]
        for i, x in enumerate(ms):
            if x.shape != b.shape:
                raise ValueError(f"{name}: model {i} has shape {x.shape}, base {b.shape}")
        if (pattern and pattern.search(name)) or not jnp.issubdtype(b.dtype, jnp.floating):
            out.append(b)
            continue
        out.append(_merge_leaf(b, tuple(ms), keys_for(spec, name, len(ms)), spec))
    return jax.tree_util.tree_unflatten(treedef, out)
