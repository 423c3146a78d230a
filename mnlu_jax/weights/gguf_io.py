"""GGUF (llama.cpp) Llama/Mistral files -> HF-named numpy tensors, a ModelConfig and a tokenizer.

Quantised tensors are dequantised with the `gguf` package. llama.cpp's converter permutes the rows of
Q and K (it interleaves the two RoPE halves per head); we undo that here, as transformers does on load,
so the result is in HF layout and no permutation ever reaches the model.

Opening a file parses all of its metadata (`gguf.GGUFReader`: 1.4 s for SmolLM2's 49k-token vocabulary and merges
on a 2-core CPU, with the plain-array view below), and building its tokenizer through transformers takes ≈ 9 s,
while one conversion asks for the config, the tensors and the tokenizer separately. So the reader and the tokenizer
are kept per file (by path, inode, size and modification time, for the last two files), and a caller gets its own
copy of the tokenizer. The tokenizer is also kept on disk (`tokenizer_cache_dir()`: saved as a tokenizer directory
the first time a file's is built, 7 s on a 2-core CPU for SmolLM2's, loaded from there in 0.15 s), keyed by the
file's path, size, modification time, a hash of its first 4 MiB (the metadata, vocabulary included) and the
transformers version that built it, so that every later command and process skips the build.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mnlu_jax.model.config import ModelConfig

log = logging.getLogger(__name__)
TOKENIZER_CACHE_ENV = "MNLU_JAX_TOKENIZER_CACHE"

GGUF_TO_HF = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _file_key(path: str | Path) -> tuple[str, int, int, int]:
    """What identifies a file's contents for the caches: its resolved path, inode, size and modification time (a
    file replaced by a rename, as every writer here does, gets a new inode)."""
    p = Path(path).resolve()
    st = p.stat()
    return str(p), st.st_ino, st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=2)
def _reader(key: tuple[str, int, int, int]):
    import gguf

    class Reader(gguf.GGUFReader):
        """GGUFReader over a plain-ndarray view of its memory map. The reader slices its `data` once per value
        (≈ 500k slices for a 49k-token vocabulary) and each `np.memmap` slice runs numpy's Python-level
        `__array_finalize__`: 2.3× faster and half the memory held (3.2 -> 1.4 s, 157 -> 71 MiB for SmolLM2)."""

        @property
        def data(self):
            return self._plain

        @data.setter
        def data(self, mapped):
            self._plain = mapped.view(np.ndarray)  # the view keeps the map alive through `.base`

    return Reader(key[0])  # read-only memory map: safe to share between callers


def open_gguf(path: str | Path):
    try:
        return _reader(_file_key(path))
    except Exception as e:  # the gguf package raises ValueError/struct errors of many kinds
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from e


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def gguf_config(path: str | Path) -> ModelConfig:
    r = open_gguf(path)
    arch = _field(r, "general.architecture")
    if arch not in ("llama", "mistral"):
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported (expected llama or mistral)")
    p = arch
    names = {t.name for t in r.tensors}
    n_vocab = _field(r, f"{p}.vocab_size") or len(r.fields["tokenizer.ggml.tokens"].data)
    d = _field(r, f"{p}.embedding_length")
    heads = _field(r, f"{p}.attention.head_count")
    if "rope_freqs.weight" in names:
        # llama.cpp stores Llama 3.1-style RoPE scaling as per-frequency factors, which do not give back the
        # rope_scaling parameters a config.json needs; skipping them would change every position's rotation.
        raise ValueError(f"{path}: tensor 'rope_freqs.weight' (llama3-style RoPE frequency factors) is not supported "
                         "in GGUF files; convert from the Hugging Face checkpoint, whose config.json has rope_scaling")
    scaling_type = _field(r, f"{p}.rope.scaling.type")
    rope_scaling = None
    if scaling_type not in (None, "none"):
        rope_scaling = {"rope_type": scaling_type, "factor": _field(r, f"{p}.rope.scaling.factor")}
        original = _field(r, f"{p}.rope.scaling.original_context_length")
        if original is not None:
            rope_scaling["original_max_position_embeddings"] = int(original)
    window = _field(r, f"{p}.attention.sliding_window")
    hf = {
        # llama.cpp writes Mistral as llama; a sliding window (our exports keep it) makes it Mistral again
        "model_type": "mistral" if arch == "mistral" or window is not None else "llama",
        "vocab_size": int(n_vocab),
        "hidden_size": int(d),
        "intermediate_size": int(_field(r, f"{p}.feed_forward_length")),
        "num_hidden_layers": int(_field(r, f"{p}.block_count")),
        "num_attention_heads": int(heads),
        "num_key_value_heads": int(_field(r, f"{p}.attention.head_count_kv", heads)),
        "head_dim": int(_field(r, f"{p}.attention.key_length", d // heads)),
        "max_position_embeddings": int(_field(r, f"{p}.context_length", 4096)),
        "rms_norm_eps": float(_field(r, f"{p}.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(_field(r, f"{p}.rope.freq_base", 10000.0)),
        "rope_scaling": rope_scaling,
        "sliding_window": window,
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": _field(r, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(r, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(r, "tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
    }
    return ModelConfig.from_hf_dict(hf, source=str(path))


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    # Inverse of llama.cpp's `permute`: rows (head, pair, half) -> (head, half, pair).
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a memory-mapped GGUF file (`gguf_tensor_index` keys it by HF name); `read()` gives it as fp32
    in HF's shape and row order (dequantised, Q/K rows unpermuted)."""

    shape: tuple[int, ...]
    tensor: Any                      # gguf.ReaderTensor
    n_head: int | None               # heads whose rows llama.cpp permuted (Q and K), else None

    def read(self) -> np.ndarray:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        t = self.tensor
        if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            arr = np.asarray(t.data).astype(np.float32)
        else:
            arr = dequantize(t.data, t.tensor_type).astype(np.float32)
        arr = arr.reshape(self.shape)
        return _unpermute(arr, self.n_head) if self.n_head is not None else arr


