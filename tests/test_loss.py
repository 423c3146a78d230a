"""Hand-written training gradients against plain autodiff: the fused LM head + cross-entropy (train/loss.py) and
the layer projections' `dense` (model/mistral.py)."""

import functools

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from mnlu_jax.model.config import tiny_config
from mnlu_jax.model.mistral import forward, init_params
from mnlu_jax.train.loss import lm_head_nll_sum
from mnlu_jax.train.step import loss_sums


def reference_nll_sum(h, kernel, targets, weights, tied):
    logits = (h @ (kernel.T if tied else kernel).astype(h.dtype)).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(weights > 0, nll * weights, 0.0))


def problem(tied, b=3, t=20, d=16, v=50, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    h = jax.random.normal(ks[0], (b, t, d))
    kernel = jax.random.normal(ks[1], (v, d) if tied else (d, v))
    targets = jax.random.randint(ks[2], (b, t), 0, v)
    # assistant-mask-like weights: zeros (prompt/padding), ones, and a fractional weight
    weights = (jax.random.uniform(ks[3], (b, t)) > 0.4).astype(jnp.float32).at[0, 3].set(0.5)
    return h, kernel, targets, weights


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("chunk", [0, 4, 7, 20, 64])  # one piece, dividing, ragged (padded), whole, longer than T
def test_value_and_gradients_match_autodiff(tied, chunk):
    h, kernel, targets, weights = problem(tied)
    ref, (gh_ref, gk_ref) = jax.value_and_grad(reference_nll_sum, argnums=(0, 1))(h, kernel, targets, weights, tied)
    fused = jax.jit(jax.value_and_grad(lm_head_nll_sum, argnums=(0, 1)), static_argnums=(4, 5))
    val, (gh, gk) = fused(h, kernel, targets, weights, tied, chunk)
    np.testing.assert_allclose(val, ref, rtol=1e-5)
    np.testing.assert_allclose(gh, gh_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gk, gk_ref, rtol=1e-4, atol=1e-5)
    assert gh.shape == h.shape and gk.shape == kernel.shape and gk.dtype == kernel.dtype
    # the primal alone (no gradient) gives the same number
    np.testing.assert_allclose(jax.jit(lm_head_nll_sum, static_argnums=(4, 5))(h, kernel, targets, weights, tied, chunk),
                               ref, rtol=1e-5)


def sft_like_weights(b, t):
    """Answers at different places per row, one row without any, the fullest row with 9 weighted positions."""
    w = np.zeros((b, t), np.float32)
    w[0, 5:9] = 1.0
    w[0, 15:20] = 1.0  # row 0: 9 positions, the last at the row's end
    w[1, 2] = 0.5
    return jnp.asarray(w)  # row 2: none


@pytest.mark.parametrize("tied", [False, True])
def test_chunked_loss_runs_only_the_chunks_holding_weighted_positions(tied, monkeypatch):
    """Weighted positions are gathered to the front of each row and chunks after the last of them are skipped:
    same values and gradients as autodiff, and the head runs ceil(9 / 4) = 3 times, not ceil(20 / 4) = 5."""
    import mnlu_jax.train.loss as loss_mod

    h, kernel, targets, _ = problem(tied)
    weights = sft_like_weights(*targets.shape)
    calls = []
    piece = loss_mod._piece

    def counted(*args, **kw):
        jax.debug.callback(lambda: calls.append(1))
        return piece(*args, **kw)

    monkeypatch.setattr(loss_mod, "_piece", counted)
    ref, (gh_ref, gk_ref) = jax.value_and_grad(reference_nll_sum, argnums=(0, 1))(h, kernel, targets, weights, tied)
    val, (gh, gk) = jax.jit(jax.value_and_grad(lm_head_nll_sum, argnums=(0, 1)), static_argnums=(4, 5))(
        h, kernel, targets, weights, tied, 4)
    jax.effects_barrier()
    assert len(calls) == 3
    np.testing.assert_allclose(val, ref, rtol=1e-5)
    np.testing.assert_allclose(gh, gh_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gk, gk_ref, rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(gh)[np.asarray(weights) == 0] == 0)
    # no weighted position at all: no chunk runs, and everything is zero
    calls.clear()
    val, (gh, gk) = jax.value_and_grad(lm_head_nll_sum, argnums=(0, 1))(h, kernel, targets, weights * 0, tied, 4)
    jax.effects_barrier()
    assert not calls and float(val) == 0.0 and not np.any(gh) and not np.any(gk)


@pytest.mark.parametrize("merge_rows", [False, True])
def test_model_loss_with_rows_merged_or_not_equals_unfused(merge_rows):
    """loss_sums hands the chunked loss the batch row by row (sharded) or as one sequence (one device): the same
    loss and gradients either way, equal to the unfused model's."""
    config = tiny_config().replace(loss_chunk=4)
    params = init_params(config, jax.random.PRNGKey(1))
    batch = model_batch(config, 3, 20, np.random.default_rng(0), sft_like_weights(3, 20))
    ref_val, ref_grads = jax.value_and_grad(unfused_nll_sum)(params, config, batch)
    (val, _), grads = jax.value_and_grad(
        functools.partial(loss_sums, config=config, batch=batch, merge_rows=merge_rows), has_aux=True)(params)
    np.testing.assert_allclose(val, ref_val, rtol=1e-5)
    jax.tree_util.tree_map(lambda a, r: np.testing.assert_allclose(a, r, rtol=2e-4, atol=2e-6), grads, ref_grads)


def test_cotangent_scales_gradients_and_zero_weights_get_none():
    h, kernel, targets, weights = problem(False)
    gh = jax.grad(lambda h: 0.25 * lm_head_nll_sum(h, kernel, targets, weights))(h)
    gh_ref = jax.grad(lambda h: 0.25 * reference_nll_sum(h, kernel, targets, weights, False))(h)
    np.testing.assert_allclose(gh, gh_ref, rtol=1e-4, atol=1e-6)
    # positions with zero weight receive exactly zero gradient, and huge logits there do not poison anything
    assert np.all(np.asarray(gh)[np.asarray(weights) == 0] == 0)
    # huge logits at a zero-weight position (padding) do not poison the loss or the gradients
    i, j = map(int, np.argwhere(np.asarray(weights) == 0)[0])
    val, grads = jax.value_and_grad(lm_head_nll_sum, argnums=(0, 1))(h.at[i, j].set(1e30), kernel, targets, weights)
    assert np.isfinite(float(val)) and all(np.isfinite(np.asarray(g)).all() for g in grads)
    np.testing.assert_allclose(val, reference_nll_sum(h, kernel, targets, weights, False), rtol=1e-5)


def test_bfloat16_compute_close_to_autodiff():
    h, kernel, targets, weights = problem(False, t=32)
    hb = h.astype(jnp.bfloat16)
    ref, (gh_ref, gk_ref) = jax.value_and_grad(reference_nll_sum, argnums=(0, 1))(hb, kernel, targets, weights, False)
    val, (gh, gk) = jax.value_and_grad(lm_head_nll_sum, argnums=(0, 1))(hb, kernel, targets, weights, False, 8)
    assert gh.dtype == jnp.bfloat16 and gk.dtype == jnp.float32
    np.testing.assert_allclose(val, ref, rtol=2e-2)
    np.testing.assert_allclose(np.asarray(gh, np.float32), np.asarray(gh_ref, np.float32), atol=3e-2)
    np.testing.assert_allclose(gk, gk_ref, rtol=5e-2, atol=5e-2)


def model_batch(config, b, t, rng, weights=None):
    """A batch of random token rows for `config`, one segment per row; loss weights given, or drawn from `rng` after
    the tokens (about 70 % ones)."""
    ids = jnp.asarray(rng.integers(0, config.vocab_size, (b, t + 1)), jnp.int32)
    weights = rng.random((b, t)) > 0.3 if weights is None else weights
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": jnp.asarray(weights, jnp.float32),
            "segment_ids": jnp.ones((b, t), jnp.int32), "positions": jnp.tile(jnp.arange(t), (b, 1))}


