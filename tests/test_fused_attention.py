"""cuDNN fused attention for training: the packed (ragged) layout's run bookkeeping, the remat policy that keeps
its forward, and (on a Hopper GPU only) its numbers against XLA's attention."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from mnlu_jax.model import mistral
from mnlu_jax.model.config import ModelConfig
from mnlu_jax.model.mistral import attend_flash, segment_runs


def test_segment_runs_cover_every_token():
    seg = jnp.asarray([[1, 1, 2, 2, 2, 3, 0, 0],   # three documents, then padding (a run of its own)
                       [1, 1, 1, 1, 1, 1, 1, 1],   # one document filling the row
                       [1, 2, 1, 2, 1, 2, 1, 2]])  # eight runs: more than the slots asked for
    lengths, offsets, count = segment_runs(seg, 4)
    np.testing.assert_array_equal(count, [4, 1, 8])
    np.testing.assert_array_equal(lengths[:2], [[2, 3, 1, 2], [8, -1, -1, -1]])
    np.testing.assert_array_equal(offsets[:2], [[0, 2, 5, 6, -1], [0, -1, -1, -1, -1]])
    np.testing.assert_array_equal(lengths[2], [1, 1, 1, 1])  # the first four runs; the count says it overflowed


@pytest.fixture
def cudnn_traceable(monkeypatch):
    """Trace (never run) the cuDNN paths on a machine without cuDNN: JAX's version and capability checks are
    answered as on a Hopper GPU with cuDNN 9.10."""
    fa = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")
    monkeypatch.setattr(fa, "check_cudnn_version", lambda: 91000)
    monkeypatch.setattr(fa, "check_compute_capability", lambda capability: True)
    monkeypatch.setattr(mistral, "cudnn_packed_attention_api",
                        lambda: (fa.dot_product_attention, fa.MaskType.PADDING_CAUSAL))


@pytest.mark.parametrize("remat,packed_runs", [("save_dots", 16), ("none", 16), ("save_dots", 0)])
def test_save_dots_keeps_the_fused_attention_forward(cudnn_traceable, remat, packed_runs):
    """Under save_dots the attention forward's outputs are saved, not recomputed in the backward pass: each
    branch of the lax.cond (packed layout, segment mask; the mask alone with packed_attention_runs 0) holds one
    forward kernel, the same count as without remat (with the plain dots policy the gradient held two each)."""
    config = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, model_type="mistral",
                         compute_dtype="bfloat16", attention_impl="cudnn", remat_policy=remat,
                         packed_attention_runs=packed_runs)
    params = mistral.init_params(config, jax.random.PRNGKey(0))
    ids = jnp.ones((2, 32), jnp.int32)
    seg = jnp.asarray([[1] * 20 + [2] * 12, [1] * 32])

    def loss(p):
        return mistral.forward(p, config, ids, segment_ids=seg, return_hidden=True)[0].astype(jnp.float32).sum()

    grad_jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
    branches = 2 if packed_runs else 1
    assert grad_jaxpr.count("dot_product_attention_fwd") == branches
    assert grad_jaxpr.count("dot_product_attention_bwd") == branches


def _hopper_cudnn() -> bool:
    return mistral.cudnn_packed_attention_api() is not None


@pytest.mark.skipif(not _hopper_cudnn(), reason="cuDNN packed attention needs a Hopper (or newer) NVIDIA GPU")
@pytest.mark.parametrize("docs_per_row,window,packed_runs", [(3, None, 4), (3, 24, 16), (4, None, 4), (40, None, 16)])
def test_packed_cudnn_attention_matches_xla(docs_per_row, window, packed_runs):
    """Rows of `docs_per_row` documents then padding (one more run): 3 documents fit 4 run slots (the packed
    layout), 4 do not, nor do 40 fit 16 (the segment mask). Outputs and gradients on real tokens equal XLA's
    attention (bf16 tolerance). Run on a GPU with JAX_PLATFORMS=cuda (tests/conftest.py defaults to the CPU)."""
    rng = np.random.default_rng(docs_per_row)
    b, t, h, kvh, hd = 2, 256, 8, 2, 64
    seg = np.zeros((b, t), np.int32)
    for r in range(b):
        cuts = np.sort(rng.choice(np.arange(1, t - 16), docs_per_row - 1, replace=False))
        bounds = [0, *cuts, t - 5 * (r + 1)]
        for s, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            seg[r, lo:hi] = s + 1
    seg = jnp.asarray(seg)
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, hd)), jnp.bfloat16) for n in (h, kvh, kvh))
    dy = jnp.asarray(rng.normal(size=(b, t, h * hd)), jnp.float32) * (seg > 0)[..., None]

    def out_and_grads(impl):
        def f(q, k, v):
            return jnp.sum(attend(q, k, v).astype(jnp.float32) * dy)

        def attend(q, k, v):
            return attend_flash(q, k, v, seg, seg, window, implementation=impl, packed_runs=packed_runs)
        out = attend(q, k, v)
        return out, jax.grad(f, argnums=(0, 1, 2))(q, k, v)

    out, grads = jax.jit(lambda: out_and_grads("cudnn"))()
    ref_out, ref_grads = jax.jit(lambda: out_and_grads("xla"))()
    real = np.asarray(seg) > 0
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    np.testing.assert_allclose(f32(out)[real], f32(ref_out)[real], atol=2e-2, rtol=2e-2)
    for g, ref in zip(grads, ref_grads):
        scale = np.abs(f32(ref)).max()
        assert np.abs(f32(g) - f32(ref)).max() <= 2e-2 * scale


def test_auto_attention_resolves_per_backend():
    """"auto" is cuDNN's attention on an NVIDIA GPU with bf16/fp16 compute and XLA's otherwise (this CPU, TPUs,
    fp32 compute); the paper's configs use it so that one file serves GPU clusters and TPU pods."""
    from mnlu_jax.model.mistral import resolve_attention_impl

    config = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, model_type="mistral", compute_dtype="bfloat16",
                         attention_impl="auto")
    on_cuda = mistral.on_nvidia_gpu()
    assert resolve_attention_impl(config) == ("cudnn" if on_cuda else "xla")
    assert resolve_attention_impl(config.replace(compute_dtype="float32")) == "xla"
    assert resolve_attention_impl(config.replace(attention_impl="cudnn")) == "cudnn"
    with pytest.raises(ValueError, match="attention_impl 'flash'"):
        resolve_attention_impl(config.replace(attention_impl="flash"))
    params = mistral.init_params(config, jax.random.PRNGKey(0))
    ids = jnp.arange(12, dtype=jnp.int32).reshape(2, 6)
    auto = np.asarray(mistral.forward(params, config, ids)[0])
    xla = np.asarray(mistral.forward(params, config.replace(attention_impl="xla"), ids)[0])
    if on_cuda:
        np.testing.assert_allclose(auto, xla, atol=5e-2, rtol=5e-2)
    else:
        np.testing.assert_array_equal(auto, xla)


def test_max_runs_per_row_counts_documents_and_padding():
    from mnlu_jax.model.mistral import max_runs_per_row

    seg = np.asarray([[1, 1, 2, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    assert max_runs_per_row(seg) == 4
    assert max_runs_per_row(seg[1:]) == 1
    assert max_runs_per_row(np.zeros((0, 8), np.int32)) == 0
    lengths, offsets, count = segment_runs(jnp.asarray(seg), 4)
    assert int(count.max()) == max_runs_per_row(seg)  # the host count agrees with the device one
