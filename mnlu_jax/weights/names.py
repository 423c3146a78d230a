"""The one table between Hugging Face tensor names and our parameter paths (both directions use it).

Our path components are HF's, with the layer index removed (layers are stacked on axis 0) and the
linear layers' `weight` (out, in) stored as `kernel` (in, out): conversion is rename + transpose + stack.
"""

from __future__ import annotations

import re
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


def hf_to_ours(array: np.ndarray, entry: Entry) -> np.ndarray:
    return array.T if entry.transpose else array


def ours_to_hf(array: np.ndarray, entry: Entry) -> np.ndarray:
    return np.ascontiguousarray(array.T) if entry.transpose else np.asarray(array)


# HF checkpoints may carry buffers that are not parameters; they are recomputed, never needed.
IGNORED_HF_TENSORS = re.compile(r"(rotary_emb\.inv_freq|\.masked_bias|\.attn\.bias)$")
