"""mergekit YAML configs read as our MergeConfig, so a merge written for `mergekit-yaml` runs here as it is:

    merge_method: dare_ties
    base_model: checkpoints/BioMistral-7B
    models:
      - model: runs/ft_a/hf
        parameters: {weight: 0.6, density: 0.5}
      - model: runs/ft_b/hf
        parameters: {weight: 0.4, density: 0.5}
    parameters: {normalize: true, int8_mask: true}
    dtype: bfloat16

`mnlu-jax merge --config that.yaml --out DIR [--seed N]` (mergekit-yaml takes the output directory and
`--random-seed` on its command line too). The translation, by mergekit 0.1.5's own parameter definitions:
- `slices:` with one slice taking every layer of every model (`layer_range: [0, N]`, how mergekit's own slerp
  example is written) reads as `models:`. Other slices are merged slice by slice (merge/slices.py), each slice
  read as a whole-model config of its sources (its `base_model` else the file's, its `parameters` over the
  file's); with `passthrough` (merge/passthrough.py), one source per slice, scaled by its `scale`.
- `merge_method` keeps its name (linear, task_arithmetic, ties, dare_ties, dare_linear, della, della_linear,
  breadcrumbs, breadcrumbs_ties, slerp, nuslerp, model_stock, sce, karcher, multislerp, nearswap, arcee_fusion,
  ram, ramplus_tl, passthrough); other methods are refused by name rather than merged some other way. LoRA
  references (`model+lora`) read the model with the PEFT adapter merged in (weights/lora.py). Karcher (and
  linear) take every listed model as an input, and a `base_model` given apart is one more for Karcher, as in
  mergekit.
- Per-model `weight` become `weights`. `density` becomes `drop_rate = 1 - density`, number by number through
  gradients and conditions, and when absent it is mergekit's default 1.0 (drop nothing), not our 0.2.
  `density`, `gamma` and `epsilon` the same for every model become the field; differing, `per_model`.
- Shared `parameters`: `lambda`, `normalize`, `rescale`, `t` (nearswap's too), `filter_wise`, `select_topk`,
  `nuslerp_flatten`, `nuslerp_row_wise`, multislerp's `normalize_weights` (our `normalize`) and `eps`, RAM's
  `epsilon`, `r` and `alpha` (`ram_*`: not DELLA's epsilon); NuSLERP and Multi-SLERP without `base_model`
  interpolate the models themselves. `int8_mask` is accepted and changes nothing (it is the storage type of
  mergekit's sign mask). Values given under `parameters:` that
  mergekit binds per model (`weight`, `density`, ...) are defaults for the models that do not set them, as in
  mergekit.
- mergekit rescales what DARE and DELLA keep to the L1 norm of the whole delta, so `rescale_norm: l1` is set
  for the sparsifying methods (our own default is the papers' 1/keep-probability).
- `out_dtype` (else `dtype`) is the output dtype; the math is fp32 whatever the dtype (mergekit computes in
  `dtype`), so a bf16 merge here is the fp32 result rounded once.
- `tokenizer_source` (`base`, `union` or a model; the `tokenizer:` block's `source`, default `union`,
  `pad_to_multiple_of` and `tokens`, our `token_sources`): the vocabularies aligned to that tokenizer
  (merge/vocabulary.py). `chat_template` as it is (merge/chat_template.py).
- Model references as strings (`PATH`, `PATH+LORA`, a Hub id with `@REVISION`) or in mergekit's mapping form
  (`{model: PATH | {path, revision}, lora: ...}`), read as the string; `override_architecture` is refused.
A file of several configs that read each other's outputs by name (`mergekit-multi`'s) runs with `mnlu-jax
merge-multi` (merge/multi.py).
"""

from __future__ import annotations

from typing import Any, Callable

from mnlu_jax.merge.math import SPARSIFIER
from mnlu_jax.merge.settings import check_setting
from mnlu_jax.weights.convert import same_source

MERGEKIT_METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "della", "della_linear",
                    "breadcrumbs", "breadcrumbs_ties", "slerp", "nuslerp", "model_stock", "sce", "karcher",
                    "multislerp", "nearswap", "arcee_fusion", "ram", "ramplus_tl")
