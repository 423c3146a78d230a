"""Our checkpoints (and HF directories, GGUF files) -> one GGUF file for llama.cpp, Ollama and transformers.

The inverse of `gguf_io`: HF tensors renamed to llama.cpp's (`blk.N.attn_q.weight`, ...), the rows of Q and K
permuted back to llama.cpp's interleaved RoPE order, the config written as `llama.*` keys (Mistral is written as
the llama architecture, as llama.cpp's converter does; a sliding window is kept in `llama.attention.sliding_window`,
which our reader reads back and llama.cpp ignores, as it does for Mistral v0.1). Tensor types: f32, f16, bf16 or
q8_0 for the matrices (q8_0 needs rows of a multiple of 32; other rows fall back to f16), 1-D tensors always f32.

The tokenizer comes from the source: a GGUF source's own tokenizer keys are copied as they are; a tokenizer.json
is translated: a byte-level BPE (GPT-2 style, SmolLM2, Llama 3) as `gpt2`, with its merges, and a byte-fallback
BPE over `▁`-spaced text (SentencePiece style, Mistral 7B, Llama 2) as `llama`, with its merges and scores −id.
Token types: added special tokens control, other added tokens user-defined, `<0xNN>` byte tokens byte, the unknown
token unknown; ids the tokenizer lacks up to the model's vocabulary are `[PADn]`, unused. `tokenizer.ggml.pre`
(llama.cpp's name for the pre-tokenizer's split rule) is taken from the split rule when it is one llama.cpp names,
else from `tokenizer_pre`; an unknown rule without it is an error rather than a file that tokenizes differently.
Tensors are read one at a time (`NamedTensors`: memory-mapped safetensors and GGUF, one stacked parameter of our
checkpoints) and written one at a time into a temporary file that is renamed when complete.
"""

from __future__ import annotations

import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mnlu_jax.model.config import ModelConfig
from mnlu_jax.weights import names as N
from mnlu_jax.weights.gguf_io import GGUF_TO_HF, open_gguf

HF_TO_GGUF = {hf: g for g, hf in GGUF_TO_HF.items()}
TENSOR_TYPES = ("f32", "f16", "bf16", "q8_0")
# general.file_type (llama.cpp's LLAMA_FTYPE_*) of a file whose matrices are of that type
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}
# llama.cpp's name for GPT-2's own split rule (a ByteLevel pre-tokenizer with use_regex); the names of other rules
# come from transformers' GGUF tokenizer table (`_split_rules`)
GPT2_PRE = "gpt-2"


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `permute`: rows (head, half, pair) -> (head, pair, half); `gguf_io._unpermute` undoes it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str:
    parts = hf_name.split(".")
    kind = parts[-1]
    if parts[:2] == ["model", "layers"]:
        sub = ".".join(parts[3:-1])
        if sub in HF_TO_GGUF:
            return f"blk.{parts[2]}.{HF_TO_GGUF[sub]}.{kind}"
    elif ".".join(parts[:-1]) in HF_TO_GGUF:
        return f"{HF_TO_GGUF['.'.join(parts[:-1])]}.{kind}"
    raise ValueError(f"tensor {hf_name!r} has no llama.cpp name")


def _kind(shape: tuple[int, ...], tensor_type: str) -> str:
    kind = tensor_type if len(shape) > 1 else "f32"
    return "f16" if kind == "q8_0" and shape[-1] % 32 else kind


def _info(shape: tuple[int, ...], tensor_type: str) -> tuple[tuple[int, ...], Any, int, Any]:
    """(shape, dtype, bytes, GGML type) as `add_tensor_info` takes them, before the data exists."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quant_shape_to_byte_shape

    kind = _kind(shape, tensor_type)
    if kind in ("f32", "f16"):
        dt = np.dtype(np.float32 if kind == "f32" else np.float16)
        return shape, dt, int(np.prod(shape)) * dt.itemsize, Q.F32 if kind == "f32" else Q.F16
    qtype = Q.BF16 if kind == "bf16" else Q.Q8_0
    byte_shape = quant_shape_to_byte_shape(shape, qtype)
    return byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), qtype


def _data(name: str, arr: np.ndarray, config: ModelConfig, tensor_type: str) -> np.ndarray:
    """One HF tensor as written: Q and K rows in llama.cpp's order, then cast or quantised."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    arr = np.asarray(arr, dtype=np.float32)
    if name.endswith("self_attn.q_proj.weight"):
        arr = _permute(arr, config.num_attention_heads)
    elif name.endswith("self_attn.k_proj.weight"):
        arr = _permute(arr, config.kv_heads)
    kind = _kind(arr.shape, tensor_type)
    if kind == "f32":
        return np.ascontiguousarray(arr)
    if kind == "f16":
        return arr.astype(np.float16)
    return quantize(arr, Q.BF16 if kind == "bf16" else Q.Q8_0)


