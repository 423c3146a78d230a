"""Conversion entry points named in the design card; thin wrappers over `mnlu_jax.weights.convert`.

    python -m convert_weights.hf_to_flax SRC OUT [--dtype bfloat16]
    python -m convert_weights.flax_to_hf SRC OUT [--shard-size 5GB] [--dtype bfloat16]
    python -m convert_weights.flax_to_gguf SRC OUT.gguf [--gguf-type f16|f32|bf16|q8_0] [--tokenizer-pre NAME]
(the same as `mnlu-jax convert hf-to-flax|flax-to-hf|flax-to-gguf ...`)
"""
