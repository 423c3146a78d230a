"""Optimizer, loss and the jitted train step (pure functions over the state pytree)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from mnlu_jax.model.config import ModelConfig
from mnlu_jax.model.mistral import forward
from mnlu_jax.train.config import OptimSection
from mnlu_jax.train.loss import lm_head_nll_sum

# Peak dense bf16 TFLOP/s per device, for MFU when the config does not say.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v5p": 459.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0,
               "TPU v4": 275.0, "TPU v6 lite": 918.0, "TPU v6e": 918.0}


def peak_tflops(device) -> float | None:
    kind = getattr(device, "device_kind", "")
    for k, v in PEAK_TFLOPS.items():
        if k.lower() in kind.lower():
            return v
    return None


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward): the matmuls (Q, K and V with GQA's key/value
    heads, O, the three MLP matmuls, the LM head) plus causal attention scores and values (half of S per query)."""
    d, f, v, nl = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    hd, h, kvh = config.dim_per_head, config.num_attention_heads, config.kv_heads
    matmul_params = nl * (d * h * hd + 2 * d * kvh * hd + h * hd * d + 3 * d * f) + d * v
    attention = nl * 2 * 2 * h * hd * (seq_len / 2)  # QK^T and PV, causal average context S/2
    return 3 * (2 * matmul_params + attention)


def _decay_mask(params: Any) -> Any:
    # No weight decay on norms (and embeddings keep decay like HF's default only for matrices ≥ 2-D kernels).
    return jax.tree_util.tree_map_with_path(lambda p, x: "norm" not in jax.tree_util.keystr(p), params)


def make_optimizer(o: OptimSection, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    warmup = int(round(o.warmup_ratio * total_steps))
    if o.schedule == "cosine":
        sched = optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, max(warmup, 1), max(total_steps, warmup + 1), 0.0)
    elif o.schedule == "constant":
        sched = optax.join_schedules([optax.linear_schedule(0.0, o.learning_rate, max(warmup, 1)),
                                      optax.constant_schedule(o.learning_rate)], [max(warmup, 1)])
    else:
        raise ValueError(f"optim.schedule {o.schedule!r}: expected cosine or constant")
    tx = optax.chain(
        optax.clip_by_global_norm(o.grad_clip) if o.grad_clip else optax.identity(),
        optax.adamw(sched, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=_decay_mask),
    )
    return tx, sched


def loss_sums(params, config: ModelConfig, batch: dict[str, jax.Array],
              merge_rows: bool | None = None) -> tuple[jax.Array, jax.Array]:
    """Sum of token cross-entropies weighted by the assistant mask, and the sum of weights.

    The LM head and the cross-entropy run fused (train/loss.py): the gradient is formed in the forward pass,
    chunk by chunk, and the (tokens x vocab) logits are never kept for the backward pass. With `merge_rows`
    (default: when there is one device, so nothing is sharded) the chunked loss sees the batch as one sequence."""
    hidden, _ = forward(params, config, batch["inputs"], batch["positions"], batch["segment_ids"], return_hidden=True)
    tied = config.tie_word_embeddings
    kernel = params["model"]["embed_tokens"]["weight"] if tied else params["lm_head"]["kernel"]
    w = batch["weights"].astype(jnp.float32)
    targets = batch["targets"]
    if merge_rows is None:
        merge_rows = jax.device_count() == 1
    chunk = config.loss_chunk
    if chunk and merge_rows:
        # Nothing is sharded, so the rows go to the chunked loss as one sequence: it gathers the assistant tokens of
        # the whole batch, not row by row, into as few chunks as they fill (train/loss.py). A chunk still holds
        # rows x loss_chunk positions (the same live logits; small chunks would starve the matmuls).
        chunk *= hidden.shape[0]
        hidden, targets, w = (x.reshape((1, -1) + x.shape[2:]) for x in (hidden, targets, w))
    return lm_head_nll_sum(hidden, kernel, targets, w, tied, chunk), w.sum()