# methods whose base_model is optional: without it they combine the models themselves
OPTIONAL_BASE = ("linear", "nuslerp", "karcher", "multislerp")
TOP_LEVEL = ("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source",
             "tokenizer", "chat_template")
# per-model parameters each method takes (mergekit's NON_BASE/INPUT scope), and its shared ones
PER_MODEL = {"linear": ("weight",), "task_arithmetic": ("weight", "density"),
             **{m: ("weight", "density") for m in ("ties", "dare_ties", "dare_linear")},
             **{m: ("weight", "density", "epsilon") for m in ("della", "della_linear")},
             **{m: ("weight", "density", "gamma") for m in ("breadcrumbs", "breadcrumbs_ties")},
             "slerp": (), "nuslerp": ("weight",), "model_stock": (), "sce": (), "karcher": (),
             "multislerp": ("weight",), "nearswap": (), "arcee_fusion": (), "ram": (), "ramplus_tl": ()}
GTA = ("task_arithmetic", "ties", "dare_ties", "dare_linear", "della", "della_linear", "breadcrumbs",
       "breadcrumbs_ties")
GTA_SHARED = ("lambda", "normalize", "rescale", "int8_mask")
SHARED = {"linear": ("normalize",), "slerp": ("t",), "model_stock": ("filter_wise",),
          "nuslerp": ("nuslerp_flatten", "nuslerp_row_wise"), "sce": ("select_topk", "int8_mask"),
          "karcher": ("max_iter", "tol"), "multislerp": ("normalize_weights", "eps"), "nearswap": ("t",),
          "arcee_fusion": (), "ram": ("epsilon",), "ramplus_tl": ("r", "alpha", "epsilon"),
          **{m: GTA_SHARED for m in GTA}}
OURS = {"lambda": "lam", "normalize": "normalize", "rescale": "rescale", "t": "t", "filter_wise": "filter_wise",
        "select_topk": "select_topk", "nuslerp_flatten": "nuslerp_flatten", "nuslerp_row_wise": "nuslerp_row_wise",
        "max_iter": "max_iter", "tol": "tol", "normalize_weights": "normalize", "eps": "multislerp_eps",
        "r": "ram_r", "alpha": "ram_alpha", "epsilon": "ram_epsilon"}  # (a shared epsilon is RAM's; DELLA's is
# per model, below)
# shared parameters taken as they are, not varying by tensor here (mergekit would let them)
PLAIN_NUMBERS = ("eps", "r", "alpha", "epsilon", "max_iter", "tol")
MERGEKIT_DEFAULTS = {"density": 1.0, "gamma": 0.01, "epsilon": 0.15}
DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "half": "float16"}


def is_mergekit_config(data: Any) -> bool:
    return isinstance(data, dict) and "merge_method" in data


def reference(value: Any, here: str) -> Any:
    """A mergekit model reference as our string: a string as it is; the mapping form {model: PATH | {path,
    revision}, lora: PATH | {path, revision}} as PATH[@REVISION][+LORA[@REVISION]]. Other values are returned as
    they are, for the caller's own check to name."""
    if not isinstance(value, dict) or "model" not in value:
        return value
    extra = sorted(set(value) - {"model", "lora", "override_architecture"})
    if extra:
        raise ValueError(f"{here}: unknown key(s) {extra} in a model reference; expected model and lora")
    if value.get("override_architecture") is not None:
        raise ValueError(f"{here}.override_architecture: not supported (the architecture comes from the model's "
                         "config.json)")

    def path(part: Any, field: str) -> str:
        if isinstance(part, str) and part:
            return part
        if isinstance(part, dict) and isinstance(part.get("path"), str) and not set(part) - {"path", "revision"}:
            rev = part.get("revision")
            if rev is not None and (not isinstance(rev, str) or not rev or "@" in rev):
                raise ValueError(f"{here}.{field}.revision: expected a branch, tag or commit, got {rev!r}")
            return part["path"] + (f"@{rev}" if rev else "")
        raise ValueError(f"{here}.{field}: expected a path or {{path, revision}}, got {part!r}")

    out = path(value["model"], "model")
    if value.get("lora") is not None:
        out += "+" + path(value["lora"], "lora")
    return out


