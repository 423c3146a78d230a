"""mergekit's `passthrough` with `slices:`: a model built from layer ranges of others (a "frankenmerge", or depth
up-scaling as SOLAR does it), streamed tensor by tensor like the merges.

    merge_method: passthrough
    slices:
      - sources: [{model: A, layer_range: [0, 24]}]
      - sources: [{model: A, layer_range: [8, 32]}]
    dtype: bfloat16

Output layer k is the next layer of the slices in order: slice j's source layer `layer_range[0] + i`, renamed. As in
mergekit 0.1.5's planner, the embeddings come from the first slice's model and the final norm and LM head from the
last slice's; the config (with `num_hidden_layers` the layers written) and the tokenizer from `base_model`, else the
first slice's model. A source's `scale` (a number, a gradient over the slice's layers, or filters on the output
tensor's name, looked up in the source's `parameters`, then the slice's, then the file's) multiplies its tensors: the
zero-initialised copies of depth up-scaling write `scale: [{filter: o_proj, value: 0}, {filter: down_proj, value: 0},
{value: 1}]`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mnlu_jax.merge.settings import check_setting, resolve
from mnlu_jax.merge.slices import STACK_FIELDS, slice_plan
from mnlu_jax.merge.streaming import (VOCAB_TENSORS, card_frame, check_architectures, merge_chat_template,
                                      write_config_and_tokenizer, write_mergekit_config)
from mnlu_jax.merge.vocabulary import TokenizerSettings, plan_vocabulary
from mnlu_jax.weights.convert import _dtype_name, atomic_dir, np_dtype, source_name
from mnlu_jax.weights.named_tensors import NamedTensors
from mnlu_jax.weights.safetensors_io import write_sharded


@dataclasses.dataclass(frozen=True)
class LayerSlice:
    """Layers [start, end) of `model`, each tensor times `scale` (a setting: number, gradient or conditions; None
    is 1)."""
    model: str
    start: int
    end: int
    scale: Any = None


def stack_slices(slices: list[LayerSlice], out: str | Path, base: str | None = None, dtype: str | None = None,
                 max_shard_bytes: int = 2 * 2**30, progress: bool = True, mergekit_config: dict | None = None,
                 tokenizer: TokenizerSettings | None = None) -> Path:
    """Write the model whose layers are `slices` in order to the HF directory `out` (atomically); `tokenizer` as in
    `merge_checkpoints` (the embeddings and LM head moved to its token ids)."""
    if not slices:
        raise ValueError("passthrough: no slices")
    sources = {s.model: NamedTensors(s.model) for s in slices}
    config_from = NamedTensors(base) if base is not None else sources[slices[0].model]
    ref = config_from.config.to_hf_dict()
    tokenizer = tokenizer or TokenizerSettings()
    vocabulary = None if tokenizer.source is None else plan_vocabulary(tokenizer, config_from, list(sources.values()))
    template = merge_chat_template(tokenizer, [config_from, *sources.values()], vocabulary, config_from)
    check_architectures(config_from, list(sources.values()),
                        tuple(f for f in STACK_FIELDS if vocabulary is None or f != "vocab_size"))
    for i, s in enumerate(slices):
        if s.scale is not None:
            check_setting(f"slices[{i}] scale", s.scale)
    stacked, k = slice_plan([[(sources[s.model], s.start, s.end)] for s in slices])
    # (output name, source, input name, scale setting, position on the slice's gradient)
    plan = [(t.out, sources[slices[t.slice].model], t.inputs[0], slices[t.slice].scale, t.position) for t in stacked]
    factors = {}  # output name -> its scale, resolved (and checked) before anything is written
    for out_name, src, name, scale, position in plan:
        factors[out_name] = None if scale is None else resolve(scale, out_name, position)
        if scale is not None and factors[out_name] is None:
            raise ValueError(f"{out_name}: no condition of the scale of {src.path} applies to it")
    target = np_dtype(dtype)
    aligned = {o for o, _, _, _, _ in plan if vocabulary is not None and VOCAB_TENSORS.search(o)}
    for o, src, _, _, _ in plan:
        if o in aligned:
            vocabulary.check_inputs([src.path], o)
    specs = [(o, (vocabulary.size, *src.shape(n)[1:]) if o in aligned else tuple(src.shape(n)),
              target or src.dtype(n)) for o, src, n, _, _ in plan]
    by_name = {p[0]: p for p in plan}
    with atomic_dir(out) as tmp, tqdm(total=len(plan), desc="merge (passthrough)", unit="tensor",
                                      disable=not progress) as bar:
        def produce(out_name: str) -> np.ndarray:
            _, src, name, _, _ = by_name[out_name]
            x = np.asarray(src.get(name))
            if out_name in aligned:  # (passthrough has no base: a token its model lacks gets a zero row)
                x = vocabulary.align([x], [src.path], None)[0].astype(src.dtype(name))
            factor = factors[out_name]
            if factor is not None and factor != 1.0:
                x = x.astype(np.float32) * np.float32(factor)
            bar.update(1)
            return x.astype(target or src.dtype(name), copy=False)

        write_sharded(tmp, specs, produce, max_shard_bytes=max_shard_bytes)
        write_config_and_tokenizer(tmp, dict(ref, num_hidden_layers=k, torch_dtype=_dtype_name(specs[0][2])),
                                   vocabulary, config_from, template)
        record = {"method": "passthrough", "base": source_name(base if base is not None else slices[0].model),
                  "slices": [{"model": source_name(s.model), "layer_range": [s.start, s.end],
                              **({"scale": s.scale} if s.scale is not None else {})} for s in slices],
                  "num_hidden_layers": k}
        (tmp / "merge_config.json").write_text(json.dumps(record, indent=2))
        (tmp / "README.md").write_text(_card(record, Path(out).name, write_mergekit_config(tmp, mergekit_config)))
    return Path(out)


def _card(record: dict, name: str, mergekit_yaml: str | None) -> str:
    rows = [f"| {i} | `{s['model']}` | {s['layer_range'][0]}–{s['layer_range'][1] - 1} | {s.get('scale', 1)} |"
            for i, s in enumerate(record["slices"])]
    return card_frame(record["base"], name, [
        f"A passthrough merge made with mnlu-jax (`mnlu-jax merge`): {record['num_hidden_layers']} layers stacked "
        f"from these slices, in order (config and tokenizer from `{record['base']}`).", "",
        "| slice | model | layers | scale |", "|---|---|---|---|", *rows, ""], mergekit_yaml)
