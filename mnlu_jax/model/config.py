"""ModelConfig: the decoder's hyper-parameters, read from and written to a Hugging Face config.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

SUPPORTED_ARCHITECTURES = {"MistralForCausalLM": "mistral", "LlamaForCausalLM": "llama"}

# RoPE variants whose frequencies do not depend on the sequence length, with the keys each needs besides its
# type (transformers' modeling_rope_utils); "dynamic", "yarn", "longrope" are refused, never approximated.
ROPE_SCALING_KEYS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def normalize_rope_scaling(value: Any, source: str = "rope_scaling") -> tuple[tuple[str, Any], ...] | None:
    """A config.json `rope_scaling` / `rope_parameters` dict -> sorted (key, value) pairs (hashable, so a config
    stays a static jit argument), without `rope_theta`; None for plain RoPE. Unknown types raise."""
    if value is None:
        return None
    items = dict(value)
    items.pop("rope_theta", None)
    kind = items.pop("rope_type", None)
    legacy_kind = items.pop("type", None)  # the key's name before transformers 4.45
    kind = kind or legacy_kind or "default"
    partial = items.pop("partial_rotary_factor", 1.0)
    if partial not in (None, 1, 1.0):
        raise ValueError(f"{source}: partial_rotary_factor {partial} is not supported (RoPE over the whole head)")
    if kind == "default":
        return None
    if kind not in ROPE_SCALING_KEYS:
        raise ValueError(f"{source}: RoPE type {kind!r} is not supported (supported: default, "
                         f"{', '.join(ROPE_SCALING_KEYS)}); its frequencies depend on the sequence length or need "
                         "attention scaling that this model does not implement")
    missing = [k for k in ROPE_SCALING_KEYS[kind] if items.get(k) is None]
    if missing:
        raise ValueError(f"{source}: RoPE type {kind!r} needs {missing}, got {dict(value)}")
    return tuple(sorted({"rope_type": kind, **items}.items()))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a Mistral/Llama decoder (names follow transformers' config.json)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int | None = None
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # None: plain RoPE; else config.json's rope_scaling as sorted (key, value) pairs (a dict is accepted and
    # normalised): "linear" or "llama3" (Llama 3.1+), see mistral.rope_frequencies.
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    model_type: str = "mistral"
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2  # Llama 3 lists several; a list is accepted, kept as a tuple
    pad_token_id: int | None = None
    torch_dtype: str = "bfloat16"
    # Compute choices that are not part of config.json.
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"  # none | full | save_dots
    # Training loss: sequence positions per chunk of the fused LM head + cross-entropy (train/loss.py);
    # 0 = the whole sequence in one piece.
    loss_chunk: int = 0
    # Attention without a KV cache (training, scoring): "xla" (einsum + mask, any backend), "cudnn" (cuDNN flash
    # attention through jax.nn.dot_product_attention; NVIDIA GPUs, bf16/fp16 compute) or "auto" (cudnn where it
    # runs, else xla).
    attention_impl: str = "xla"
    # cuDNN on Hopper+: run slots per row for its packed (ragged) layout, in which each document attends within
    # itself only; a batch whose fullest row has more runs of equal segment ids takes the segment-mask kernel
    # (see mistral.attend_flash). 0: always the mask.
    packed_attention_runs: int = 16

    def __post_init__(self):
        # frozen: fields are normalised once, here, to hashable values (a config is a static jit argument)
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, tuple):
            normalized = normalize_rope_scaling(self.rope_scaling, "ModelConfig.rope_scaling")
            object.__setattr__(self, "rope_scaling", normalized)

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def eos_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    def num_params(self) -> int:
        d, f, v, nl = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_hidden_layers
        hd = self.dim_per_head
        attn = d * hd * self.num_attention_heads * 2 + d * hd * self.kv_heads * 2
        layer = attn + 3 * d * f + 2 * d
        return v * d * (1 if self.tie_word_embeddings else 2) + nl * layer + d

    def replace(self, **kw: Any) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    # ---- Hugging Face config.json -------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, hf: dict, source: str = "config.json", **overrides: Any) -> "ModelConfig":
        archs = hf.get("architectures") or []
        model_type = hf.get("model_type")
        if model_type not in ("mistral", "llama"):
            raise ValueError(
                f"{source}: unsupported model_type {model_type!r} (architectures {archs}); "
                "expected 'mistral' or 'llama' (MistralForCausalLM / LlamaForCausalLM)"
            )
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if key not in hf:
                raise ValueError(f"{source}: missing required field {key!r}")
        if hf.get("hidden_act", "silu") not in ("silu", "swish"):
            raise ValueError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (SwiGLU uses silu)")
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise ValueError(f"{source}: attention_bias/mlp_bias=True is not supported (Mistral/Llama have no biases)")
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in hf.items() if k in fields}
        kw["model_type"] = model_type
        kw["rope_theta"], kw["rope_scaling"] = _rope_from_hf(hf, source)
        if kw.get("num_key_value_heads") is None:
            kw["num_key_value_heads"] = hf["num_attention_heads"]
        if model_type == "llama":
            kw["sliding_window"] = None
        # transformers >= 4.56 writes `dtype`; older versions `torch_dtype`.
        kw["torch_dtype"] = str(hf.get("torch_dtype") or hf.get("dtype") or "bfloat16")
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_json_file(cls, path: str | Path, **overrides: Any) -> "ModelConfig":
        path = Path(path)
        try:
            hf = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read config.json: {e}") from e
        return cls.from_hf_dict(hf, source=str(path), **overrides)

    def to_hf_dict(self) -> dict:
        arch = "MistralForCausalLM" if self.model_type == "mistral" else "LlamaForCausalLM"
        out = {
            "architectures": [arch],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.dim_per_head,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.torch_dtype,
            "use_cache": True,
            "attention_dropout": 0.0,
        }
        # The legacy keys (rope_theta, rope_scaling): transformers 4.x and 5.x and vLLM all read them.
        out["rope_scaling"] = dict(self.rope_scaling) if self.rope_scaling else None
        if self.model_type == "mistral":
            out["sliding_window"] = self.sliding_window
        else:
            out.update(attention_bias=False, mlp_bias=False)
        return out


def _rope_from_hf(hf: dict, source: str) -> tuple[float, tuple | None]:
    """(rope_theta, normalised rope_scaling) from either config.json layout: transformers 5 writes
    `rope_parameters` (theta inside, no top-level `rope_theta`), earlier versions `rope_theta` + `rope_scaling`.
    Reading only the old keys would take a v5 file's theta as the 10,000 default without a word."""
    params = hf.get("rope_parameters")
    if params is not None and not (isinstance(params, dict) and ("rope_type" in params or "rope_theta" in params)):
        raise ValueError(f"{source}: rope_parameters {params!r}: expected one dict with rope_type/rope_theta "
                         "(per-layer-type RoPE is not supported)")
    thetas = {k: float(v) for k, v in (("rope_theta", hf.get("rope_theta")),
                                       ("rope_parameters.rope_theta", (params or {}).get("rope_theta")))
              if v is not None}
    if len(set(thetas.values())) > 1:
        raise ValueError(f"{source}: conflicting RoPE bases {thetas}")
    scalings = [(k, normalize_rope_scaling(v, f"{source}: {k}")) for k, v in
                (("rope_scaling", hf.get("rope_scaling")), ("rope_parameters", params)) if v is not None]
    if len({v for _, v in scalings}) > 1:
        raise ValueError(f"{source}: rope_scaling and rope_parameters disagree: {dict(scalings)}")
    theta = next(iter(thetas.values()), ModelConfig.rope_theta)
    return theta, scalings[0][1] if scalings else None


def tiny_config(**kw: Any) -> ModelConfig:
    """A tiny Mistral (GQA, 2 layers, window 8) for tests and the fast demo."""
    base = dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, sliding_window=8, rope_theta=10000.0,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, model_type="mistral",
    )
    base.update(kw)
    return ModelConfig(**base)
