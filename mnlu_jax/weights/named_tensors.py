"""Random access to one checkpoint's HF-named tensors without loading the whole model.

The streaming merge, merge statistics and GGUF export read checkpoints through this, one tensor at a time:
- HF safetensors (one file or sharded): memory-mapped, each tensor read when asked for;
- GGUF files: memory-mapped, each tensor dequantised (and its Q/K rows unpermuted) when asked for;
- our Orbax checkpoints: one stacked parameter (every layer's copy of one weight) restored at a time with Orbax's
  partial restore and kept until a tensor of another parameter is asked for, so host memory holds the largest
  stacked parameter, not the model (a 7B Mistral's MLP weight is 32 × 4096 × 14336: 3.8 GB in bf16, against
  14.5 GB for the model). `names()` lists a checkpoint's tensors parameter by parameter, and `ordered` puts any
  list of names in that order, so that readers walking the names restore each parameter once;
- PyTorch `.bin` files: torch's zip format memory-mapped (`torch.load(mmap=True)`), each tensor read when asked
  for; the legacy pre-1.6 format read whole, which torch.load cannot map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnlu_jax.model.config import ModelConfig
from mnlu_jax.weights import names as N
from mnlu_jax.weights.convert import TensorSource, is_our_checkpoint, params_metadata, trim_heap


def ordered(names: list[str], config: ModelConfig) -> list[str]:
    """`names` in `N.entries` order (parameter by parameter, layers inside), unknown names last, as given."""
    rank = {e.hf_name: i for i, e in enumerate(N.entries(config))}
    return sorted(names, key=lambda n: rank.get(n, len(rank)))


class _OrbaxParams:
    """HF-named tensors of our checkpoint, restored one stacked parameter at a time."""

    def __init__(self, params_dir: Path, config: ModelConfig):
        import orbax.checkpoint as ocp

        self.dir = params_dir.absolute()
        self.checkpointer = ocp.PyTreeCheckpointer()
        self.entries = {e.hf_name: e for e in N.entries(config)}
        tree = params_metadata(self.dir)
        # every tensor the architecture has is in the checkpoint, with its shape
        self.meta = {name: self._leaf_meta(tree, e, config.num_hidden_layers) for name, e in self.entries.items()}
        self._held: tuple[tuple[str, ...], np.ndarray] | None = None

    def names(self) -> list[str]:
        return list(self.entries)  # N.entries order: parameter by parameter

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name].hf_shape)

    def _leaf_meta(self, tree: dict, e: N.Entry, num_layers: int):
        node = tree
        for k in e.path:
            if not isinstance(node, dict) or k not in node:
                raise ValueError(f"{self.dir}: parameter {'/'.join(e.path)} missing from the checkpoint")
            node = node[k]
        expected = ((num_layers,) if e.layer is not None else ()) + e.ours_shape
        if tuple(node.shape) != expected:
            raise ValueError(f"{self.dir}: parameter {'/'.join(e.path)} has shape {tuple(node.shape)}, expected "
                             f"{expected} for {e.hf_name}")
        return node

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(self.meta[name].dtype)

    def get(self, name: str) -> np.ndarray:
        import jax
        import orbax.checkpoint as ocp

        e = self.entries[name]
        if self._held is None or self._held[0] != e.path:
            self._held = None  # let the previous parameter go before the next one is read
            trim_heap()
            item: dict = {}
            node = item
            for k in e.path[:-1]:
                node = node.setdefault(k, {})
            m = self.meta[name]
            node[e.path[-1]] = jax.ShapeDtypeStruct(tuple(m.shape), m.dtype)
            restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
            restored = self.checkpointer.restore(
                self.dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True))
            for k in e.path:
                restored = restored[k]
            self._held = (e.path, np.asarray(restored))
        leaf = self._held[1]
        return N.ours_to_hf(leaf[e.layer] if e.layer is not None else leaf, e)


class _GGUFTensors:
    """A GGUF file's tensors by HF name, dequantised to fp32 when read (as the in-memory reader gives them)."""

    def __init__(self, path: Path, config: ModelConfig):
        from mnlu_jax.weights.gguf_io import gguf_tensor_index

        self.index = gguf_tensor_index(path, config)

    def names(self) -> list[str]:
        return list(self.index)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.index[name].shape

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(np.float32)

    def get(self, name: str) -> np.ndarray:
        return self.index[name].read()