def unfused_nll_sum(params, config, batch):
    """The weighted NLL sum by plain autodiff of forward()'s logits and log-softmax."""
    logits, _ = forward(params, config, batch["inputs"], batch["positions"], batch["segment_ids"])
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["targets"][..., None], axis=-1)[..., 0]
    return jnp.sum(nll * batch["weights"])


@pytest.mark.parametrize("tied", [False, True])
def test_model_loss_gradients_equal_unfused_model(tied):
    """Through the whole model: gradients of the fused loss = autodiff of forward()'s logits and log-softmax."""
    config = tiny_config(tie_word_embeddings=tied)
    params = init_params(config, jax.random.PRNGKey(1))
    batch = model_batch(config, 2, 24, np.random.default_rng(0))
    ref_val, ref_grads = jax.value_and_grad(unfused_nll_sum)(params, config, batch)
    for chunk in (0, 5):
        cfg = config.replace(loss_chunk=chunk)
        loss = functools.partial(loss_sums, config=cfg, batch=batch)
        (val, wsum), grads = jax.value_and_grad(loss, has_aux=True)(params)
        np.testing.assert_allclose(val, ref_val, rtol=1e-5)
        assert float(wsum) == float(batch["weights"].sum())
        jax.tree_util.tree_map(lambda a, r: np.testing.assert_allclose(a, r, rtol=2e-4, atol=2e-6), grads, ref_grads)