def _references(data: dict, where: str) -> dict:
    """`data` with every model reference in string form (`reference`)."""
    return map_references(data, reference, where)


def map_references(data: dict, fn: Callable[[Any, str], Any], where: str) -> dict:
    """`data` (a mergekit config) with `fn(value, here)` put in place of each model reference it holds: base_model,
    tokenizer_source, each models: entry's model, each slice's base_model and sources' models, the tokenizer's
    source and its tokens' source models. `here` names the field for errors."""
    def model_of(entry: Any, here: str) -> Any:  # a models: entry or a slice's source
        return dict(entry, model=fn(entry["model"], here)) if isinstance(entry, dict) and "model" in entry else entry

    data = dict(data)
    for key in ("base_model", "tokenizer_source"):
        if key in data:
            data[key] = fn(data[key], f"{where}: {key}")
    if isinstance(data.get("models"), list):
        data["models"] = [model_of(m, f"{where}: models[{i}].model") for i, m in enumerate(data["models"])]
    if isinstance(data.get("slices"), list):
        slices = []
        for j, piece in enumerate(data["slices"]):
            if isinstance(piece, dict):
                piece = dict(piece)
                if "base_model" in piece:
                    piece["base_model"] = fn(piece["base_model"], f"{where}: slices[{j}].base_model")
                if isinstance(piece.get("sources"), list):
                    piece["sources"] = [model_of(src, f"{where}: slices[{j}].sources[{i}].model")
                                        for i, src in enumerate(piece["sources"])]
            slices.append(piece)
        data["slices"] = slices
    block = data.get("tokenizer")
    if isinstance(block, dict):
        block = dict(block)
        if "source" in block:
            block["source"] = fn(block["source"], f"{where}: tokenizer.source")
        if isinstance(block.get("tokens"), dict):
            tokens = {}
            for token, entry in block["tokens"].items():
                here = f"{where}: tokenizer.tokens[{token!r}].source"
                if isinstance(entry, dict) and isinstance(entry.get("source"), (dict, str)):
                    src = entry["source"]
                    if isinstance(src, dict) and src.get("kind") is not None:  # {kind: model_token, model: ...}
                        src = dict(src, model=fn(src["model"], f"{here}.model")) if "model" in src else src
                    else:  # a model, as a string or in the mapping form
                        src = fn(src, here)
                    entry = dict(entry, source=src)
                tokens[token] = entry
            block["tokens"] = tokens
        data["tokenizer"] = block
    return data


def _one_minus(setting: Any) -> Any:
    """density -> drop rate through a number, a gradient or a list of {filter, value} conditions."""
    if isinstance(setting, list):
        return [dict(c, value=_one_minus(c["value"])) if isinstance(c, dict) else 1.0 - c for c in setting]
    return 1.0 - setting


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping of parameters, got {value!r}")
    return value


def _whole_model_slices(data: dict, where: str) -> dict | None:
    """A `slices:` config whose one slice takes every layer of every model (how mergekit's own slerp example and
    many merges are written) as the same config with `models:`; None for other slices (merged slice by slice)."""
    from mnlu_jax.weights.named_tensors import NamedTensors

    slices = data["slices"]
    if not isinstance(slices, list) or len(slices) != 1 or not isinstance(slices[0], dict):
        return None
    piece = slices[0]
    sources = piece.get("sources")
    if set(piece) - {"sources", "parameters", "base_model"} or not isinstance(sources, list) or not sources:
        return None
    for src in sources:
        if not isinstance(src, dict) or not isinstance(src.get("model"), str) or set(src) - {
                "model", "layer_range", "parameters"}:
            return None
        layers = NamedTensors(src["model"]).config.num_hidden_layers
        if not isinstance(src.get("layer_range"), (list, tuple)) or list(src["layer_range"]) != [0, layers]:
            return None
    out = {k: v for k, v in data.items() if k != "slices"}
    out["models"] = [{k: v for k, v in src.items() if k != "layer_range"} for src in sources]
    if piece.get("base_model") is not None:
        out["base_model"] = piece["base_model"]
    if piece.get("parameters"):  # the slice's parameters over the file's
        out["parameters"] = {**_mapping(data.get("parameters"), f"{where}: parameters"),
                             **_mapping(piece["parameters"], f"{where}: slices[0].parameters")}
    return out


