"""Typed configs: dataclasses loaded from YAML, with `key=value` (dotted for nesting) overrides."""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if typ is Any or typ is None:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise ValueError(f"{where}: {value!r} does not fit {typ}")
    if dataclasses.is_dataclass(typ):
        if isinstance(value, typ):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping for {typ.__name__}, got {value!r}")
        return from_dict(typ, value, where, nested=True)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if typ in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected {typ.__name__}, got {value!r}")
        try:
            return typ(value) if typ is float or isinstance(value, int) or str(value).lstrip("-").isdigit() else int(float(value))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: expected {typ.__name__}, got {value!r}") from e
    if typ is str:
        return str(value)
    return value


def from_dict(cls: type[T], data: dict, where: str = "config", nested: bool = False) -> T:
    """`cls` from a mapping, each value coerced to its field's type; errors name the field as `where: a.b.c` (the
    file, then the dotted key an override would use)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    kw = {k: _coerce(v, hints[k], f"{where}.{k}" if nested else f"{where}: {k}") for k, v in data.items()}
    return cls(**kw)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b=3` sets data['a']['b'] = 3 (values parsed as YAML scalars)."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"{path}: cannot read YAML config: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"{path}: top level must be a mapping")
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data, where=str(path) if path else cls.__name__)


def to_dict(cfg: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write through a temporary file and a rename: a reader (another process, a crash) sees the old file or the
    new one, never half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_csv_atomic(path: str | Path, rows: list[list]) -> None:
    """Rows (the first a header) as CSV, through `write_text_atomic`."""
    import csv
    import io

    table = io.StringIO(newline="")
    csv.writer(table).writerows(rows)
    write_text_atomic(path, table.getvalue())


def changed_settings(before: dict, now: dict, keys: Any = None) -> list[str]:
    """`"key: old then, new now"` for each of `keys` (default: every key of either) whose value differs: how the
    rerun checks (generate's run record, a resumed training run, pipeline stages) say what changed."""
    keys = sorted(set(before) | set(now)) if keys is None else keys
    return [f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" for k in keys if before.get(k) != now.get(k)]


def save_config(cfg: Any, path: str | Path) -> None:
    """Atomic: a resumed run's other processes read the file while process 0 rewrites it."""
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
