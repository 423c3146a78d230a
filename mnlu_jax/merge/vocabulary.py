"""mergekit's `tokenizer_source`: the merge's tokenizer chosen or built, and each model's vocabulary rows (the
embeddings and the LM head) moved to that tokenizer's token ids before the tensors are merged, as mergekit 0.1.5's
BuildTokenizer and PermutedVocabulary do, so models whose tokenizers differ (a fine-tune that added chat markers,
say) merge token by token rather than row by row.

- `base`: the base's tokenizer; `union`: the base's with every other model's tokens it lacks added (a model's
  tokens in the order of their ids there, models in the order listed; mergekit walks its models as a set and a
  Rust hash map, so its order of several new tokens can change from run to run); any other value: the tokenizer
  of that model directory.
- A model that has a token gives its own row. For a token some model lacks, the row it takes is, as in mergekit:
  the one model's that has it, else the base's if the base has it, else the mean of those that have it; zeros if
  none has it. A token of a model's tokenizer whose id is past its config's `vocab_size` counts as absent; under
  `base` and `union` such tokens are first cut from the base's tokenizer (from its added tokens, its BPE
  vocabulary and merges), as mergekit's get_stripped_tokenizer cuts them (a tokenizer of another kind is refused).
- `pad_to_multiple_of` pads the row count up; each model's padding rows are the mean of its rows.
- `token_sources` (mergekit's `tokenizer.tokens`) name where a token's row comes from, over the rule above:
  `{TOKEN: {source: MODEL | {kind: zero} | {kind: model_token, model: MODEL, token_id: N | token: STR},
  force: BOOL}}`. MODEL's own row for the token, a zero row, or any row of MODEL (by its row number, or by a token
  of its own tokenizer). It fills the models that lack the token; with `force`, every model's row. A token the
  merge's tokenizer lacks is added to it. Errors name the token and field: a model that is not one of the
  merge's (or not an input of a vocabulary tensor that needs it), a token it lacks, a row past its rows.
Whole-model merges, merges by slices and passthrough use it alike (`VocabularyPlan.align` over the inputs of each
vocabulary tensor: for slices, the first slice's sources give the embeddings and the last's the LM head).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mnlu_jax.weights.convert import source_key
from mnlu_jax.weights.named_tensors import NamedTensors


@dataclasses.dataclass(frozen=True)
class TokenizerSettings:
    """What a merge does about tokenizers (MergeConfig's tokenizer_source, pad_to_multiple_of, token_sources and
    chat_template): the vocabulary plan's source and its options, and the chat template the written tokenizer
    gets (merge/chat_template.py)."""
    source: str | None = None                    # base | union | a model directory; None: rows merged as they are
    pad_to_multiple_of: int | None = None
    token_sources: dict[str, Any] | None = None  # {TOKEN: {source: ..., force: ...}}: read by `token_sources`
    chat_template: str | None = None             # auto | chatml | llama3 | mistral | zephyr | a Jinja file or text
    # `token_sources` read (checked once, here): {TOKEN: TokenSource}
    tokens: dict[str, TokenSource] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        pad = self.pad_to_multiple_of
        if pad is not None and (self.source is None or type(pad) is not int or pad < 1):
            raise ValueError(f"merge: pad_to_multiple_of {pad!r}: expected a positive integer, with a "
                             "tokenizer_source (base, union or a model directory) whose vocabulary it pads")
        if self.token_sources is not None and self.source is None:
            raise ValueError("merge: token_sources: needs a tokenizer_source (base, union or a model directory), "
                             "whose vocabulary they fill")
        object.__setattr__(self, "tokens", {} if self.token_sources is None else token_sources(self.token_sources))


@dataclasses.dataclass(frozen=True)
class TokenSource:
    """Where one token's row comes from: `model`'s own row for the token (kind "model"), its row `token_id` or that
    of its own tokenizer's `token` ("model_token"), or zeros ("zero"); `force`: for every model, not only for the
    models that lack the token."""
    kind: str
    model: str | None = None
    token_id: int | None = None
    token: str | None = None
    force: bool = False


def token_sources(data: Any, where: str = "token_sources") -> dict[str, TokenSource]:
    """mergekit's `tokenizer.tokens` mapping read as TokenSources; errors name the token and field."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected {{TOKEN: {{source: ..., force: ...}}}}, got {data!r}")
    out = {}
    for token, entry in data.items():
        here = f"{where}[{token!r}]"
        if not isinstance(token, str) or not token:
            raise ValueError(f"{where}: token {token!r}: expected a non-empty string")
        if not isinstance(entry, dict) or set(entry) - {"source", "force"}:
            raise ValueError(f"{here}: expected {{source: MODEL | {{kind: zero}} | {{kind: model_token, model: MODEL, "
                             f"token_id: N | token: STR}}, force: BOOL}}, got {entry!r}")
        force = entry.get("force", False)
        if not isinstance(force, bool):
            raise ValueError(f"{here}.force: expected true or false, got {force!r}")
        src = entry.get("source")
        if isinstance(src, str) and src:
            out[token] = TokenSource("model", model=src, force=force)
        elif isinstance(src, dict) and src.get("kind") == "zero" and set(src) == {"kind"}:
            out[token] = TokenSource("zero", force=force)
        elif isinstance(src, dict) and src.get("kind") == "model_token":
            extra = sorted(set(src) - {"kind", "model", "token_id", "token"})
            by_id, by_name = src.get("token_id"), src.get("token")
            if extra or not isinstance(src.get("model"), str) or (by_id is None) == (by_name is None):
                raise ValueError(f"{here}.source: model_token takes model and one of token_id and token, got {src!r}")
            if by_id is not None and (type(by_id) is not int or by_id < 0):
                raise ValueError(f"{here}.source.token_id: expected a row number (an integer from 0), got {by_id!r}")
            if by_name is not None and not isinstance(by_name, str):
                raise ValueError(f"{here}.source.token: expected a token of the model's tokenizer, got {by_name!r}")
            out[token] = TokenSource("model_token", model=src["model"], token_id=by_id, token=by_name, force=force)
        else:
            raise ValueError(f"{here}.source: expected a model path, {{kind: zero}} or {{kind: model_token, model: "
                             f"MODEL, token_id: N | token: STR}}, got {src!r}")
    return out


