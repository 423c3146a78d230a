"""Memory-mapped safetensors reading and sharded writing, with numpy (bf16 through ml_dtypes).

We parse the format ourselves (8-byte header length, JSON header, raw little-endian bytes) so that
tensors are read lazily through `np.memmap`: a 7B checkpoint never has to be resident at once, and
bf16 round-trips bit for bit without going through torch.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path
from typing import Callable, Iterator

import ml_dtypes
import numpy as np

log = logging.getLogger(__name__)

DTYPE_FROM_ST = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
ST_FROM_DTYPE = {np.dtype(v): k for k, v in DTYPE_FROM_ST.items()}
INDEX_NAME = "model.safetensors.index.json"


class SafetensorsFile:
    """Lazy view of one .safetensors file: `names()`, `shape(name)`, `get(name)` (a read-only memmap)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.path}: not a readable safetensors file ({e})") from e
        self.metadata = header.pop("__metadata__", {}) or {}
        self.header = header
        self.data_start = 8 + n
        size = self.path.stat().st_size
        for name, info in header.items():
            if info["dtype"] not in DTYPE_FROM_ST:
                raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {info['dtype']}")
            end = info["data_offsets"][1]
            if self.data_start + end > size:
                raise ValueError(f"{self.path}: tensor {name!r} extends past the end of the file (truncated?)")

    def names(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(DTYPE_FROM_ST[self.header[name]["dtype"]])

    def get(self, name: str) -> np.ndarray:
        info = self.header[name]
        start, end = info["data_offsets"]
        dtype = np.dtype(DTYPE_FROM_ST[info["dtype"]])
        shape = tuple(info["shape"])
        if end == start:
            return np.zeros(shape, dtype)
        return np.memmap(self.path, dtype=dtype, mode="r", offset=self.data_start + start, shape=shape)


class SafetensorsCheckpoint:
    """A directory (or single file) of safetensors, sharded through an index or not."""

    def __init__(self, path: str | Path):
        path = Path(path)
        weight_map = None
        if path.is_file():
            files = [path]
        elif (path / INDEX_NAME).exists():
            try:
                weight_map = json.loads((path / INDEX_NAME).read_text())["weight_map"]
                files = sorted({path / f for f in weight_map.values()})
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise ValueError(f"{path / INDEX_NAME}: malformed index ({e}); expected a 'weight_map' object") from e
        else:
            files = sorted(path.glob("*.safetensors"))
            # Mistral's own repositories ship `consolidated.safetensors` (its reference code's tensor names) beside
            # the HF files; with no index to say which to read, read the HF files
            files = [f for f in files if not f.name.startswith("consolidated")] or files
        if not files:
            raise FileNotFoundError(f"{path}: no *.safetensors files (and no {INDEX_NAME})")
        for f in files:
            if not f.exists():
                raise FileNotFoundError(f"{f}: listed in {INDEX_NAME} but missing")
        self.files = [SafetensorsFile(f) for f in files]
        self.where: dict[str, SafetensorsFile] = {}
        for f in self.files:
            for name in f.names():
                if name in self.where:  # the later shard's copy would replace the earlier one unseen
                    raise ValueError(f"{path}: tensor {name!r} is in both {self.where[name].path.name} and "
                                     f"{f.path.name}")
                self.where[name] = f
        if weight_map is not None:
            # the index must not contradict the shards (a listed tensor absent from them all is left to the name
            # check: tied heads are listed without being stored in some repositories)
            wrong = [(n, f) for n, f in weight_map.items() if n in self.where and self.where[n].path.name != f]
            if wrong:
                n, f = wrong[0]
                raise ValueError(f"{path / INDEX_NAME}: {len(wrong)} tensors listed in the wrong shard, e.g. {n!r} in "
                                 f"{f}, which is in {self.where[n].path.name}")
            unlisted = sorted(f.name for f in set(path.glob("*.safetensors")) - set(files)
                              if not f.name.startswith("consolidated"))
            if unlisted:
                log.warning("%s: shards %s are not in %s and are not read", path, unlisted, INDEX_NAME)

    def names(self) -> list[str]:
        return list(self.where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.where[name].shape(name)

    def dtype(self, name: str) -> np.dtype:
        return self.where[name].dtype(name)

    def get(self, name: str) -> np.ndarray:
        if name not in self.where:
            raise KeyError(f"tensor {name!r} not found in {[str(f.path) for f in self.files]}")
        return self.where[name].get(name)


def _header_bytes(specs: list[tuple[str, tuple[int, ...], np.dtype]], metadata: dict | None = None) -> bytes:
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, shape, dt in specs:
        dt = np.dtype(dt)
        if dt not in ST_FROM_DTYPE:
            raise ValueError(f"tensor {name!r}: dtype {dt} cannot be stored in safetensors")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        header[name] = {"dtype": ST_FROM_DTYPE[dt], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)  # align the data section to 8 bytes, as the reference writer does


def plan_shards(specs: list[tuple[str, tuple[int, ...], np.dtype]], max_shard_bytes: int) -> list[list[int]]:
    """Group tensor indices into shards of at most `max_shard_bytes` (a larger tensor gets its own shard)."""
    shards: list[list[int]] = [[]]
    size = 0
    for i, (_, shape, dt) in enumerate(specs):
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += nbytes
    return [s for s in shards if s] or [[]]


def write_sharded(
    out_dir: str | Path,
    specs: list[tuple[str, tuple[int, ...], np.dtype]],
    produce: Callable[[str], np.ndarray],
    max_shard_bytes: int = 5 * 2**30,
) -> dict:
    """Stream tensors into `model-0000i-of-0000N.safetensors` (+ index when N > 1).

    The layout is planned from `(name, shape, dtype)` first, so each header is written before its data and
    only the tensor being written is in memory: `produce(name)` is called once per tensor, in order.
    A produced array whose shape or dtype differs from its spec is an error naming the tensor.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = plan_shards(specs, max_shard_bytes)
    n = len(groups)
    weight_map: dict[str, str] = {}
    total = 0
    for k, group in enumerate(groups):
        fname = "model.safetensors" if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        part = [specs[i] for i in group]
        raw = _header_bytes(part)
        tmp = out_dir / f".{fname}.tmp"
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name, shape, dt in part:
                arr = produce(name)
                if tuple(arr.shape) != tuple(shape) or np.dtype(arr.dtype) != np.dtype(dt):
                    raise ValueError(f"tensor {name!r}: produced {arr.shape} {arr.dtype}, planned {shape} {np.dtype(dt)}")
                # the array's own bytes, not a copy of them (`tobytes` would copy each tensor once more)
                f.write(memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8)))
                total += arr.nbytes
                weight_map[name] = fname
                del arr
        os.replace(tmp, out_dir / fname)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    if n > 1:
        (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return index


def iter_tensors(ckpt: SafetensorsCheckpoint) -> Iterator[tuple[str, np.ndarray]]:
    for name in ckpt.names():
        yield name, ckpt.get(name)
