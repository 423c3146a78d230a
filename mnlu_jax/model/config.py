"""ModelConfig: the decoder's hyper-parameters, read from and written to a Hugging Face config.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

SUPPORTED_ARCHITECTURES = {"MistralForCausalLM": "mistral", "LlamaForCausalLM": "llama"}


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
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    model_type: str = "mistral"
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
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
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise ValueError(f"{source}: attention_bias/mlp_bias=True is not supported (Mistral/Llama have no biases)")
        rope_scaling = hf.get("rope_scaling")
        if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) not in (None, "default"):
            raise ValueError(f"{source}: rope_scaling {rope_scaling} is not supported; only plain RoPE")
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in hf.items() if k in fields}
        kw["model_type"] = model_type
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
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.torch_dtype,
            "use_cache": True,
            "attention_dropout": 0.0,
        }
        if self.model_type == "mistral":
            out["sliding_window"] = self.sliding_window
        else:
            out.update(attention_bias=False, mlp_bias=False, rope_scaling=None)
        return out


def tiny_config(**kw: Any) -> ModelConfig:
    """A tiny Mistral (GQA, 2 layers, window 8) for tests and the fast demo."""
    base = dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, sliding_window=8, rope_theta=10000.0,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, model_type="mistral",
    )
    base.update(kw)
    return ModelConfig(**base)
