"""Typed configs: dataclasses loaded from YAML, with `key=value` (dotted for nesting) overrides."""

from __future__ import annotations

import dataclasses
import difflib
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
        raise ValueError(f"{where}: unknown field(s) {unknown} for {cls.__name__}{_did_you_mean(unknown, names)}; "
                         f"known: {sorted(names)}")
    kw = {k: _coerce(v, hints[k], f"{where}.{k}" if nested else f"{where}: {k}") for k, v in data.items()}
    return cls(**kw)


def _did_you_mean(unknown: list[str], names: Any) -> str:
    close = [m for u in unknown for m in difflib.get_close_matches(u, sorted(names), n=1, cutoff=0.6)]
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def _dataclass_of(typ: Any) -> Any:
    """The dataclass a field holds (`X` or `X | None`), else None: overrides below it are checked by name."""
    if dataclasses.is_dataclass(typ):
        return typ
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(typ) if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


def check_override_key(cls: type, item: str) -> None:
    """Name an override whose dotted key is not a field of `cls` here, not later as a config-file error: the key
    is the user's typo on the command line, and the YAML file the later error would name does not hold it."""
    key = item.split("=", 1)[0].strip()
    node: Any = cls
    for depth, part in enumerate(key.split(".")):
        names = {f.name for f in dataclasses.fields(node)}
        if part not in names:
            where = ".".join(key.split(".")[:depth]) or node.__name__
            raise ValueError(f"override {item!r}: {where} has no field {part!r}{_did_you_mean([part], names)}; "
                             f"known: {sorted(names)}")
        node = _dataclass_of(typing.get_type_hints(node)[part])
        if node is None:  # a scalar, list or free mapping: the value's own check names what is wrong
            return


def apply_overrides(data: dict, overrides: list[str], cls: type | None = None) -> dict:
    """`a.b=3` sets data['a']['b'] = 3 (values parsed as YAML scalars); with `cls`, each key is first checked
    against its fields."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key=value")
        if cls is not None:
            check_override_key(cls, item)
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys in a mapping without a word; a config that sets `learning_rate`
    twice then trains with whichever came last. Here a repeated key is an error naming both lines."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is set twice in one mapping (first on line {seen[key] + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """A YAML file's contents, refusing repeated keys. A syntax error is one line, `file:line:column: problem`,
    not PyYAML's several lines that quote `<unicode string>` for the file."""
    try:
        return yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ValueError(f"{where}: {'; '.join(x for x in (e.context, e.problem) if x)}") from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                translate: Any = None) -> T:
    """`cls` from a YAML file and overrides. `translate(data, where)` turns a file in another tool's format
    (a mergekit config) into `cls`'s fields before the overrides apply."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            data = read_yaml(path) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"{path}: cannot read YAML config: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"{path}: top level must be a mapping")
        if translate is not None:
            data = translate(data, str(path))
    data = apply_overrides(data, overrides or [], cls)
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
