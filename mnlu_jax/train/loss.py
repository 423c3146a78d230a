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

Chunking (`chunk` positions per step of a scan) bounds the live logits at batch x chunk x vocab. On a
data-parallel mesh the weight gradient of each chunk is a sum over batch shards, so XLA reduces it across
devices once per chunk; `chunk=0` (one piece) keeps that to one reduction per step.
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
    pad = -t % chunk  # a ragged last chunk is padded with zero-weight positions, which add nothing
    if pad:
        h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
        targets, weights = (jnp.pad(x, ((0, 0), (0, pad))) for x in (targets, weights))
    n = (t + pad) // chunk

    def split(x):  # (B, T, ...) -> (n, B, chunk, ...): chunks along the sequence keep the batch axis (and its sharding)
        return jnp.moveaxis(x.reshape((b, n, chunk) + x.shape[2:]), 1, 0)

    def body(carry, xs):
        loss, grad_kernel = carry
        h_c, targets_c, weights_c = xs
        piece_loss, grad_h, piece_grad_kernel = _piece(h_c, kernel, targets_c, weights_c, tied, with_grads)
        if with_grads:
            grad_kernel = grad_kernel + piece_grad_kernel
        return (loss + piece_loss, grad_kernel), grad_h

    vocab = kernel.shape[0] if tied else kernel.shape[1]
    init = (jnp.float32(0.0), jnp.zeros((d, vocab), jnp.float32) if with_grads else None)  # (embed, vocab)
    (loss, grad_kernel), grad_h = jax.lax.scan(body, init, (split(h), split(targets), split(weights)))
    if with_grads:
        grad_h = jnp.moveaxis(grad_h, 0, 1).reshape(b, t + pad, d)[:, :t]
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