def _sliced(data: dict, where: str) -> dict:
    """mergekit `slices:` of any number of sources each, merged slice by slice (merge/slices.py): each slice read
    as a whole-model config of its sources, whose base is the slice's `base_model` (else the file's) and whose
    parameters are the slice's over the file's."""
    _check_top_level(data, where, (*TOP_LEVEL, "slices"))
    if data["merge_method"] not in MERGEKIT_METHODS:
        raise ValueError(f"{where}: merge_method {data['merge_method']!r} is not supported by mnlu-jax; supported: "
                         f"{', '.join(MERGEKIT_METHODS)}")
    top = _mapping(data.get("parameters"), f"{where}: parameters")
    slices = []
    for here, piece, sources in _slice_entries(data, where):
        spans = []
        for i, src in enumerate(sources):
            _check_source(src, f"{here}.sources[{i}]")
            spans.append(layer_range(src.get("layer_range"), f"{here}.sources[{i}].layer_range"))
        whole = {"merge_method": data["merge_method"],
                 "base_model": piece.get("base_model") or data.get("base_model"),  # (mergekit's `or`)
                 "models": [{k: v for k, v in src.items() if k != "layer_range"} for src in sources],
                 "parameters": {**top, **_mapping(piece.get("parameters"), f"{here}.parameters")}}
        fields = from_mergekit(whole, here, sliced=True)
        slices.append({"sources": [{"model": src["model"], "layer_range": span} for src, span in zip(sources, spans)],
                       **{k: v for k, v in fields.items() if k not in ("method", "models", "mergekit_config")}})
    return {"method": data["merge_method"], "base": data.get("base_model") or slices[0]["base"], "slices": slices,
            **_dtype(data, where), **_tokenizer(data, where)}


def _slice_entries(data: dict, where: str) -> list[tuple[str, dict, list]]:
    """(where, slice, its sources) for each of a config's `slices:`, each a mapping of sources (a non-empty list),
    parameters and base_model, else an error naming the slice."""
    if not isinstance(data["slices"], list) or not data["slices"]:
        raise ValueError(f"{where}: slices: expected a list of {{sources: [{{model, layer_range}}, ...]}}, got "
                         f"{data['slices']!r}")
    out = []
    for j, piece in enumerate(data["slices"]):
        here = f"{where}: slices[{j}]"
        if not isinstance(piece, dict):
            raise ValueError(f"{here}: expected {{sources: [...], parameters: ..., base_model: ...}}, got {piece!r}")
        extra = sorted(set(piece) - {"sources", "parameters", "base_model"})
        if extra:
            raise ValueError(f"{here}: {extra} not supported; expected sources, parameters and base_model")
        sources = piece.get("sources")
        if not isinstance(sources, list) or not sources:
            raise ValueError(f"{here}.sources: expected a list of {{model, layer_range}}, got {sources!r}")
        out.append((here, piece, sources))
    return out


def layer_range(span: Any, here: str) -> list[int]:
    """A slice's [START, END] (integers, END excluded), else an error naming `here`."""
    if (not isinstance(span, (list, tuple)) or len(span) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in span)):
        raise ValueError(f"{here}: expected [START, END] (integers, END excluded), got {span!r}")
    return list(span)


def _one_condition_as_list(params: dict) -> dict:
    """mergekit takes a single {filter, value} condition where a list of them is expected."""
    return {k: [v] if isinstance(v, dict) else v for k, v in params.items()}