def test_dense_gradients_equal_plain_matmul(monkeypatch):
    """The model's projections through dense() (hand-written backward) = the same model with plain `x @ kernel`."""
    import mnlu_jax.model.mistral as mistral

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 6))
    w = jax.random.normal(jax.random.PRNGKey(1), (6, 4))
    probe = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 4))
    got = jax.grad(lambda x, w: jnp.sum(mistral.dense(x, w) * probe), argnums=(0, 1))(x, w)
    ref = jax.grad(lambda x, w: jnp.sum((x @ w) * probe), argnums=(0, 1))(x, w)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)

    config = tiny_config()
    params = init_params(config, jax.random.PRNGKey(3))
    ids = jnp.asarray(np.random.default_rng(1).integers(0, config.vocab_size, (2, 17)), jnp.int32)

    def grads():
        return jax.grad(lambda p: jnp.sum(forward(p, config, ids)[0][..., :7] ** 2))(params)

    with_dense = grads()
    monkeypatch.setattr(mistral, "dense", lambda x, kernel: x @ kernel)
    plain = grads()
    jax.tree_util.tree_map(lambda a, r: np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-6), with_dense, plain)


def test_transposed_matmul_is_a_transpose_times_b():
    """The weight-gradient product with its explicit (barrier-protected) transpose: a^T @ b, under jit too, and
    with the sum taken in fp32 when asked (bf16 inputs)."""
    from mnlu_jax.model.mistral import transposed_matmul

    a = jax.random.normal(jax.random.PRNGKey(0), (37, 6))
    b = jax.random.normal(jax.random.PRNGKey(1), (37, 11))
    ref = np.asarray(a).T.astype(np.float64) @ np.asarray(b).astype(np.float64)
    for fn in (transposed_matmul, jax.jit(transposed_matmul)):
        out = fn(a, b)
        assert out.shape == (6, 11)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    with pytest.MonkeyPatch.context() as mp:  # the accelerator branch (plain contraction) traced here on CPU
        mp.setattr(jax, "default_backend", lambda: "gpu")
        # fresh wrappers: jit would reuse the trace of `transposed_matmul` made on the CPU branch above
        np.testing.assert_allclose(jax.jit(lambda a, b: transposed_matmul(a, b))(a, b), ref, rtol=1e-5, atol=1e-5)
        assert "optimization_barrier" not in str(jax.make_jaxpr(lambda a, b: transposed_matmul(a, b))(a, b))
    assert "optimization_barrier" in str(jax.make_jaxpr(lambda a, b: transposed_matmul(a, b))(a, b))
    out = transposed_matmul(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("remat", ["none", "save_dots"])
def test_unrolled_layers_give_the_scan_gradients(remat):
    """scan_layers=False (a Python loop over the stacked layers: no stacked residual buffers, the faster choice on
    CPU for shallow models) computes the same loss and gradients as the scan."""
    config = tiny_config(remat_policy=remat, loss_chunk=4)
    params = init_params(config, jax.random.PRNGKey(4))
    b, t = 2, 12
    rng = np.random.default_rng(2)
    ids = jnp.asarray(rng.integers(0, config.vocab_size, (b, t + 1)), jnp.int32)
    batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": jnp.ones((b, t), jnp.float32),
             "segment_ids": jnp.ones((b, t), jnp.int32), "positions": jnp.tile(jnp.arange(t), (b, 1))}
    out = {}
    for scan in (True, False):
        cfg = config.replace(scan_layers=scan)
        loss_fn = functools.partial(loss_sums, config=cfg, batch=batch)
        out[scan] = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    (v_scan, _), g_scan = out[True]
    (v_loop, _), g_loop = out[False]
    np.testing.assert_allclose(v_loop, v_scan, rtol=1e-6)
    jax.tree_util.tree_map(lambda a, r: np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-7), g_loop, g_scan)


def test_unrolled_layers_scratch_grows_linearly_with_depth():
    """The layer loop's gradient must not hold a full-size stacked gradient per layer. Slicing the stacked weights
    per layer did (their transposes are zero-padded full arrays, summed): a train step's XLA scratch grew 8.7x from
    2 to 8 layers here, and 12 GiB for SmolLM2's 30 layers; one split per weight grows it linearly (2.7x)."""
    from mnlu_jax.train.config import OptimSection
    from mnlu_jax.train.step import init_state, make_optimizer, train_step

    def scratch_bytes(layers):
        config = tiny_config(num_hidden_layers=layers, scan_layers=False, loss_chunk=4)
        tx, _ = make_optimizer(OptimSection(learning_rate=1e-4, warmup_ratio=0.0, grad_clip=0.0), 10)
        state = jax.eval_shape(lambda: init_state(init_params(config, jax.random.PRNGKey(0)), tx))
        b, t = 2, 16
        batch = {"inputs": jnp.zeros((b, t), jnp.int32), "targets": jnp.zeros((b, t), jnp.int32),
                 "weights": jnp.ones((b, t)), "segment_ids": jnp.ones((b, t), jnp.int32),
                 "positions": jnp.tile(jnp.arange(t), (b, 1))}
        step = jax.jit(functools.partial(train_step, config=config, tx=tx, grad_accum=1), donate_argnums=(0,))
        return step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes

    assert scratch_bytes(8) < 4 * scratch_bytes(2)