class _InMemory:
    def __init__(self, tensors: dict[str, np.ndarray]):
        self.tensors = tensors

    def names(self) -> list[str]:
        return list(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(self.tensors[name].dtype)

    def get(self, name: str) -> np.ndarray:
        return self.tensors[name]


class NamedTensors:
    """HF-named tensors of one checkpoint, read lazily (see the module docstring), with its config and the source
    of its tokenizer (`tokenizer_source`: a directory, or the GGUF file itself)."""

    def __init__(self, path: str | Path):
        from mnlu_jax.weights.lora import LoraApplied, read_adapter, split_reference

        self.path = Path(path)
        model, adapter = split_reference(path)  # mergekit's MODEL+LORA: the adapter merged in as tensors are read
        self._open(Path(model))
        if adapter is not None:
            self._reader = LoraApplied(self._reader, read_adapter(adapter), str(model))

    def _open(self, path: Path) -> None:
        if path.is_dir() and is_our_checkpoint(path):
            self.config = ModelConfig.from_json_file(path / "config.json")
            self._reader = _OrbaxParams(path / "params", self.config)
            self.dir = path
            self.tokenizer_source: Path | None = path
            self.gguf: Path | None = None
            return
        ts = TensorSource(path)
        self.config = ts.config
        self.dir = ts.tokenizer_dir
        self.gguf = ts.gguf
        self.tokenizer_source = ts.gguf or ts.tokenizer_dir
        if ts.kind == "safetensors":
            self._reader = ts.st
        elif ts.kind == "gguf":
            self._reader = _GGUFTensors(ts.gguf, self.config)
        else:
            self._reader = _InMemory(dict(ts.items()))

    def names(self) -> list[str]:
        return list(self._reader.names())

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._reader.shape(name))

    def dtype(self, name: str) -> np.dtype:
        return self._reader.dtype(name)

    def get(self, name: str) -> np.ndarray:
        return self._reader.get(name)

    def check(self) -> None:
        """Every tensor the architecture has is here with its shape, and nothing it has no place for (which a
        conversion would otherwise lose)."""
        present = set(self.names())
        entries = N.entries(self.config)
        unexpected = sorted(n for n in present - {e.hf_name for e in entries}
                            if not N.IGNORED_HF_TENSORS.search(n)
                            and not (n == "lm_head.weight" and self.config.tie_word_embeddings))
        if unexpected:
            raise ValueError(f"{self.path}: tensors a {self.config.model_type} model does not have: {unexpected[:10]}"
                             + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else ""))
        for e in entries:
            if e.hf_name not in present:
                raise ValueError(f"{self.path}: tensor {e.hf_name} missing")
            if self.shape(e.hf_name) != tuple(e.hf_shape):
                raise ValueError(f"{self.path}: tensor {e.hf_name} has shape {self.shape(e.hf_name)}, expected "
                                 f"{tuple(e.hf_shape)}")


def lazy_params(source: NamedTensors, dtype: str | None = None, bar=None) -> dict:
    """The parameter pytree of `source` (checked with `check()`) as `LazyParam`s: each stacked parameter is read
    layer by layer from the source when it is saved. `dtype` casts (default: the source's); `bar` (tqdm) counts
    the bytes built."""
    from mnlu_jax.weights.convert import LazyParam, np_dtype

    target = np_dtype(dtype)
    groups: dict[tuple[str, ...], list[N.Entry]] = {}
    for e in N.entries(source.config):  # layer entries of one parameter are consecutive, layer 0 first
        groups.setdefault(e.path, []).append(e)

    def build(entries: list[N.Entry], shape: tuple[int, ...], dt: np.dtype):
        def fill() -> np.ndarray:
            out = np.empty(shape, dt)
            for e in entries:
                N.hf_to_ours(source.get(e.hf_name), e, out=out if e.layer is None else out[e.layer])
            if bar is not None:
                bar.update(out.nbytes)
            return out
        return fill

    params: dict = {}
    total = 0
    for path, entries in groups.items():
        e0 = entries[0]
        shape = ((len(entries),) if e0.layer is not None else ()) + e0.ours_shape
        dt = target or source.dtype(e0.hf_name)
        node = params
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = LazyParam(shape, dt, build(entries, shape, dt))
        total += node[path[-1]].nbytes
    if bar is not None:
        bar.total = total
    return params
