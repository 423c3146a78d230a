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
  none has it. A token of a model's tokenizer whose id is past its config's `vocab_size` counts as absent.
- `pad_to_multiple_of` pads the row count up; each model's padding rows are the mean of its rows.
Whole-model merges, merges by slices and passthrough use it alike (`VocabularyPlan.align` over the inputs of each
vocabulary tensor: for slices, the first slice's sources give the embeddings and the last's the LM head).
"""

from __future__ import annotations

import dataclasses
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mnlu_jax.weights.convert import source_key
from mnlu_jax.weights.named_tensors import NamedTensors


@dataclasses.dataclass
class VocabularyPlan:
    """The output tokenizer, its row count, and for each model (by path) the row each output token id takes from
    it (-1: it lacks the token)."""
    tokenizer: Any
    size: int
    rows: dict[str, np.ndarray]  # resolved path -> (len(vocab),) old row index or -1

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
        filled = {}
        for token_id in np.flatnonzero(present.sum(0) < len(distinct)):
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
            for token_id in np.flatnonzero(~here):
                new[token_id] = filled[int(token_id)]
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


def plan_vocabulary(source: str, base: NamedTensors, models: list[NamedTensors],
                    pad_to_multiple_of: int | None = None) -> VocabularyPlan:
    """The plan for merging `models` (every model the merge reads) and `base` (whose tokenizer is the default and
    the start of the union) with the tokenizer `source` ("base", "union" or a model path)."""
    from mnlu_jax.weights.convert import load_tokenizer

    if base.tokenizer_source is None:
        raise ValueError(f"tokenizer_source {source!r}: the base {base.path} has no tokenizer to start from")
    base_tok = load_tokenizer(base.tokenizer_source)
    distinct = {source_key(base.path): base}  # each checkpoint once, the base first
    for m in models:
        distinct.setdefault(source_key(m.path), m)
    inputs = list(distinct.values())
    toks = [base_tok] + [_tokenizer_of(m, base_tok) for m in inputs[1:]]
    vocabs = [_ids(t, x.config.vocab_size) for t, x in zip(toks, inputs)]
    past = len(base_tok.get_vocab()) - len(vocabs[0])
    if past and source in ("base", "union"):  # mergekit strips them from a BPE tokenizer's model; not done here
        raise ValueError(f"tokenizer_source {source!r}: {past} token(s) of {base.path}'s tokenizer have ids past its "
                         f"config's vocab_size {base.config.vocab_size} (no rows); give a tokenizer without them")
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
    vocab = out_tok.get_vocab()
    n = len(vocab)
    if sorted(vocab.values()) != list(range(n)):
        raise ValueError(f"tokenizer_source {source!r}: its token ids are not 0..{n - 1}")
    size = n if not pad_to_multiple_of else -(-n // pad_to_multiple_of) * pad_to_multiple_of
    by_id = sorted(vocab, key=vocab.get)
    return VocabularyPlan(out_tok, size, {source_key(x.path): np.array([v.get(t, -1) for t in by_id], np.int64)
                                          for x, v in zip(inputs, vocabs)})


def _union(base_tok, toks: list, vocabs: list[dict[str, int]]):
    """The base's tokenizer with every token of the others it lacks added, as mergekit's build_union_tokenizer:
    plain tokens as added tokens, then the models' added (special) tokens with their settings."""
    import transformers

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
    with tempfile.TemporaryDirectory() as d:  # a copy, so the base's tokenizer is left as it is
        base_tok.save_pretrained(d)
        out = transformers.AutoTokenizer.from_pretrained(d, use_fast=True)
    base_vocab = base_tok.get_vocab()
    for token in new_tokens:
        if token not in added and token not in base_vocab:
            out.add_tokens(token)
    for info in added.values():
        out.add_tokens(info)
    return out
