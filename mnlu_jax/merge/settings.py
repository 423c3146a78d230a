"""Merge parameters that vary by tensor, as mergekit writes them: a number, a gradient over the layers, or a list
of conditions picked by a substring of the tensor's name.

    t: 0.5                                   # every tensor
    t: [0.0, 0.5, 1.0]                       # interpolated over the layers: layer i of L sits at i / (L - 1)
    t:                                       # the first entry whose filter is in the tensor's name
      - {filter: self_attn, value: [0.0, 1.0]}
      - {filter: mlp, value: [1.0, 0.0]}
      - {value: 0.5}                         # no filter (or "*"): everything else

As in mergekit 0.1.5: a gradient of n values puts layer i of L at x = i / (L - 1) (a single layer at 1), and its
value is the straight line between the two entries around x·(n − 1); tensors outside the layers (embeddings, the
final norm, the LM head) sit at 0. The settings apply to MergeSpec's numeric fields (`t`, `lam`, `drop_rate`,
`epsilon`, `gamma`) and to each model's weight; `spec_for` gives the spec of one tensor.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from mnlu_jax.merge.math import MergeSpec, check_per_model_names
from mnlu_jax.weights.names import layer_index

SCHEDULABLE = ("t", "lam", "drop_rate", "epsilon", "gamma", "select_topk")


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _gradient(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(_number(v) for v in x)


def check_setting(field: str, setting: Any) -> None:
    """A number, a non-empty list of numbers, or a list of {filter, value} with such values; else a ValueError
    naming the field."""
    if _number(setting) or _gradient(setting):
        return
    if isinstance(setting, list) and setting and all(isinstance(c, dict) for c in setting):
        for k, cond in enumerate(setting):
            unknown = sorted(set(cond) - {"filter", "value"})
            if unknown or "value" not in cond:
                # mergekit drops keys it does not know, so its condition then matches every tensor
                hint = (f" (unknown key(s) {unknown}: mergekit ignores them, and its condition then applies to every "
                        "tensor; a condition's tensor-name part is `filter:`)") if unknown else ""
                raise ValueError(f"{field}[{k}]: expected {{filter: <part of a tensor name>, value: ...}}, "
                                 f"got {cond!r}{hint}")
            if cond.get("filter") is not None and not isinstance(cond["filter"], str):
                raise ValueError(f"{field}[{k}].filter: expected a string, got {cond['filter']!r}")
            if not (_number(cond["value"]) or _gradient(cond["value"])):
                raise ValueError(f"{field}[{k}].value: expected a number or a list of numbers, got {cond['value']!r}")
        return
    raise ValueError(f"{field}: expected a number, a list of numbers (a gradient over the layers) or a list of "
                     f"{{filter, value}} conditions, got {setting!r}")


def check_settings(settings: dict[str, Any], weights: list[Any] | None = None,
                   per_model: dict[str, list[Any]] | None = None) -> None:
    """Every setting of MergeSpec's fields (by name), of the models' weights and of the per-model fields well
    formed, else a ValueError naming it."""
    for name, s in settings.items():
        if name not in SCHEDULABLE:
            raise ValueError(f"{name}: not a merge parameter that can vary by tensor ({', '.join(SCHEDULABLE)}, "
                             f"weights)")
        check_setting(name, s)
    for i, w in enumerate(weights or []):
        check_setting(f"weights[{i}]", w)
    check_per_model_names(per_model or {})
    for name, values in (per_model or {}).items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"per_model.{name}: expected a list with one setting per model, got {values!r}")
        for i, v in enumerate(values):
            check_setting(f"per_model.{name}[{i}]", v)


def layer_position(tensor_name: str, num_layers: int) -> float:
    index = layer_index(tensor_name)
    if index is None:
        return 0.0
    return index / (num_layers - 1) if num_layers > 1 else 1.0


def resolve(setting: Any, tensor_name: str, position: float) -> float | None:
    """The setting's value for this tensor (None: no condition applies), by mergekit's `evaluate_setting`."""
    if _number(setting):
        return float(setting)
    if _gradient(setting):
        scaled = position * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    for cond in setting:
        if cond.get("filter") in (None, "*") or cond["filter"] in tensor_name:
            return resolve(cond["value"], tensor_name, position)
    return None


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Settings of MergeSpec fields (`fields`) and of the models' weights (`weights`, one per model) that are not
    plain numbers; `num_layers` places each layer on the gradients (the merge sets it from the checkpoints)."""
    fields: tuple[tuple[str, Any], ...] = ()
    weights: tuple[Any, ...] | None = None
    num_layers: int | None = None
    per_model: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # per-model fields with a setting that varies

    @staticmethod
    def make(settings: dict[str, Any], weights: list[Any] | None = None,
             num_layers: int | None = None, per_model: dict[str, list[Any]] | None = None) -> Schedule | None:
        check_settings(settings, weights, per_model)
        fields = tuple((k, _freeze(v)) for k, v in settings.items() if not _number(v))
        varying = weights is not None and not all(_number(w) for w in weights)
        per = tuple((k, tuple(_freeze(x) for x in v)) for k, v in (per_model or {}).items()
                    if not all(_number(x) for x in v))
        if not fields and not varying and not per:
            return None
        return Schedule(fields, tuple(_freeze(w) for w in weights) if varying else None, num_layers, per)

    def spec_for(self, spec: MergeSpec, tensor_name: str, position: float | None = None) -> MergeSpec:
        """`spec` with this tensor's values; `position` places it on the gradients (None: its layer among
        `num_layers`; a merge by slices gives each tensor its place in its slice)."""
        if position is None:
            if self.num_layers is None:
                raise ValueError("Schedule.num_layers is not set (the number of layers places them on the gradients)")
            position = layer_position(tensor_name, self.num_layers)
        changes = {}
        for name, setting in self.fields:
            changes[name] = _resolved(name, setting, tensor_name, position)
        if self.weights is not None:
            changes["weights"] = tuple(_resolved(f"weights[{i}]", w, tensor_name, position)
                                       for i, w in enumerate(self.weights))
        if self.per_model:
            resolved = dict(spec.per_model)
            for name, settings in self.per_model:
                resolved[name] = tuple(_resolved(f"per_model.{name}[{i}]", x, tensor_name, position)
                                       for i, x in enumerate(settings))
            changes["per_model"] = tuple(resolved.items())
        return dataclasses.replace(spec, **changes)

    def record(self) -> dict:
        out = {k: _thaw(v) for k, v in self.fields}
        if self.weights is not None:
            out["weights"] = [_thaw(w) for w in self.weights]
        if self.per_model:
            out["per_model"] = {k: [_thaw(x) for x in v] for k, v in self.per_model}
        return out


def _resolved(name: str, setting: Any, tensor_name: str, position: float) -> float:
    value = resolve(_thaw(setting), tensor_name, position)
    if value is None:
        raise ValueError(f"{name}: no condition applies to tensor {tensor_name} (add one without a filter)")
    return value


def _freeze(x: Any) -> Any:
    """Lists and dicts as tagged tuples, so that a Schedule (a frozen dataclass) hashes and compares by value."""
    if isinstance(x, list):
        return ("list", tuple(_freeze(v) for v in x))
    if isinstance(x, dict):
        return ("dict", tuple(sorted((k, _freeze(v)) for k, v in x.items())))
    return x


def _thaw(x: Any) -> Any:
    if isinstance(x, tuple) and x and x[0] == "list":
        return [_thaw(v) for v in x[1]]
    if isinstance(x, tuple) and x and x[0] == "dict":
        return {k: _thaw(v) for k, v in x[1]}
    return x