def _check_top_level(data: dict, where: str, known: tuple[str, ...]) -> None:
    """Keys a mergekit config may have here, a base_model that is a path, and the base's tokenizer."""
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: mergekit key(s) {unknown} are not supported here; known: {list(known)}")
    base = data.get("base_model")
    if base is not None and not isinstance(base, str):
        raise ValueError(f"{where}: base_model: expected a path, got {base!r}")
    source = data.get("tokenizer_source")
    if source is not None and not isinstance(source, str):
        raise ValueError(f"{where}: tokenizer_source: expected base, union or a model path, got {source!r}")
    block = data.get("tokenizer")
    if block is not None:
        if source is not None:
            raise ValueError(f"{where}: tokenizer and tokenizer_source: give one (tokenizer.source is the source)")
        if not isinstance(block, dict) or set(block) - {"source", "tokens", "pad_to_multiple_of"}:
            raise ValueError(f"{where}: tokenizer: expected {{source, tokens, pad_to_multiple_of}}, got {block!r}")
        if block.get("tokens") is not None:
            from mnlu_jax.merge.vocabulary import token_sources

            token_sources(block["tokens"], f"{where}: tokenizer.tokens")
        pad = block.get("pad_to_multiple_of")
        if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or pad < 1):
            raise ValueError(f"{where}: tokenizer.pad_to_multiple_of: expected a positive integer, got {pad!r}")
        if not isinstance(block.get("source", "union"), str):
            raise ValueError(f"{where}: tokenizer.source: expected base, union or a model path, got "
                             f"{block['source']!r}")
    template = data.get("chat_template")
    if template is not None and not isinstance(template, str):
        raise ValueError(f"{where}: chat_template: expected auto, a template name or the template's text, got "
                         f"{template!r}")


def _tokenizer(data: dict, where: str) -> dict:
    """Our tokenizer_source / pad_to_multiple_of / token_sources / chat_template of mergekit's `tokenizer_source`
    or `tokenizer:` block (whose source defaults to union, as in mergekit) and `chat_template`; a LoRA reference's
    model gives the tokenizer."""
    block = data.get("tokenizer")
    template = {"chat_template": data["chat_template"]} if data.get("chat_template") is not None else {}
    source = data.get("tokenizer_source") if block is None else block.get("source", "union")
    if source is None:
        return template
    if "+" in source and source not in ("base", "union"):
        from mnlu_jax.weights.lora import split_reference

        source = str(split_reference(source)[0])
    return {"tokenizer_source": source, **template,
            **({"pad_to_multiple_of": block["pad_to_multiple_of"]} if block and block.get("pad_to_multiple_of")
               else {}),
            **({"token_sources": block["tokens"]} if block and block.get("tokens") else {})}


def _check_reference(model: str, here: str) -> None:
    """A model path, or mergekit's MODEL+LORA (the adapter merged in as the model is read: weights/lora.py)."""
    from mnlu_jax.weights.lora import split_reference

    try:
        split_reference(model)
    except ValueError as e:
        raise ValueError(f"{here}.model: {e}") from None


def _check_source(src: Any, here: str) -> None:
    """A slice's source (or passthrough's model entry): a mapping of a model path or reference and only the keys
    mergekit reads there."""
    if not isinstance(src, dict) or not isinstance(src.get("model"), str):
        raise ValueError(f"{here}: expected {{model: PATH, layer_range: [START, END]}}, got {src!r}")
    extra = sorted(set(src) - {"model", "layer_range", "parameters"})
    if extra:
        raise ValueError(f"{here}: unknown key(s) {extra}; expected model, layer_range and parameters")
    _check_reference(src["model"], here)


def _layer_slice(src: Any, here: str, defaults: list[dict]) -> dict:
    """One passthrough source {model, layer_range, parameters: {scale}} as our slice; `defaults` are the parameter
    mappings that apply where the source sets no scale (the slice's, then the file's)."""
    _check_source(src, here)
    span = src.get("layer_range")
    if span is None:  # a whole model (mergekit's `models:` form)
        from mnlu_jax.weights.named_tensors import NamedTensors

        span = [0, NamedTensors(src["model"]).config.num_hidden_layers]
    out = {"model": src["model"], "layer_range": layer_range(span, f"{here}.layer_range")}
    for params in [_mapping(src.get("parameters"), f"{here}.parameters"), *defaults]:
        bad = sorted(set(params) - {"scale"})
        if bad:
            raise ValueError(f"{here}: parameters {bad} not parameter(s) of passthrough; it takes ['scale']")
        if "scale" in params and params["scale"] is not None:
            out["scale"] = _one_condition_as_list({"scale": params["scale"]})["scale"]
            check_setting(f"{here}.parameters.scale", out["scale"])
            break
    return out