# ----------------------------------------------------------------------------------------- tokenizer
def _split_rules() -> dict[str, str]:
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:  # older transformers: only GPT-2's own rule is recognised
        return {}
    return dict(GGUF_PRE_TOKENIZER_SPLITS)


def _pre_name(pre_tokenizer: dict | None, given: str | None, where: Path) -> str:
    """llama.cpp's name for a byte-level tokenizer's split rule."""
    if given is not None:
        return given
    pre = pre_tokenizer or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    types = [s.get("type") for s in steps]
    if types == ["ByteLevel"] and steps[0].get("use_regex", True):
        return GPT2_PRE
    if types == ["Split", "ByteLevel"]:
        regex = (steps[0].get("pattern") or {}).get("Regex")
        for name, rule in _split_rules().items():
            if rule == regex:
                return name
    raise ValueError(f"{where}: its pre-tokenizer ({json.dumps(pre)[:200]}) is not one whose llama.cpp name is "
                     "known here; give it (tokenizer_pre, e.g. 'llama-bpe', 'smollm', 'qwen2') so that llama.cpp "
                     "splits text the same way")


def tokenizer_metadata(tok_dir: Path, vocab_size: int, tokenizer_pre: str | None = None,
                       config: ModelConfig | None = None) -> dict[str, Any]:
    """The `tokenizer.*` keys for a Hugging Face tokenizer directory (tokenizer.json, tokenizer_config.json,
    chat_template.jinja). Special ids the tokenizer does not name come from `config` (its bos, first eos, pad)."""
    tok_json = tok_dir / "tokenizer.json"
    if not tok_json.exists():
        raise ValueError(f"{tok_dir}: no tokenizer.json (a GGUF file carries its tokenizer; export needs one)")
    spec = json.loads(tok_json.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{tok_json}: a {model.get('type')!r} tokenizer; GGUF export writes BPE tokenizers only")
    cfg_file = tok_dir / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.exists() else {}
    vocab = dict(model["vocab"])
    added = {a["content"]: a for a in spec.get("added_tokens", [])}
    for content, a in added.items():
        vocab[content] = a["id"]
    n = max(vocab.values()) + 1
    if n > vocab_size:
        raise ValueError(f"{tok_json}: {n} tokens, more than the model's vocabulary of {vocab_size}")
    tokens: list[str | None] = [None] * vocab_size
    for token, i in vocab.items():
        tokens[i] = token
    byte_fallback = bool(model.get("byte_fallback"))
    unk = model.get("unk_token")
    types, scores = [], []
    for i, token in enumerate(tokens):
        if token is None:
            tokens[i], kind = f"[PAD{i}]", 5                       # UNUSED
        elif byte_fallback and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            kind = 6                                              # BYTE (llama.cpp's byte fallback finds them so)
        elif token == unk:
            kind = 2                                              # UNKNOWN
        elif token in added:
            kind = 3 if added[token].get("special") else 4        # CONTROL / USER_DEFINED
        else:
            kind = 1                                              # NORMAL
        types.append(kind)
        scores.append(-float(i) if kind == 1 else 0.0)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    meta: dict[str, Any] = {"tokens": tokens, "token_type": types, "merges": merges}
    if byte_fallback:
        meta["model"], meta["scores"] = "llama", scores
    else:
        meta["model"], meta["pre"] = "gpt2", _pre_name(spec.get("pre_tokenizer"), tokenizer_pre, tok_json)

    def token_id(key: str) -> int | None:
        value = tok_cfg.get(key)
        content = value.get("content") if isinstance(value, dict) else value
        return vocab.get(content) if content is not None else None

    eos = config.eos_token_id if config is not None else None
    from_config = {"bos_token_id": config.bos_token_id if config is not None else None,
                   "eos_token_id": eos[0] if isinstance(eos, (tuple, list)) else eos,
                   "padding_token_id": config.pad_token_id if config is not None else None}
    for key, field in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                       ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        value = token_id(key) if token_id(key) is not None else from_config.get(field)
        if value is not None:
            meta[field] = int(value)
    meta.update(_special_tokens_added(tok_dir, meta.get("bos_token_id"), meta.get("eos_token_id")))
    template = tok_cfg.get("chat_template")
    if (tok_dir / "chat_template.jinja").exists():
        template = (tok_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(template, str):
        meta["chat_template"] = template
    return meta


def _special_tokens_added(tok_dir: Path, bos: int | None, eos: int | None) -> dict[str, bool]:
    """Whether the tokenizer puts BOS before and EOS after a text (`special_tokens_around`). llama.cpp's own default
    differs by tokenizer (on for `llama` and `llama-bpe`, off for `gpt-2`), so both keys are always written."""
    from mnlu_jax.data.chat import special_tokens_around
    from mnlu_jax.weights.convert import load_tokenizer

    tok = load_tokenizer(tok_dir)
    before, after = special_tokens_around(tok) or (None, None)
    if before not in ([], [bos]) or after not in ([], [eos]):
        raise ValueError(f"{tok_dir}: the tokenizer turns 'x' {tok('x', add_special_tokens=False)['input_ids']} into "
                         f"{tok('x')['input_ids']} with its special tokens; GGUF can only say whether BOS ({bos}) "
                         f"goes before a text and EOS ({eos}) after it")
    return {"add_bos_token": before == [bos], "add_eos_token": after == [eos]}


def _copy_gguf_tokenizer(src: Path) -> list[tuple[str, Any, Any, Any]]:
    """A GGUF file's `tokenizer.*` keys with their value types, to be written as they are."""
    from gguf import GGUFValueType

    out = []
    for key, field in open_gguf(src).fields.items():
        if key.startswith("tokenizer."):
            vtype = field.types[0]
            out.append((key, field.contents(), vtype, field.types[-1] if vtype == GGUFValueType.ARRAY else None))
    return out


def _add_tokenizer(writer, meta: dict[str, Any] | list) -> None:
    if isinstance(meta, list):  # a GGUF source's keys, copied
        for key, value, vtype, sub_type in meta:
            writer.add_key_value(key, value, vtype, sub_type=sub_type)
        return
    writer.add_tokenizer_model(meta["model"])
    if "pre" in meta:
        writer.add_tokenizer_pre(meta["pre"])
    writer.add_token_list(meta["tokens"])
    writer.add_token_types(meta["token_type"])
    if "scores" in meta:
        writer.add_token_scores(meta["scores"])
    if meta["merges"]:
        writer.add_token_merges(meta["merges"])
    for field in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"):
        if field in meta:
            writer.add_uint32(f"tokenizer.ggml.{field}", meta[field])
    for field in ("add_bos_token", "add_eos_token"):
        if field in meta:
            writer.add_bool(f"tokenizer.ggml.{field}", meta[field])
    if "chat_template" in meta:
        writer.add_chat_template(meta["chat_template"])


# ----------------------------------------------------------------------------------------- the file
def _add_config(writer, config: ModelConfig, tensor_type: str, name: str) -> None:
    scaling = dict(config.rope_scaling or {})
    if scaling and scaling.get("rope_type", scaling.get("type")) != "linear":
        raise ValueError(f"rope_scaling {scaling}: only linear scaling has GGUF keys (llama3-style scaling is a "
                         "rope_freqs tensor there, which is not written)")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.kv_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_rope_dimension_count(config.dim_per_head)
    if config.dim_per_head != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(config.dim_per_head)
        writer.add_value_length(config.dim_per_head)
    writer.add_vocab_size(config.vocab_size)
    if scaling:
        from gguf import RopeScalingType

        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    if config.sliding_window:
        writer.add_sliding_window(int(config.sliding_window))
    writer.add_file_type(FILE_TYPES[tensor_type])


def _converted(source, entries: list, config: ModelConfig, tensor_type: str) -> Iterator[np.ndarray]:
    """The entries' tensors as written, in order. Reading stays in this thread (our checkpoints' reader holds one
    stacked parameter); casting and quantising, numpy work that releases the GIL, run on one thread per core, one
    tensor each, so at most cores + 1 converted tensors are in memory at once."""
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for e in entries:
            pending.append(pool.submit(_data, e.hf_name, source.get(e.hf_name), config, tensor_type))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def export_gguf(src: str | Path, out: str | Path, tensor_type: str = "f16", tokenizer_pre: str | None = None,
                progress: bool = True) -> Path:
    """Write `src` (our checkpoint, an HF directory or a GGUF file) as the GGUF file `out`."""
    import gguf
    from tqdm.auto import tqdm

    from mnlu_jax.weights.named_tensors import NamedTensors

    if tensor_type not in TENSOR_TYPES:
        raise ValueError(f"tensor type {tensor_type!r}: expected one of {TENSOR_TYPES}")
    out = Path(out)
    if out.suffix != ".gguf":
        raise ValueError(f"{out}: expected a .gguf file name")
    source = NamedTensors(src)
    config = source.config
    if source.tokenizer_source is None:
        raise ValueError(f"{src}: no tokenizer beside the weights; a GGUF file needs one")
    tok_src = Path(source.tokenizer_source)
    meta = _copy_gguf_tokenizer(tok_src) if tok_src.suffix == ".gguf" else \
        tokenizer_metadata(tok_src, config.vocab_size, tokenizer_pre, config)
    source.check()  # every tensor there, of its shape, and none lost, before the file is started
    entries = N.entries(config)
    for e in entries:
        gguf_name(e.hf_name)  # and each has a llama.cpp name

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        _add_config(writer, config, tensor_type, Path(src).name)
        _add_tokenizer(writer, meta)
        for e in entries:
            writer.add_tensor_info(gguf_name(e.hf_name), *_info(tuple(e.hf_shape), tensor_type))
        writer.write_header_to_file(str(tmp))
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for data in tqdm(_converted(source, entries, config, tensor_type), total=len(entries),
                         desc=f"gguf ({tensor_type})", unit="tensor", disable=not progress):
            writer.write_tensor_data(data)
        writer.close()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
