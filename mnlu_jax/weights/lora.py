"""PEFT LoRA adapters applied to a checkpoint's tensors as they are read: mergekit's `model+lora` references.

    models:
      - model: checkpoints/BioMistral-7B+runs/lora_a      # the model with the adapter merged in

`NamedTensors("MODEL+ADAPTER")` (the path as a whole does not exist) reads MODEL and, tensor by tensor, adds each
adapted module's W += s·B·A, where s = lora_alpha / r (lora_alpha / √r with `use_rslora`; `alpha_pattern` per
module, as PEFT matches it), in fp32 and rounded once to W's dtype. An embedding's LoRA is (B·A)ᵀ. Full tensors the
adapter saved (`modules_to_save`, or an embedding's `base_layer` when embeddings were adapted) replace the
model's. This is PEFT's `merge_and_unload()` without loading the model: mergekit runs that and writes the merged
model to its `lora_merge_cache` before merging; here nothing is written.

Adapters PEFT would merge some other way are refused with the field named: DoRA (`use_dora`), LoRA biases
(`lora_bias`), `layer_replication`, trainable tokens, `target_parameters`, and other PEFT types.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np

PREFIX = "base_model.model."
_FACTOR = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B)\.weight$|"
                     r"^(?P<emodule>.+)\.(?P<ekind>lora_embedding_A|lora_embedding_B)$")
# adapter_config.json fields that change what merging means; a value other than these is refused
UNSUPPORTED = {"use_dora": (False, None), "lora_bias": (False, None), "layer_replication": (None, []),
               "trainable_token_indices": (None, {}, []), "target_parameters": (None, []),
               "use_qalora": (False, None)}


def split_reference(ref: str | Path) -> tuple[str | Path, str | None]:
    """(model, adapter) of a mergekit reference `MODEL+ADAPTER`; (ref, None) for a path that exists or has no
    `+`."""
    text = str(ref)
    if "+" not in text or Path(text).exists():
        return ref, None
    parts = text.split("+")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"{text}: expected MODEL or MODEL+LORA_ADAPTER (mergekit's reference), got {len(parts) - 1} "
                         "'+'")
    return parts[0], parts[1]


@dataclasses.dataclass
class LoraAdapter:
    """A PEFT LoRA adapter: per adapted tensor (its HF name), the A and B factor names and the scale; and the full
    tensors it replaces."""
    path: Path
    factors: dict[str, tuple[str, str, float, bool]]  # name -> (A, B, scale, is an embedding)
    replaced: dict[str, str]                          # name -> the adapter's tensor
    _tensors: object = None

    def get(self, key: str) -> np.ndarray:
        return np.asarray(self._tensors.get(key))

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors.shape(key))


def read_adapter(ref: str | Path) -> LoraAdapter:
    """The adapter in directory `ref` (adapter_config.json and adapter_model.safetensors, or .bin with torch);
    a Hub id is downloaded. Errors name the file and field."""
    from mnlu_jax.weights.convert import resolve_source

    try:
        path = resolve_source(ref)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"LoRA adapter {ref} (after the '+' of a MODEL+ADAPTER reference): {e}") from None
    cfg_file = path / "adapter_config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file}: missing (a PEFT LoRA adapter directory has adapter_config.json and "
                                "adapter_model.safetensors)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: not JSON ({e})") from e
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{cfg_file}: peft_type {cfg.get('peft_type')!r}: only LORA adapters are merged")
    for field, fine in UNSUPPORTED.items():
        if cfg.get(field) not in fine:
            raise ValueError(f"{cfg_file}: {field} {cfg[field]!r} is not supported (PEFT merges it otherwise)")
    for field in ("r", "lora_alpha"):
        if not isinstance(cfg.get(field), (int, float)) or isinstance(cfg.get(field), bool) or cfg[field] <= 0:
            raise ValueError(f"{cfg_file}: {field}: expected a positive number, got {cfg.get(field)!r}")
    tensors = _adapter_tensors(path)
    pairs: dict[str, dict[str, str]] = {}
    replaced = {}
    for key in tensors.names():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        m = _FACTOR.match(name)
        if m:
            module = m["module"] or m["emodule"]
            pairs.setdefault(module, {})[(m["kind"] or m["ekind"])] = key
        elif name.endswith(".base_layer.weight"):  # an adapted embedding's own (possibly resized) weight
            replaced[name[:-len(".base_layer.weight")] + ".weight"] = key
        else:  # modules_to_save: saved whole
            replaced[name] = key
    factors = {}
    alpha_pattern = cfg.get("alpha_pattern") or {}
    for module, kinds in pairs.items():
        embedding = "lora_embedding_A" in kinds or "lora_embedding_B" in kinds
        a, b = (kinds.get("lora_embedding_A"), kinds.get("lora_embedding_B")) if embedding else (
            kinds.get("lora_A"), kinds.get("lora_B"))
        if a is None or b is None:
            raise ValueError(f"{path}: {module}: has {sorted(kinds)}, expected both the A and the B factor")
        r = tensors.shape(a)[0]
        if tensors.shape(b)[-1] != r:
            raise ValueError(f"{path}: {module}: A {tensors.shape(a)} and B {tensors.shape(b)} do not share a rank")
        alpha = next((v for k, v in alpha_pattern.items() if re.match(rf"(.*\.)?({k})$", module)), cfg["lora_alpha"])
        scale = alpha / (np.sqrt(r) if cfg.get("use_rslora") else r)
        if cfg.get("fan_in_fan_out") and not embedding:
            raise ValueError(f"{cfg_file}: fan_in_fan_out true (GPT-2's Conv1D layout) is not a Llama/Mistral "
                             "layout")
        factors[module + ".weight"] = (a, b, float(scale), embedding)
    return LoraAdapter(path, factors, replaced, tensors)


def _adapter_tensors(path: Path):
    from mnlu_jax.weights.safetensors_io import SafetensorsFile

    st = path / "adapter_model.safetensors"
    if st.exists():
        return SafetensorsFile(st)
    binary = path / "adapter_model.bin"
    if not binary.exists():
        raise FileNotFoundError(f"{path}: no adapter_model.safetensors or adapter_model.bin")
    from mnlu_jax.weights.convert import _torch_to_numpy
    from mnlu_jax.weights.named_tensors import _InMemory

    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{binary}: reading .bin needs torch; install the extra: pip install 'mnlu-jax[torch]'") \
            from e
    state = torch.load(binary, map_location="cpu", weights_only=True)
    return _InMemory({k: _torch_to_numpy(v) for k, v in state.items()})


class LoraApplied:
    """A tensor reader (names, shape, dtype, get) with `adapter` merged into what it reads."""

    def __init__(self, inner, adapter: LoraAdapter, where: str):
        self.inner, self.adapter = inner, adapter
        names = set(inner.names())
        for name in [*adapter.factors, *adapter.replaced]:
            if name not in names:
                raise ValueError(f"{adapter.path}: adapts {name}, which {where} does not have")
        for name, (a, b, _, embedding) in adapter.factors.items():
            rows, cols = adapter.shape(b)[0], adapter.shape(a)[1]
            want = (cols, rows) if embedding else (rows, cols)
            if tuple(inner.shape(name)) != want:
                raise ValueError(f"{adapter.path}: {name}: B·A is {want}, the tensor of {where} is "
                                 f"{tuple(inner.shape(name))}")
        for name, key in adapter.replaced.items():
            if tuple(adapter.shape(key)) != tuple(inner.shape(name)):
                raise ValueError(f"{adapter.path}: {key} is {tuple(adapter.shape(key))}, replacing {name} of "
                                 f"{where}, which is {tuple(inner.shape(name))}")

    def names(self) -> list[str]:
        return self.inner.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.inner.shape(name)

    def dtype(self, name: str) -> np.dtype:
        return self.inner.dtype(name)

    def get(self, name: str) -> np.ndarray:
        dtype = self.inner.dtype(name)
        w = self.adapter.get(self.adapter.replaced[name]) if name in self.adapter.replaced else self.inner.get(name)
        if name not in self.adapter.factors:
            return np.asarray(w).astype(dtype, copy=False)
        a, b, scale, embedding = self.adapter.factors[name]
        delta = self.adapter.get(b).astype(np.float32) @ self.adapter.get(a).astype(np.float32)
        if embedding:
            delta = delta.T
        return (np.asarray(w, np.float32) + np.float32(scale) * delta).astype(dtype)