def _passthrough(data: dict, where: str) -> dict:
    """mergekit's passthrough: `slices` of one source each, stacked (merge/passthrough.py), or one whole model."""
    _check_top_level(data, where, (*TOP_LEVEL, "slices"))
    if ("slices" in data) == ("models" in data):
        raise ValueError(f"{where}: passthrough takes `slices:` (layer ranges to stack) or `models:` (one model), "
                         "one of them")
    top = _mapping(data.get("parameters"), f"{where}: parameters")
    slices = []
    if "models" in data:
        entries = data["models"]
        if not isinstance(entries, list) or len(entries) != 1:
            raise ValueError(f"{where}: models: passthrough takes one model (mergekit's limit), got {entries!r}")
        entry = {"model": entries[0]} if isinstance(entries[0], str) else entries[0]
        if isinstance(entry, dict) and "layer_range" in entry:
            raise ValueError(f"{where}: models[0]: layer_range belongs to slices[].sources[]")
        slices.append(_layer_slice(entry, f"{where}: models[0]", [top]))
        if data.get("base_model") is not None and not same_source(data["base_model"], slices[0]["model"]):
            raise ValueError(f"{where}: base_model: mergekit adds it to passthrough's `models:` as a second input, "
                             "which passthrough refuses; leave it out")
    else:
        for here, piece, sources in _slice_entries(data, where):
            if len(sources) != 1:
                raise ValueError(f"{here}.sources: passthrough takes one source per slice (mergekit's limit), got "
                                 f"{len(sources)}")
            if not isinstance(sources[0], dict) or "layer_range" not in sources[0]:
                raise ValueError(f"{here}.sources[0]: expected {{model: PATH, layer_range: [START, END]}}, got "
                                 f"{sources[0]!r}")
            slices.append(_layer_slice(sources[0], f"{here}.sources[0]",
                                       [_mapping(piece.get("parameters"), f"{here}.parameters"), top]))
    paths = list(dict.fromkeys(s["model"] for s in slices))
    out = {**_tokenizer(data, where), "method": "passthrough", "base": data.get("base_model") or slices[0]["model"],
           "models": paths, "slices": slices}
    return {**out, **_dtype(data, where)}