def opt_state_shardings(tx: optax.GradientTransformation, params) -> Any:
    """Shardings for `tx.init(params)`: every parameter-shaped leaf (AdamW's mu and nu) laid out as its parameter,
    the rest (counters) replicated over the parameters' mesh; None when the parameters are not on a mesh.

    Without them `jax.jit(tx.init)` placed mu and nu, which depend on no input's data, on one device, and the
    trainer then replicated them: every device held all of them (54 GiB for a 7B model in fp32 instead of 6.7 GiB
    on an fsdp=8 mesh; found by the ahead-of-time compile check, train/aot.py)."""
    shardings = jax.tree_util.tree_map(lambda x: getattr(x, "sharding", None), params)
    mesh = next((s.mesh for s in jax.tree_util.tree_leaves(shardings) if isinstance(s, NamedSharding)), None)
    if mesh is None:
        return None
    replicated = NamedSharding(mesh, PartitionSpec())
    return optax.tree_map_params(tx, lambda _, s: s, jax.eval_shape(tx.init, params), shardings,
                                 transform_non_params=lambda _: replicated,
                                 is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))


def state_shardings(tx: optax.GradientTransformation, params) -> dict:
    """Shardings of `init_state(params, tx)` for parameters on a mesh: theirs, the optimizer state's
    (`opt_state_shardings`), and the step counter and RNG replicated."""
    opt = opt_state_shardings(tx, params)
    if opt is None:
        raise ValueError("state_shardings: the parameters are not on a mesh")
    replicated = NamedSharding(next(s.mesh for s in jax.tree_util.tree_leaves(opt)), PartitionSpec())
    return {"params": jax.tree_util.tree_map(lambda p: p.sharding, params), "opt_state": opt,
            "step": replicated, "rng": replicated}


def init_state(params, tx: optax.GradientTransformation, rng: jax.Array | None = None) -> dict:
    """The state `train_step` consumes: parameters, optimizer state (sharded as the parameters are), step counter
    and RNG key data."""
    return {"params": params, "opt_state": jax.jit(tx.init, out_shardings=opt_state_shardings(tx, params))(params),
            "step": jnp.int32(0), "rng": jnp.zeros(2, jnp.uint32) if rng is None else rng}


def train_step(state: dict, batch: dict[str, jax.Array], *, config: ModelConfig, tx: optax.GradientTransformation,
               grad_accum: int) -> tuple[dict, dict]:
    """One optimizer step. With grad_accum > 1 the batch is split into micro-batches (scan) and the loss is the
    exact token-weighted mean over the whole batch.

    The denominator (the batch's total loss weight) depends on the data alone, so it is computed first and the
    loss is divided by it inside the differentiated function: gradients come out already normalised, with no
    extra pass over them (and, without accumulation, no zero-filled accumulator either)."""
    denom = jnp.maximum(batch["weights"].astype(jnp.float32).sum(), 1.0)

    def mean_loss(p, mb):
        lsum, wsum = loss_sums(p, config, mb)
        return lsum / denom, wsum

    if grad_accum == 1:
        (loss, wsum), grads = jax.value_and_grad(mean_loss, has_aux=True)(state["params"], batch)
    else:
        def micro(carry, mb):
            g_acc, l_acc, w_acc = carry
            (l, w), g = jax.value_and_grad(mean_loss, has_aux=True)(state["params"], mb)
            return (jax.tree_util.tree_map(jnp.add, g_acc, g), l_acc + l, w_acc + w), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, state["params"])
        mbs = jax.tree_util.tree_map(lambda x: x.reshape((grad_accum, x.shape[0] // grad_accum) + x.shape[1:]), batch)
        (grads, loss, wsum), _ = jax.lax.scan(micro, (zeros, jnp.float32(0), jnp.float32(0)), mbs)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "tokens": wsum}
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1, "rng": state["rng"]}, metrics
