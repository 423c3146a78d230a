"""In-memory merging of parameter pytrees (any layout, sharded arrays welcome) with the per-tensor math."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from mnlu_jax.merge.math import (MergeSpec, check_model_count, exclude_pattern, keys_for, merge_compiled,
                                 nonfinite_error)
from mnlu_jax.merge.settings import Schedule
from mnlu_jax.weights.names import hf_name, layer_index

LAYOUTS = ("hf", "ours")


def _path_parts(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _path_name(path) -> str:
    return ".".join(_path_parts(path))


def _merge_ours(parts: tuple[str, ...], base, models, spec: MergeSpec, schedule: Schedule | None, checks: list):
    """One leaf of our parameter tree merged as the HF tensors it holds: layer by layer when stacked
    (model.layers.*), a kernel (in, out) as its HF weight (out, in); masks keyed by the HF names."""
    stacked, kernel = parts[:2] == ("model", "layers"), parts[-1] == "kernel"

    def one(b, ms, layer):
        hf = hf_name(parts, layer)
        s = spec if schedule is None else schedule.spec_for(spec, hf)
        if kernel:
            b, ms = b.T, tuple(m.T for m in ms)
        out = _merge_leaf(hf, b, ms, keys_for(s, hf, len(ms)), s, checks)
        return out.T if kernel else out

    if not stacked:
        return one(base, tuple(models), None)
    return jnp.stack([one(base[i], tuple(m[i] for m in models), i) for i in range(base.shape[0])])


def _merge_leaf(name, base, models, keys, spec, checks: list):
    """The merged leaf; (name, spec, whether it is finite) goes on `checks`, read once the tree is dispatched (a
    read per leaf would wait for each before the next is started)."""
    out, finite = merge_compiled(base, models, keys, spec, base.dtype)
    checks.append((name, spec, finite))
    return out


def merge_pytrees(base: Any, models: list[Any], spec: MergeSpec, exclude: str | None = None,
                  layout: str = "hf", schedule: Schedule | None = None) -> Any:
    """Merge `models` into `base` leaf by leaf. Leaves keep the base's dtype (and sharding, under jit).

    `layout="hf"`: each leaf is one tensor as Hugging Face stores it (a dict of HF names, say); its masks depend
    only on (spec.seed, the leaf's dotted path, model index). `layout="ours"`: the trees are our converted
    parameters (layers stacked on axis 0, kernels (in, out)); each leaf is merged as the HF tensors it holds,
    so the result equals the streaming merge of the HF exports, whatever the method (slerp's rows, TIES' ranks).
    Leaves whose path matches `exclude` (a regex) or that are not floating point keep the base value.
    `schedule` varies numeric parameters by tensor (merge/settings.py); the layers are counted from the tree.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {LAYOUTS}")
    check_model_count(spec, len(models))
    pattern = exclude_pattern(exclude)
    flat, treedef = jax.tree_util.tree_flatten_with_path(base)
    model_leaves = []
    for i, m in enumerate(models):
        mflat, mdef = jax.tree_util.tree_flatten_with_path(m)
        if mdef != treedef:
            raise ValueError(f"model {i}: parameter tree differs from the base's")
        model_leaves.append([x for _, x in mflat])
    if schedule is not None and schedule.num_layers is None:
        schedule = dataclasses.replace(schedule, num_layers=_count_layers(flat, layout))
    out, checks = [], []
    for j, (path, b) in enumerate(flat):
        name = _path_name(path)
        ms = [ml[j] for ml in model_leaves]
        for i, x in enumerate(ms):
            if x.shape != b.shape:
                raise ValueError(f"{name}: model {i} has shape {x.shape}, base {b.shape}")
        if (pattern and pattern.search(name)) or not jnp.issubdtype(b.dtype, jnp.floating):
            out.append(b)
            continue
        if layout == "ours":
            out.append(_merge_ours(_path_parts(path), b, ms, spec, schedule, checks))
        else:
            s = spec if schedule is None else schedule.spec_for(spec, name)
            out.append(_merge_leaf(name, b, tuple(ms), keys_for(s, name, len(ms)), s, checks))
    flags = [finite for _, _, finite in checks]
    if not any(isinstance(f, jax.core.Tracer) for f in flags):  # (traced: the caller's jit has no host to ask)
        for (name, s, _), finite in zip(checks, jax.device_get(flags)):
            if not finite:
                raise nonfinite_error(name, s)
    return jax.tree_util.tree_unflatten(treedef, out)


def _count_layers(flat, layout: str) -> int:
    if layout == "ours":
        return max((leaf.shape[0] for path, leaf in flat if _path_parts(path)[:2] == ("model", "layers")), default=1)
    found = [i for path, _ in flat if (i := layer_index(_path_name(path) + ".")) is not None]
    return max(found, default=0) + 1
