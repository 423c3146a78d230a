"""Merges by `slices:`, planned as mergekit 0.1.5's planner does: each slice merges the same number of layers from
each of its sources (layer ranges that may differ), by its own settings, and the slices' layers are stacked in
order into the output model.

    merge_method: slerp
    base_model: A
    slices:
      - sources: [{model: A, layer_range: [0, 16]}, {model: B, layer_range: [0, 16]}]
        parameters: {t: [0, 0.5]}
      - sources: [{model: A, layer_range: [16, 32]}, {model: B, layer_range: [16, 32]}]
        parameters: {t: [0.5, 1]}

Output layer k is the next layer of the slices in order: in slice j, its i-th layer merges layer
`layer_range[0] + i` of each source, and sits at i / (n − 1) on the slice's gradients (n its layer count; a single
layer at 1). The embeddings are merged from the first slice's sources by its settings, the final norm and LM head
from the last slice's, both at 0 on the gradients. A slice's base is one of its sources (mergekit merges a slice
from its sources only). `passthrough` (merge/passthrough.py) stacks slices of one source each by the same plan.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import NamedTuple

from mnlu_jax.merge.math import MergeSpec, exclude_pattern
from mnlu_jax.merge.settings import Schedule
from mnlu_jax.merge.streaming import (VOCAB_TENSORS, MergeGroup, PlannedTensor, card_frame, check_architectures,
                                      merge_chat_template, spec_record, write_config_and_tokenizer, write_merge,
                                      write_mergekit_config)
from mnlu_jax.merge.vocabulary import TokenizerSettings, plan_vocabulary
from mnlu_jax.weights.convert import _dtype_name, same_source, source_key, source_name
from mnlu_jax.weights.named_tensors import NamedTensors, ordered
from mnlu_jax.weights.names import layer_index

# what must agree between models whose layers are merged or stacked (the layer count may differ)
STACK_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "head_dim", "vocab_size", "tie_word_embeddings")
_LAYER = re.compile(r"^model\.layers\.\d+\.")


@dataclasses.dataclass(frozen=True)
class SliceSource:
    """Layers [start, end) of `model`."""
    model: str
    start: int
    end: int


class SlicedTensor(NamedTuple):
    out: str                  # its name in the output
    slice: int                # the slice whose sources and settings make it
    inputs: tuple[str, ...]   # each of the slice's sources' tensor names
    position: float           # its place on the slice's gradients


def slice_plan(slices: list[list[tuple[NamedTensors, int, int]]]) -> tuple[list[SlicedTensor], int]:
    """The output tensors of stacking `slices` (each a list of (source, start, end)), in the order merges write
    (parameter by parameter, the layers inside: an Orbax source restores each stacked parameter once), and the
    output's layer count. Errors name the slice and source."""
    if not slices:
        raise ValueError("slices: none given")
    lengths = []
    for j, sources in enumerate(slices):
        if not sources:
            raise ValueError(f"slices[{j}]: no sources")
        for i, (src, start, end) in enumerate(sources):
            layers = src.config.num_hidden_layers
            if not 0 <= start < end <= layers:
                raise ValueError(f"slices[{j}].sources[{i}].layer_range [{start}, {end}]: expected 0 <= start < end "
                                 f"<= {layers} (the layers of {src.path})")
        counts = [end - start for _, start, end in sources]
        if len(set(counts)) > 1:
            raise ValueError(f"slices[{j}]: its sources have {counts} layers; every source of a slice needs the same "
                             "number (mergekit's rule)")
        lengths.append(counts[0])
    first, last = slices[0][0][0], slices[-1][0][0]
    plan = [SlicedTensor(n, 0, (n,) * len(slices[0]), 0.0) for n in ordered(first.names(), first.config)
            if layer_index(n) is None and "embed_tokens" in n]
    layers = [(j, i, n) for j, n in enumerate(lengths) for i in range(n)]  # output layer k = layers[k]
    names_of = {src.path: set(src.names()) for sources in slices for src, _, _ in sources}
    for suffix in [_LAYER.sub("", n) for n in ordered(first.names(), first.config) if layer_index(n) == 0]:
        for k, (j, i, n) in enumerate(layers):
            inputs = tuple(f"model.layers.{start + i}.{suffix}" for _, start, _ in slices[j])
            for (src, _, _), name in zip(slices[j], inputs):
                if name not in names_of[src.path]:
                    raise ValueError(f"{src.path}: no tensor {name}")
            plan.append(SlicedTensor(f"model.layers.{k}.{suffix}", j, inputs, i / (n - 1) if n > 1 else 1.0))
    j = len(slices) - 1
    plan += [SlicedTensor(n, j, (n,) * len(slices[j]), 0.0) for n in ordered(last.names(), last.config)
             if layer_index(n) is None and "embed_tokens" not in n]  # the final norm and LM head
    return plan, len(layers)


@dataclasses.dataclass(frozen=True)
class SliceMerge:
    """One slice of a merge: its sources, which of them is the base (a path: for the methods that take no base,
    the source that gives the shapes), and the spec and schedule its tensors are merged by."""
    sources: tuple[SliceSource, ...]
    base: str
    spec: MergeSpec
    schedule: Schedule | None = None