@dataclasses.dataclass(frozen=True)
class TokenRow:
    """A configured token's row, resolved: `row` of the model `key` (None: zeros), for every model if `force`."""
    token: str
    key: str | None
    row: int | None
    force: bool


@dataclasses.dataclass
class VocabularyPlan:
    """The output tokenizer, its row count, for each model (by path) the row each output token id takes from it
    (-1: it lacks the token), and the configured tokens' rows by output token id."""
    tokenizer: Any
    size: int
    rows: dict[str, np.ndarray]  # resolved path -> (len(vocab),) old row index or -1
    configured: dict[int, TokenRow] = dataclasses.field(default_factory=dict)

    def check_inputs(self, paths: list[str | Path], tensor: str) -> None:
        """Before merging: each configured token that `tensor` (whose inputs are the models at `paths`) will need
        takes its row from one of those inputs (mergekit's check, made before anything is written)."""
        keys = {source_key(p) for p in paths}
        for token_id, c in self.configured.items():
            needed = c.force or any(self.rows[k][token_id] < 0 for k in keys)
            if needed and c.key is not None and c.key not in keys:
                raise ValueError(f"token_sources[{c.token!r}]: its source {c.key} is not an input of {tensor} (whose "
                                 f"inputs are {sorted(keys)}), which needs its row")

    def align(self, arrays: list[np.ndarray], paths: list[str | Path], base: str | Path | None) -> list[np.ndarray]:
        """Each input's vocabulary tensor (rows on axis 0; the inputs of one output tensor, from the models at
        `paths`), its rows moved to the output's token ids. A token some input lacks takes, in those inputs, the row
        of the one input that has it, else the base's (if the base is an input and has it), else the mean of those
        that have it; zeros if none has it (mergekit's PermutedVocabulary, over the tensor's inputs)."""
        rows = [self.rows[source_key(p)] for p in paths]
        first = {}  # an input listed twice (the base among the models) counts once, as in mergekit's dict of inputs
        for i, p in enumerate(paths):
            first.setdefault(source_key(p), i)
        distinct = sorted(first.values())
        n_vocab = len(rows[0])
        present = np.stack([rows[i] >= 0 for i in distinct])
        base_at = first.get(source_key(base)) if base is not None else None
        forced = [t for t, c in self.configured.items() if c.force]
        filled = {}
        for token_id in sorted({*np.flatnonzero(present.sum(0) < len(distinct)).tolist(), *forced}):
            if token_id in self.configured:  # its configured source
                c = self.configured[token_id]
                filled[token_id] = (np.zeros(arrays[0].shape[1:], np.float32) if c.key is None
                                    else np.asarray(arrays[first[c.key]][c.row], np.float32))
                continue
            have = [i for i, here in zip(distinct, present[:, token_id]) if here]
            if base_at is not None and base_at in have and len(have) > 1:
                have = [base_at]
            filled[int(token_id)] = (np.mean([np.asarray(arrays[i][rows[i][token_id]], np.float32) for i in have],
                                              axis=0) if have else np.zeros(arrays[0].shape[1:], np.float32))
        out = []
        for a, r in zip(arrays, rows):
            new = np.zeros((self.size, *a.shape[1:]), np.float32)
            here = r >= 0
            new[:n_vocab][here] = np.asarray(a, np.float32)[r[here]]
            for token_id in [*np.flatnonzero(~here).tolist(), *forced]:
                new[token_id] = filled[token_id]
            if self.size > n_vocab:  # padding rows: the mean of the model's rows (mergekit's choice)
                new[n_vocab:] = new[:n_vocab].mean(0)
            out.append(new)
        return out