def gguf_tensor_index(path: str | Path, config: ModelConfig) -> dict[str, GGUFTensor]:
    """Every tensor of the file by HF name, in the file's order; nothing is read until `read()`."""
    out: dict[str, GGUFTensor] = {}
    for t in open_gguf(path).tensors:
        stem, _, kind = t.name.rpartition(".")
        if stem.startswith("blk."):
            _, idx, sub = stem.split(".", 2)
            if sub not in GGUF_TO_HF:
                raise ValueError(f"{path}: unexpected GGUF tensor {t.name!r}")
            name = f"model.layers.{idx}.{GGUF_TO_HF[sub]}.{kind}"
        elif stem in GGUF_TO_HF:
            name = f"{GGUF_TO_HF[stem]}.{kind}"
        else:
            raise ValueError(f"{path}: unexpected GGUF tensor {t.name!r}")
        n_head = config.num_attention_heads if name.endswith("self_attn.q_proj.weight") else \
            config.kv_heads if name.endswith("self_attn.k_proj.weight") else None
        shape = tuple(int(x) for x in reversed(t.shape))  # GGUF lists dims fastest-first
        out[name] = GGUFTensor(shape, t, n_head)
    return out


def gguf_tensors(path: str | Path, config: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (HF name, fp32 array in HF shape) one tensor at a time."""
    for name, t in gguf_tensor_index(path, config).items():
        yield name, t.read()


def gguf_tokenizer(path: str | Path):
    """A transformers tokenizer (with the chat template) built from the GGUF metadata (a copy of the cached one:
    callers may add tokens or change settings)."""
    return copy.deepcopy(_tokenizer(_file_key(path)))


@functools.lru_cache(maxsize=2)
def _tokenizer(key: tuple[str, int, int, int]):
    from transformers import AutoTokenizer

    path = Path(key[0])
    entry = _tokenizer_cache_entry(path)
    if entry is not None and (entry / "tokenizer.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(str(entry))
        except Exception as e:  # a damaged entry is built again (and replaced)
            log.warning("%s: cached tokenizer unreadable (%s); building it again from %s", entry, e, path)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if entry is not None:
        _save_tokenizer_entry(tok, entry, path)
    return tok


def tokenizer_cache_dir() -> Path | None:
    """Where GGUF files' tokenizers are kept: `$MNLU_JAX_TOKENIZER_CACHE` if set (`off`, `0` or empty: nowhere), else
    `$XDG_CACHE_HOME/mnlu_jax/gguf_tokenizers` (default `~/.cache/mnlu_jax/gguf_tokenizers`)."""
    from mnlu_jax.compile_cache import OFF

    if TOKENIZER_CACHE_ENV in os.environ:
        value = os.environ[TOKENIZER_CACHE_ENV].strip()
        return None if value.lower() in OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mnlu_jax" / "gguf_tokenizers"


def _tokenizer_cache_entry(path: Path) -> Path | None:
    root = tokenizer_cache_dir()
    if root is None:
        return None
    import transformers

    st = path.stat()
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(4 << 20)).hexdigest()
    key = json.dumps([str(path), st.st_size, st.st_mtime_ns, head, transformers.__version__])
    return root / f"{path.stem[:40]}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _save_tokenizer_entry(tok, entry: Path, source: Path) -> None:
    """Save through a temporary directory and a rename, so a reader sees a whole entry or none; a cache that cannot
    be written only costs the next command the build."""
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(str(tmp))
        (tmp / "source.json").write_text(json.dumps({"gguf": str(source)}, indent=2))
        if entry.exists():  # a damaged entry, or one another process has just written
            shutil.rmtree(entry, ignore_errors=True)
        os.rename(tmp, entry)
    except OSError as e:
        log.warning("GGUF tokenizer cache not written (%s: %s)", entry, e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
