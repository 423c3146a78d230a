"""The decoder as a `flax.linen` Module over the same HF-layout parameter pytree.

`MistralForCausalLM(config).init(rng, ids)` returns `{"params": {"model": ..., "lm_head": ...}}` whose leaves are
`nn.LogicallyPartitioned` boxes carrying the logical axis names of `param_logical_axes`, so Flax's own tools apply
(`nn.get_partition_spec`, `nn.logical_to_mesh_sharding` with `sharding.DEFAULT_RULES`). `apply` takes either boxed
or plain params, so checkpoints converted by `mnlu_jax.weights` plug in directly:

    model = MistralForCausalLM(config)
    logits, cache = model.apply({"params": params}, input_ids, positions, segment_ids)

The computation is `mistral.forward` (one implementation, shared with training and decoding).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from mnlu_jax.model.config import ModelConfig
from mnlu_jax.model.mistral import forward, init_params, param_logical_axes


class MistralForCausalLM(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
                 cache: Any = None, cache_index: Any = 0, last_only: bool = False):
        axes = param_logical_axes(self.config)

        def boxed_init(rng, part: str):
            tree = init_params(self.config, rng)[part]
            return jax.tree_util.tree_map(lambda x, a: nn.LogicallyPartitioned(x, a), tree, axes[part],
                                          is_leaf=lambda a: isinstance(a, tuple))

        params = {part: self.param(part, boxed_init, part) for part in axes}
        params = nn.unbox(params)
        return forward(params, self.config, input_ids, positions, segment_ids, cache=cache, cache_index=cache_index,
                       last_only=last_only)