def _tokenizer_of(source: NamedTensors, fallback):
    """`source`'s tokenizer; for a model without one, the base's, with a warning (mergekit does the same)."""
    from mnlu_jax.weights.convert import load_tokenizer

    try:
        if source.tokenizer_source is None:
            raise ValueError("no tokenizer")
        return load_tokenizer(source.tokenizer_source)
    except (OSError, ValueError) as e:
        warnings.warn(f"{source.path}: no tokenizer could be loaded ({e}); its vocabulary rows are taken to be in "
                      "the base tokenizer's order, as mergekit takes them", stacklevel=2)
        return fallback


def _ids(tokenizer, vocab_size: int) -> dict[str, int]:
    return {t: i for t, i in tokenizer.get_vocab().items() if i < vocab_size}


def plan_vocabulary(settings: TokenizerSettings, base: NamedTensors, models: list[NamedTensors]) -> VocabularyPlan:
    """The plan for merging `models` (every model the merge reads) and `base` (whose tokenizer is the default and
    the start of the union) with the tokenizer `settings.source` ("base", "union" or a model path)."""
    from mnlu_jax.weights.convert import load_tokenizer

    source = settings.source
    if base.tokenizer_source is None:
        raise ValueError(f"tokenizer_source {source!r}: the base {base.path} has no tokenizer to start from")
    base_tok = load_tokenizer(base.tokenizer_source)
    distinct = {source_key(base.path): base}  # each checkpoint once, the base first
    for m in models:
        distinct.setdefault(source_key(m.path), m)
    inputs = list(distinct.values())
    toks = [base_tok] + [_tokenizer_of(m, base_tok) for m in inputs[1:]]
    vocabs = [_ids(t, x.config.vocab_size) for t, x in zip(toks, inputs)]
    if len(base_tok.get_vocab()) > len(vocabs[0]) and source in ("base", "union"):
        base_tok = toks[0] = _stripped(base_tok, base.config.vocab_size, f"tokenizer_source {source!r}: {base.path}")
    if source == "base":
        out_tok = base_tok
    elif source == "union":
        out_tok = _union(base_tok, toks, vocabs)
    else:
        try:
            out_tok = load_tokenizer(source)
        except (OSError, ValueError) as e:
            raise ValueError(f"tokenizer_source {source!r}: expected base, union or a model directory with a "
                             f"tokenizer ({e})") from None
    configured = settings.tokens
    missing = [t for t in configured if t not in out_tok.get_vocab()]
    if missing:  # added, as mergekit adds them (to a copy: the models' own tokenizers, the base's too, are read below)
        out_tok = _copy(out_tok)
        for token in missing:
            out_tok.add_tokens(token)
    vocab = out_tok.get_vocab()
    n = len(vocab)
    if sorted(vocab.values()) != list(range(n)):
        raise ValueError(f"tokenizer_source {source!r}: its token ids are not 0..{n - 1}")
    pad = settings.pad_to_multiple_of
    size = n if not pad else -(-n // pad) * pad
    by_id = sorted(vocab, key=vocab.get)
    rows = {source_key(x.path): np.array([v.get(t, -1) for t in by_id], np.int64) for x, v in zip(inputs, vocabs)}
    own = {source_key(x.path): (t, x) for t, x in zip(toks, inputs)}
    return VocabularyPlan(out_tok, size, rows, {vocab[t]: _token_row(t, c, vocab[t], rows, own)
                                                for t, c in configured.items()})


def _token_row(token: str, c: TokenSource, token_id: int, rows: dict[str, np.ndarray], own: dict) -> TokenRow:
    """A configured token's source resolved against the merge's models, else an error naming it."""
    here = f"token_sources[{token!r}].source"
    if c.kind == "zero":
        return TokenRow(token, None, None, c.force)
    key = source_key(c.model)
    if key not in rows:
        raise ValueError(f"{here}: {c.model} is not one of the merge's models ({sorted(rows)})")
    tok, model = own[key]
    if c.kind == "model":
        row = int(rows[key][token_id])
        if row < 0:
            raise ValueError(f"{here}: {c.model}'s tokenizer has no {token!r} within its {model.config.vocab_size} "
                             "rows; give {kind: model_token, model: ..., token: ...} to take another token's row")
    elif c.token is not None:
        row = tok.get_vocab().get(c.token, -1)
        if not 0 <= row < model.config.vocab_size:
            raise ValueError(f"{here}.token: {c.token!r} is not a token of {c.model}'s tokenizer within its "
                             f"{model.config.vocab_size} rows")
    else:
        row = c.token_id
        if row >= model.config.vocab_size:
            raise ValueError(f"{here}.token_id: {row} is past {c.model}'s {model.config.vocab_size} rows")
    return TokenRow(token, key, row, c.force)


def _stripped(tokenizer, vocab_size: int, where: str):
    """`tokenizer` without its tokens whose ids are `vocab_size` or past (the model has no rows for them), as
    mergekit's get_stripped_tokenizer makes it: they leave the added tokens, the BPE model's vocabulary and every
    BPE merge that uses one (and, past mergekit, every merge that makes one). Only a fast BPE tokenizer can be cut
    so (another kind is refused, as mergekit refuses it); the other ids stay as they are."""
    import transformers

    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        files = Path(d)
        if not (files / "tokenizer.json").exists():
            raise ValueError(f"{where}: its tokenizer has tokens with ids past the config's vocab_size {vocab_size} "
                             "(no rows for them), and is not a fast tokenizer that can be cut to the rows")
        spec = json.loads((files / "tokenizer.json").read_text(encoding="utf-8"))
        if spec["model"]["type"] != "BPE":
            raise ValueError(f"{where}: its tokenizer has tokens with ids past the config's vocab_size {vocab_size} "
                             f"(no rows for them); only a BPE tokenizer can be cut to the rows, this one is "
                             f"{spec['model']['type']}")
        unused = {t for t, i in tokenizer.get_vocab().items() if i >= vocab_size}
        spec["added_tokens"] = [e for e in spec["added_tokens"] if e["id"] < vocab_size]
        model = spec["model"]
        model["vocab"] = {t: i for t, i in model["vocab"].items() if t not in unused}
        prefix = model.get("continuing_subword_prefix") or ""

        def made(left: str, right: str) -> str:  # the token a merge makes, as the tokenizers library joins them
            return left + (right[len(prefix):] if prefix and right.startswith(prefix) else right)

        # a merge that makes a cut token goes too (mergekit keeps it, and its tokenizer then fails to load)
        pairs = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
        model["merges"] = [m for m, pair in zip(model["merges"], pairs)
                           if not unused.intersection(pair) and made(*pair) not in unused]
        (files / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        for name in ("tokenizer_config.json", "special_tokens_map.json"):  # transformers re-adds what these name
            if (files / name).exists():
                _cut_special_tokens(files / name, unused, vocab_size, where)
        out = transformers.AutoTokenizer.from_pretrained(d, use_fast=True)
    left = [t for t, i in out.get_vocab().items() if i >= vocab_size]
    if left:
        raise ValueError(f"{where}: {len(left)} token(s) of its tokenizer, e.g. {left[0]!r}, still have ids past the "
                         f"config's vocab_size {vocab_size} after cutting them from the tokenizer's files")
    return out


def _cut_special_tokens(path: Path, unused: set[str], vocab_size: int, where: str) -> None:
    """Take the `unused` tokens out of a tokenizer config file: its added tokens by id, its lists of special tokens,
    and (with a warning: the model has no row for them) a named special token such as `pad_token`."""
    config = json.loads(path.read_text(encoding="utf-8"))
    content = lambda e: e.get("content") if isinstance(e, dict) else e  # noqa: E731
    if isinstance(config.get("added_tokens_decoder"), dict):
        config["added_tokens_decoder"] = {i: e for i, e in config["added_tokens_decoder"].items()
                                          if int(i) < vocab_size}
    for key, value in list(config.items()):
        if key in ("extra_special_tokens", "additional_special_tokens") and isinstance(value, list):
            config[key] = [e for e in value if content(e) not in unused]
        elif key.endswith("_token") and content(value) in unused:
            warnings.warn(f"{where}: its {key} {content(value)!r} has an id past the config's vocab_size "
                          f"{vocab_size} and is cut with the others; the merge's tokenizer has no {key}",
                          stacklevel=3)
            del config[key]
    path.write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")


def _copy(tokenizer):
    """A copy of a tokenizer (through its files), to add tokens to without changing the original."""
    import transformers

    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        return transformers.AutoTokenizer.from_pretrained(d, use_fast=True)


def _union(base_tok, toks: list, vocabs: list[dict[str, int]]):
    """The base's tokenizer with every token of the others it lacks added, as mergekit's build_union_tokenizer:
    plain tokens as added tokens, then the models' added (special) tokens with their settings."""
    added: dict[str, Any] = {}
    new_tokens: list[str] = []
    seen = set()
    for tok, vocab in zip(toks, vocabs):
        for token in sorted(vocab, key=vocab.get):
            if token not in seen:
                seen.add(token)
                new_tokens.append(token)
        kept = set(vocab.values())  # (an added token past the config's vocab_size is left out, as in mergekit)
        for token_id, info in sorted(tok.added_tokens_decoder.items()):
            if token_id in kept and info.content not in added:
                added[info.content] = info
    out = _copy(base_tok)  # (the base's tokenizer is left as it is)
    base_vocab = base_tok.get_vocab()
    for token in new_tokens:
        if token not in added and token not in base_vocab:
            out.add_tokens(token)
    for info in added.values():
        out.add_tokens(info)
    return out
