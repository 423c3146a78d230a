"""The one table between Hugging Face tensor names and our parameter paths (both directions use it).

Our path components are HF's, with the layer index removed (layers are stacked on axis 0) and the
linear layers' `weight` (out, in) stored as `kernel` (in, out): conversion is rename + transpose + stack.
"""

from __future__ import annotations

import functools
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from mnlu_jax.model.config import ModelConfig
from mnlu_jax.model.mistral import param_shapes

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The decoder layer a tensor name belongs to (`model.layers.3.mlp...` -> 3), None outside the layers."""
    m = _LAYER_INDEX.search(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Entry:
    hf_name: str                  # e.g. model.layers.3.self_attn.q_proj.weight
    path: tuple[str, ...]         # e.g. ("model", "layers", "self_attn", "q_proj", "kernel")
    layer: int | None             # index on the stacked axis, None for unstacked tensors
    transpose: bool               # HF (out, in) <-> ours (in, out)
    hf_shape: tuple[int, ...]

    @property
    def ours_shape(self) -> tuple[int, ...]:
        """This tensor's shape in our layout (one layer's, for a stacked parameter)."""
        return tuple(reversed(self.hf_shape)) if self.transpose else tuple(self.hf_shape)


def hf_name(path: tuple[str, ...], layer: int | None) -> str:
    parts = list(path[:-1]) + ["weight"]
    if layer is not None:
        parts.insert(2, str(layer))  # model.layers.<i>.…
    return ".".join(parts)


def entries(config: ModelConfig) -> list[Entry]:
    """Every HF tensor of this architecture, in HF's usual order."""
    shapes = param_shapes(config)
    out: list[Entry] = []

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, prefix + (k,))
            else:
                path = prefix + (k,)
                transpose = k == "kernel"
                stacked = path[:2] == ("model", "layers")
                shape = v[1:] if stacked else v
                hf_shape = tuple(reversed(shape)) if transpose else tuple(shape)
                if stacked:
                    for i in range(config.num_hidden_layers):
                        out.append(Entry(hf_name(path, i), path, i, transpose, hf_shape))
                else:
                    out.append(Entry(hf_name(path, None), path, None, transpose, hf_shape))

    walk(shapes, ())
    return out


def hf_to_ours(array: np.ndarray, entry: Entry, out: np.ndarray | None = None) -> np.ndarray:
    """HF's tensor in our layout, copied into `out` (e.g. one layer of a stacked parameter; cast to its dtype) or,
    without `out`, a view where no transpose is needed."""
    if out is None:
        return transposed(array) if entry.transpose else array
    return transpose_into(out, array) if entry.transpose else _assign(out, array)


def ours_to_hf(array: np.ndarray, entry: Entry) -> np.ndarray:
    return transposed(array) if entry.transpose else np.asarray(array)


def _assign(out: np.ndarray, array: np.ndarray) -> np.ndarray:
    out[...] = array
    return out


# A weight's transpose, copied: numpy's strided copy runs at ~0.5 GB/s here, which made transposing most of the
# time of a checkpoint conversion. Reading 16 source rows at a time fills 16 contiguous elements of every
# destination row, and the row blocks are split over threads (numpy releases the GIL for plain integer copies):
# 3-6x faster on 2 cores for 2048 x 5632 ... 14336 x 4096 bf16 weights.
_ROWS_PER_BLOCK = 16
_WORKERS = min(4, os.cpu_count() or 1)


@functools.cache
def _threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="transpose")


def transposed(array: np.ndarray) -> np.ndarray:
    """`array.T` of a 2-D array as a new C-contiguous array."""
    array = np.asarray(array)
    return transpose_into(np.empty(array.shape[::-1], array.dtype), array)


def transpose_into(out: np.ndarray, array: np.ndarray) -> np.ndarray:
    """`out[...] = array.T` (cast to `out`'s dtype) for a 2-D array; returns `out`."""
    array = np.asarray(array)
    if out.shape != array.shape[::-1]:
        raise ValueError(f"transpose of {array.shape} into {out.shape}")
    if array.dtype != out.dtype:
        array = array.astype(out.dtype)
    if array.ndim != 2 or array.size < 1 << 20 or array.dtype.hasobject or array.dtype.itemsize not in (1, 2, 4, 8):
        out[...] = array.T
        return out
    bits = np.dtype(f"u{array.dtype.itemsize}")  # the same bytes as plain integers, copied without the GIL
    src, dst = array.view(bits), out.view(bits)
    rows = src.shape[0]
    bounds = [rows * k // _WORKERS // _ROWS_PER_BLOCK * _ROWS_PER_BLOCK for k in range(_WORKERS)] + [rows]

    def part(lo: int, hi: int) -> None:
        for i in range(lo, hi, _ROWS_PER_BLOCK):
            j = min(i + _ROWS_PER_BLOCK, hi)
            dst[:, i:j] = src[i:j].T

    for f in [_threads().submit(part, lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]:
        f.result()
    return out


# HF checkpoints may carry buffers that are not parameters; they are recomputed, never needed.
IGNORED_HF_TENSORS = re.compile(r"(rotary_emb\.inv_freq|\.masked_bias|\.attn\.bias)$")
