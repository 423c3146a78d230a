"""Memory-mapped safetensors reading and sharded writing, with numpy (bf16 through ml_dtypes).

We parse the format ourselves (8-byte header length, JSON header, raw little-endian bytes) so that
tensors are read lazily through `np.memmap`: a 7B checkpoint never has to be resident at once, and
bf16 round-trips bit for bit without going through torch.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterable, Iterator

import ml_dtypes
import numpy as np

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
        if path.is_file():
            files = [path]
        elif (path / INDEX_NAME).exists():
            try:
                index = json.loads((path / INDEX_NAME).read_text())
                files = sorted({path / f for f in index["weight_map"].values()})
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{path / INDEX_NAME}: malformed index ({e}); expected a 'weight_map' object") from e
        else:
            files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{path}: no *.safetensors files (and no {INDEX_NAME})")
        for f in files:
            if not f.exists():
                raise FileNotFoundError(f"{f}: listed in {INDEX_NAME} but missing")
        self.files = [SafetensorsFile(f) for f in files]
        self.where: dict[str, SafetensorsFile] = {}
        for f in self.files:
            for name in f.names():
                self.where[name] = f

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


def _write_file(path: Path, tensors: list[tuple[str, np.ndarray]], metadata: dict | None = None) -> None:
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, arr in tensors:
        dt = np.dtype(arr.dtype)
        if dt not in ST_FROM_DTYPE:
            raise ValueError(f"tensor {name!r}: dtype {dt} cannot be stored in safetensors")
        nbytes = arr.size * dt.itemsize
        header[name] = {"dtype": ST_FROM_DTYPE[dt], "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, arr in tensors:
            f.write(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())


def write_sharded(
    out_dir: str | Path, tensors: Iterable[tuple[str, np.ndarray]], max_shard_bytes: int = 5 * 2**30
) -> dict:
    """Write `(name, array)` pairs as `model-0000i-of-0000N.safetensors` + index; at most one shard in memory.

    Returns the index dict. Shards are written as they fill, under temporary names, then renamed to the
    `-of-N` names once N is known.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[list[str]] = []
    buf: list[tuple[str, np.ndarray]] = []
    buf_bytes, total = 0, 0
    tmp_names: list[Path] = []

    def flush() -> None:
        nonlocal buf, buf_bytes
        if not buf:
            return
        p = out_dir / f".shard-{len(tmp_names):05d}.tmp"
        _write_file(p, buf)
        tmp_names.append(p)
        shards.append([n for n, _ in buf])
        buf, buf_bytes = [], 0

    for name, arr in tensors:
        nbytes = arr.size * arr.dtype.itemsize
        if buf and buf_bytes + nbytes > max_shard_bytes:
            flush()
        buf.append((name, arr))
        buf_bytes += nbytes
        total += nbytes
    flush()
    n = len(tmp_names)
    weight_map = {}
    if n == 1:
        final = out_dir / "model.safetensors"
        os.replace(tmp_names[0], final)
        for name in shards[0]:
            weight_map[name] = final.name
    else:
        for i, (p, names) in enumerate(zip(tmp_names, shards)):
            final = out_dir / f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(p, final)
            for name in names:
                weight_map[name] = final.name
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    if n > 1:
        (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return index


def iter_tensors(ckpt: SafetensorsCheckpoint) -> Iterator[tuple[str, np.ndarray]]:
    for name in ckpt.names():
        yield name, ckpt.get(name)
