"""The LM head and token cross-entropy fused into one differentiable function with a hand-written gradient.

Plain autodiff of `logits = h @ W; nll = logsumexp(logits) - logits[target]` keeps the (tokens x vocab) logits
for the backward pass and then runs three passes over (tokens x vocab) arrays there: the softmax gradient, a
transposed copy of it for the weight-gradient matmul, and the matmuls themselves. At a small model's shapes those
passes cost more than the matmuls (2-core CPU, 2048 tokens, vocab 8192: 533 ms for the head's forward and
backward, of which the three matmuls are about 170 ms).

Here the forward pass computes, chunk by chunk along the sequence, the logits, the weighted negative
log-likelihood *and* the gradients with respect to the hidden states and the head's weight (the softmax
gradient `softmax - onehot` is known once the log-sum-exp is). The backward pass only scales those gradients by
the incoming cotangent, so no (tokens x vocab) array outlives its chunk (the same idea as Liger's fused linear
cross-entropy). Same CPU shapes: 295 ms in one piece, 200 ms in chunks of 32-64 positions.

This works because the loss is linear in the per-token losses with weights known in the forward pass: the
gradient of `sum_i w_i * nll_i` is fixed up to the scalar the caller divides by.

Chunking (`chunk` positions of every row per loop step) bounds the live logits at batch x chunk x vocab, and
skips what carries no loss: the positions with weight > 0 are first moved to the front of their row (a stable sort
along the sequence, so the batch axis and its sharding stay), and the loop ends after the chunk that holds the
last of them in the fullest row. In SFT only the answers carry weight (13 % of the tokens of the shipped sample
mix), so the head's matmuls and its softmax run on about that share of the batch; with one device the trainer
passes the batch as one row (train/step.py), so the share is the batch's, not the fullest row's. Same CPU shapes,
13.6 % answer tokens: 200 -> 52 ms. On a data-parallel mesh the weight gradient of each chunk is a sum over batch
shards, so XLA reduces it across devices once per chunk; `chunk=0` (one piece, every position) keeps that to one
reduction per step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mnlu_jax.model.mistral import transposed_matmul


def _piece(h, kernel, targets, weights, tied: bool, with_grads: bool):
    """Weighted NLL sum of one piece (B, C) and, with `with_grads`, its gradients w.r.t. `h` and `kernel`."""
    dtype = h.dtype
    w_c = kernel.astype(dtype)
    logits = jnp.einsum("bcd,vd->bcv" if tied else "bcd,dv->bcv", h, w_c).astype(jnp.float32)
    top = jnp.max(logits, axis=-1, keepdims=True)  # no stop_gradient needed: autodiff never enters here
    exp = jnp.exp(logits - top)
    total = jnp.sum(exp, axis=-1, keepdims=True)
    lse = jnp.log(total) + top
    # The target picked by comparison with an iota (no gather, and the gradient below is elementwise).
    is_target = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2) == targets[..., None].astype(jnp.int32)
    nll = lse[..., 0] - jnp.sum(jnp.where(is_target, logits, 0.0), axis=-1)
    keep = weights > 0
    weights = weights.astype(jnp.float32)
    # where, not a product: a non-finite loss at a zero-weight position (padding) must not poison the sum
    loss = jnp.sum(jnp.where(keep, nll * weights, 0.0))
    if not with_grads:
        return loss, None, None
    grad_logits = jnp.where(keep[..., None], (exp / total - is_target) * weights[..., None], 0.0).astype(dtype)
    grad_h = jnp.einsum("bcv,vd->bcd" if tied else "bcv,dv->bcd", grad_logits, w_c)
    # (embed, vocab) for both layouts: h^T @ grad_logits with the small operand transposed is the fast form
    # (see transposed_matmul); a tied (vocab, embed) gradient is transposed once, after the last chunk.
    grad_kernel = transposed_matmul(h.reshape(-1, h.shape[-1]), grad_logits.reshape(-1, grad_logits.shape[-1]),
                                    preferred_element_type=jnp.float32)
    return loss, grad_h, grad_kernel


def _chunked(h, kernel, targets, weights, tied: bool, chunk: int, with_grads: bool):
    loss, grad_h, grad_kernel = _chunks(h, kernel, targets, weights, tied, chunk, with_grads)
    if with_grads and tied:  # accumulated as (embed, vocab), see _piece
        grad_kernel = grad_kernel.T
    return loss, grad_h, grad_kernel


def _chunks(h, kernel, targets, weights, tied: bool, chunk: int, with_grads: bool):
    b, t, d = h.shape
    if chunk <= 0 or chunk >= t:
        return _piece(h, kernel, targets, weights, tied, with_grads)
    # The weighted positions (assistant tokens) move to the front of their row, in order (a stable sort along the
    # sequence: the batch axis and its sharding stay), and the loop stops after the chunk holding the last of them
    # in the fullest row: prompt and padding positions, most of an SFT batch, cost no head matmul or softmax.
    keep = weights > 0
    order = jnp.argsort(jnp.logical_not(keep), axis=1, stable=True)
    n_live = (jnp.max(jnp.sum(keep, axis=1, dtype=jnp.int32)) + chunk - 1) // chunk
    pad = -t % chunk  # a ragged last chunk is padded with zero-weight positions, which add nothing

    def front(x):  # (B, T, ...) in `order`, padded to whole chunks
        x = jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)
        return jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))

    h_s, targets_s, weights_s = front(h), front(targets), front(weights)

    def body(i, carry):
        loss, grad_kernel, grad_h = carry
        h_c, targets_c, weights_c = (jax.lax.dynamic_slice_in_dim(x, i * chunk, chunk, axis=1)
                                     for x in (h_s, targets_s, weights_s))
        piece_loss, piece_grad_h, piece_grad_kernel = _piece(h_c, kernel, targets_c, weights_c, tied, with_grads)
        if with_grads:
            grad_kernel = grad_kernel + piece_grad_kernel
            grad_h = jax.lax.dynamic_update_slice_in_dim(grad_h, piece_grad_h, i * chunk, axis=1)
        return loss + piece_loss, grad_kernel, grad_h

    vocab = kernel.shape[0] if tied else kernel.shape[1]
    init = (jnp.float32(0.0), jnp.zeros((d, vocab), jnp.float32) if with_grads else None,  # (embed, vocab)
            jnp.zeros(h_s.shape, h.dtype) if with_grads else None)  # skipped chunks keep their zero gradient
    loss, grad_kernel, grad_h = jax.lax.fori_loop(0, n_live, body, init)
    if with_grads:  # back to the original positions
        grad_h = jnp.take_along_axis(grad_h[:, :t], jnp.argsort(order, axis=1)[..., None], axis=1)
    return loss, grad_h, grad_kernel


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def lm_head_nll_sum(h: jax.Array, kernel: jax.Array, targets: jax.Array, weights: jax.Array, tied: bool = False,
                    chunk: int = 0) -> jax.Array:
    """sum_i weights_i * (-log softmax(h_i @ W)[targets_i]) over positions with weight > 0, in fp32.

    h: (B, T, embed) final hidden states (after the last norm), in the compute dtype; kernel: the LM head, (embed,
    vocab), or with `tied` the embedding matrix (vocab, embed); targets: (B, T) ints; weights: (B, T).
    Differentiable in `h` and `kernel` (first order)."""
    return _chunked(h, kernel, targets, weights, tied, chunk, with_grads=False)[0]


def _fwd(h, kernel, targets, weights, tied, chunk):
    loss, grad_h, grad_kernel = _chunked(h, kernel, targets, weights, tied, chunk, with_grads=True)
    return loss, (grad_h, grad_kernel.astype(kernel.dtype))


def _bwd(tied, chunk, residuals, cotangent):
    grad_h, grad_kernel = residuals
    return (cotangent.astype(grad_h.dtype) * grad_h, cotangent.astype(grad_kernel.dtype) * grad_kernel, None, None)


lm_head_nll_sum.defvjp(_fwd, _bwd)