def merge_slices(slices: list[SliceMerge], out: str | Path, base: str | None = None, dtype: str | None = None,
                 exclude: str | None = None, max_shard_bytes: int = 2 * 2**30, progress: bool = True,
                 mergekit_config: dict | None = None, tokenizer: TokenizerSettings | None = None) -> Path:
    """Merge `slices` slice by slice into the HF directory `out` (atomically), streamed tensor by tensor like the
    whole-model merges. The config (with `num_hidden_layers` the layers written) and the tokenizer come from
    `base`, else the first slice's base; `tokenizer` as in `merge_checkpoints` (over every model read)."""
    pattern = exclude_pattern(exclude)
    if not slices:
        raise ValueError("slices: none given")
    methods = {sl.spec.method for sl in slices}
    if len(methods) > 1:
        raise ValueError(f"slices: one method for every slice, got {sorted(methods)}")
    opened: dict[str, NamedTensors] = {}

    def open_(path: str) -> NamedTensors:
        if path not in opened:
            opened[path] = NamedTensors(path)
        return opened[path]

    sources = [[(open_(s.model), s.start, s.end) for s in sl.sources] for sl in slices]
    config_path = base or slices[0].base
    config_from = open_(config_path)
    tokenizer = tokenizer or TokenizerSettings()
    vocabulary = None if tokenizer.source is None else plan_vocabulary(tokenizer, config_from, list(opened.values()))
    template = merge_chat_template(tokenizer, [config_from, *opened.values()], vocabulary, config_from)
    check_architectures(config_from, list(opened.values()),
                        tuple(f for f in STACK_FIELDS if vocabulary is None or f != "vocab_size"))
    plan, num_layers = slice_plan(sources)
    groups, base_index = [], []
    for j, sl in enumerate(slices):
        paths = [s.model for s in sl.sources]
        if len({source_key(p) for p in paths}) != len(paths):
            raise ValueError(f"slices[{j}]: a model is listed twice among its sources ({paths})")
        at = [i for i, p in enumerate(paths) if same_source(p, sl.base)]
        if not at:
            raise ValueError(f"slices[{j}]: its base ({sl.base}) is not one of its sources ({paths}); a slice is "
                             "merged from its sources only, as in mergekit")
        b = at[0]
        layers = sl.sources[0].end - sl.sources[0].start
        try:
            groups.append(MergeGroup.make(sources[j][b][0], [src for src, _, _ in sources[j]], sl.spec, sl.schedule,
                                          layers))
        except ValueError as e:
            raise ValueError(f"slices[{j}]: {e}") from None
        base_index.append(b)
    planned, rows = [], {}
    for t in plan:
        shapes = [src.shape(name) for (src, _, _), name in zip(sources[t.slice], t.inputs)]
        if vocabulary is not None and VOCAB_TENSORS.search(t.out):  # rows moved to the merge's token ids
            rows[t.out] = vocabulary.size
            shapes = [shape[1:] for shape in shapes]
        if len(set(shapes)) > 1:
            raise ValueError(f"{t.out}: the shapes of its inputs differ: " + ", ".join(
                f"{name} of {src.path}: {shape}" for (src, _, _), name, shape in zip(sources[t.slice], t.inputs, shapes)))
        planned.append(PlannedTensor(t.out, t.slice, t.inputs[base_index[t.slice]], t.inputs, t.position))

    def finish(tmp: Path, specs: list) -> None:
        cfg = dict(config_from.config.to_hf_dict(), num_hidden_layers=num_layers, torch_dtype=_dtype_name(specs[0][2]))
        write_config_and_tokenizer(tmp, cfg, vocabulary, config_from, template)
        record = {"method": slices[0].spec.method, "base": source_name(config_path), "num_hidden_layers": num_layers,
                  "slices": [{"sources": [{"model": source_name(s.model), "layer_range": [s.start, s.end]}
                                          for s in sl.sources],
                              "base": source_name(sl.base),
                              **{k: v for k, v in spec_record(sl.spec, g.schedule).items() if k != "method"}}
                             for sl, g in zip(slices, groups)],
                  "exclude": exclude, "tokenizer_from": tokenizer.source if vocabulary is not None else (
                      None if config_from.dir is None else source_name(config_path))}
        (tmp / "merge_config.json").write_text(json.dumps(record, indent=2))
        (tmp / "README.md").write_text(_card(record, Path(out).name, write_mergekit_config(tmp, mergekit_config)))

    return write_merge(out, groups, planned, finish, dtype=dtype, pattern=pattern, rows=rows,
                       max_shard_bytes=max_shard_bytes, progress=progress,
                       desc=f"merge ({slices[0].spec.method}, {len(slices)} slices)",
                       vocabulary=vocabulary)


def _card(record: dict, name: str, mergekit_yaml: str | None) -> str:
    rows, k = [], 0
    for j, s in enumerate(record["slices"]):
        n = s["sources"][0]["layer_range"][1] - s["sources"][0]["layer_range"][0]
        inputs = ", ".join(f"`{src['model']}` {src['layer_range'][0]}–{src['layer_range'][1] - 1}"
                           for src in s["sources"])
        rows.append(f"| {j} | {k}–{k + n - 1} | {inputs} | `{s['base']}` |")
        k += n
    return card_frame(record["base"], name, [
        f"A merge made with mnlu-jax (`mnlu-jax merge`) by the {record['method']} method, slice by slice: "
        f"{record['num_hidden_layers']} layers (config and tokenizer from `{record['base']}`).", "",
        "| slice | output layers | sources (their layers) | base |", "|---|---|---|---|", *rows, "",
        "## Settings (as in merge_config.json)", "", "```json", json.dumps(record["slices"], indent=2), "```", ""],
        mergekit_yaml)
