"""Device meshes and the logical-axis rules that map parameter/activation axes onto them.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with parameters and optimizer state sharded),
`tensor` (Megatron-style tensor parallel over heads, MLP and vocabulary). Any factorisation of the devices
works; -1 in one axis means "the rest". Rules are a short table, as in MaxText/Levanter.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    ("length", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    dims = [data, fsdp, tensor]
    if dims.count(-1) > 1:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, dims))}: at most one axis may be -1")
    known = math.prod(d for d in dims if d != -1)
    if -1 in dims:
        if n % known:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, dims))}: {n} devices are not divisible by {known}")
        dims[dims.index(-1)] = n // known
    if math.prod(dims) != n:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, dims))} needs {math.prod(dims)} devices, found {n}")
    return Mesh(np.array(devices).reshape(dims), MESH_AXES)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> P:
    """PartitionSpec for an array; a mesh axis is dropped where the dimension does not divide (replicated)."""
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name, dim in zip(axes, shape):
        target = table.get(name) if name else None
        if target is None:
            out.append(None)
            continue
        names = (target,) if isinstance(target, str) else tuple(target)
        names = tuple(a for a in names if a not in used and mesh.shape[a] > 1)
        size = math.prod(mesh.shape[a] for a in names) if names else 1
        if not names or dim % size:
            out.append(None)
            continue
        used.update(names)
        out.append(names[0] if len(names) == 1 else names)
    return P(*out)


def tree_shardings(axes_tree: Any, shapes_tree: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """NamedShardings for a pytree, given its logical-axes tree and a matching tree of shapes/arrays."""
    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)  # noqa: E731
    return jax.tree_util.tree_map(
        lambda ax, arr: NamedSharding(mesh, logical_to_spec(ax, getattr(arr, "shape", arr), mesh, rules)),
        axes_tree, shapes_tree, is_leaf=is_axes)


def param_shardings(config, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    from mnlu_jax.model.mistral import param_logical_axes, param_shapes

    shapes = param_shapes(config)
    return tree_shardings(param_logical_axes(config), shapes, mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int = 2, rules=DEFAULT_RULES) -> NamedSharding:
    table = dict(rules)
    names = tuple(a for a in table["batch"] if mesh.shape[a] > 1)
    spec = [names if names else None] + [None] * (ndim - 1)
    return NamedSharding(mesh, P(*spec))