def _dtype(data: dict, where: str) -> dict:
    dtype = data.get("out_dtype", data.get("dtype"))
    if dtype is None:
        return {}
    if dtype not in DTYPES:
        raise ValueError(f"{where}: dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    return {"dtype": DTYPES[dtype]}


def from_mergekit(data: dict, where: str, sliced: bool = False) -> dict:
    """The MergeConfig fields (as a mapping) of a mergekit config; errors name `where` and the mergekit key.
    `sliced`: `data` is one slice's sources read as models, whose base must be one of them."""
    original = data
    data = _references(data, where)
    if data.get("merge_method") == "passthrough":
        return {**_passthrough(data, where), "mergekit_config": original}
    if "slices" in data:
        if "models" in data:
            raise ValueError(f"{where}: slices and models: mergekit takes one or the other")
        whole = _whole_model_slices(data, where)
        if whole is None:
            return {**_sliced(data, where), "mergekit_config": original}
        data, sliced = whole, True  # (a base_model must be one of the slice's sources)
    _check_top_level(data, where, TOP_LEVEL)
    method = data["merge_method"]
    if method not in MERGEKIT_METHODS:
        raise ValueError(f"{where}: merge_method {method!r} is not supported by mnlu-jax; supported: "
                         f"{', '.join(MERGEKIT_METHODS)}")
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where}: models: expected a list of {{model: PATH, parameters: {{...}}}}, got {entries!r}")
    shared = _one_condition_as_list(_mapping(data.get("parameters"), f"{where}: parameters"))
    allowed_shared = set(SHARED[method]) | set(PER_MODEL[method])
    bad = sorted(set(shared) - allowed_shared)
    if bad:
        raise ValueError(f"{where}: parameters: {bad} not parameter(s) of {method}; it takes {sorted(allowed_shared)}")
    paths, per_model = [], []
    for i, entry in enumerate(entries):
        here = f"{where}: models[{i}]"
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise ValueError(f"{here}: expected {{model: PATH, parameters: {{...}}}}, got {entry!r}")
        extra = sorted(set(entry) - {"model", "parameters"})
        if extra:
            raise ValueError(f"{here}: unknown key(s) {extra}; expected model and parameters")
        _check_reference(entry["model"], here)
        params = _one_condition_as_list(_mapping(entry.get("parameters"), f"{here}.parameters"))
        bad = sorted(set(params) - set(PER_MODEL[method]))
        if bad:
            raise ValueError(f"{here}.parameters: {bad} not per-model parameter(s) of {method}; it takes "
                             f"{list(PER_MODEL[method]) or 'none'}")
        paths.append(entry["model"])
        per_model.append({k: params.get(k, shared.get(k)) for k in PER_MODEL[method]})
    base = data.get("base_model")
    # every listed model is an input of linear and Karcher, and of NuSLERP and Multi-SLERP without a base; for the
    # others one that is the base is mergekit's base entry, whose per-model parameters are not used
    every_model_counts = method in ("linear", "karcher") or (method in OPTIONAL_BASE and base is None)
    if base is None:
        if method not in OPTIONAL_BASE:
            raise ValueError(f"{where}: base_model: required by {method}")
        base = paths[0]  # its values are not read as a base; it gives the architecture and tokenizer
    base_listed = any(same_source(p, base) for p in paths)
    if sliced and not base_listed:
        raise ValueError(f"{where}: base_model {base}: not one of the slice's sources; mergekit merges a slice from "
                         "its sources only (list the base's layers among them)")
    if method == "karcher" and not base_listed:
        paths = [base, *paths]  # mergekit averages a base_model given apart as one more input
        per_model = [{}, *per_model]
    if method == "linear" and not base_listed:
        raise ValueError(f"{where}: base_model: linear averages it as one more input, which mergekit refuses without "
                         "a weight: list it under models with its weight, or leave base_model out")
    out: dict[str, Any] = {"method": method, "base": base, "models": paths, "mergekit_config": original}
    others = list(range(len(paths))) if every_model_counts else (
        [i for i, p in enumerate(paths) if not same_source(p, base)] or list(range(len(paths))))
    if method in ("nuslerp", "multislerp"):
        out[f"{method}_base"] = data.get("base_model") is not None
    if "weight" in PER_MODEL[method]:
        weights = [m["weight"] for m in per_model]
        missing = [i for i in others if weights[i] is None]
        if missing:
            raise ValueError(f"{where}: models[{missing[0]}].parameters.weight: required by {method} (mergekit has no "
                             "default)")
        out["weights"] = [1.0 if w is None else w for w in weights]
        for i in others:
            check_setting(f"{where}: models[{i}].parameters.weight", out["weights"][i])
    for key in ("density", "gamma", "epsilon"):
        if key not in PER_MODEL[method]:
            continue
        ours = "drop_rate" if key == "density" else key
        # absent: mergekit's default (density 1.0, where ours drops 0.2; gamma and epsilon are ours too)
        values = [per_model[i][key] if per_model[i][key] is not None else MERGEKIT_DEFAULTS[key]
                  for i in range(len(paths))]
        for i in others:
            check_setting(f"{where}: models[{i}].parameters.{key}", values[i])
        values = [_one_minus(v) if key == "density" else v for v in values]
        if all(values[i] == values[others[0]] for i in others):
            out[ours] = values[others[0]]
        else:  # model by model; the entries of models that are the base are never used
            out.setdefault("per_model", {})[ours] = [values[i] if i in others else values[others[0]]
                                                      for i in range(len(paths))]
    for key in SHARED[method]:
        if key in shared and key != "int8_mask":
            if key in PLAIN_NUMBERS and (
                    isinstance(shared[key], bool) or not isinstance(shared[key], (int, float))):
                raise ValueError(f"{where}: parameters.{key}: expected a number (it does not vary by tensor here), "
                                 f"got {shared[key]!r}")
            out[OURS[key]] = shared[key]
    if method in ("slerp", "nearswap") and "t" not in out:
        raise ValueError(f"{where}: parameters.t: required by {method}")
    if method in SPARSIFIER:
        out["rescale_norm"] = "l1"  # mergekit 0.1.5's rescale: the kept entries scaled to the delta's L1 norm
    return {**out, **_dtype(data, where), **_tokenizer(data, where)}
