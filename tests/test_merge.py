"""Merge math: the paper's DARE semantics, invariants, streaming == in-memory, and mergekit 0.1.5 agreement."""

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from mnlu_jax.merge import MergeSpec, merge_pytrees
from mnlu_jax.merge.math import merge_tensor
from mnlu_jax.merge.streaming import merge_checkpoints
from mnlu_jax.weights.convert import source_name
from mnlu_jax.weights.safetensors_io import SafetensorsCheckpoint
from tests.conftest import make_tiny_hf


def _pair(n=200_000, seed=0):
    rng = np.random.default_rng(seed)
    base = {"w": rng.normal(size=(n // 100, 100)).astype(np.float32)}
    ft = {"w": base["w"] + rng.normal(scale=0.1, size=base["w"].shape).astype(np.float32)}
    return base, ft


def test_drop_rate_zero_is_the_linear_average():
    base, ft = _pair()
    other = {"w": ft["w"] * 0.5}
    dare = merge_pytrees(base, [ft, other], MergeSpec("dare", drop_rate=0.0))
    linear = merge_pytrees(base, [ft, other], MergeSpec("linear"))
    # θ_b + mean(θ_i − θ_b) and mean(θ_i) agree up to fp32 rounding of the two summation orders.
    np.testing.assert_allclose(dare["w"], linear["w"], rtol=0, atol=4 * np.finfo(np.float32).eps * 8)


@pytest.mark.parametrize("method", ["dare", "ties", "dare_ties", "della", "task_arithmetic", "linear"])
def test_zero_delta_leaves_base_bitwise(method):
    base, _ = _pair()
    base_bf16 = {"w": jnp.asarray(base["w"], jnp.bfloat16)}
    out = merge_pytrees(base_bf16, [base_bf16, base_bf16], MergeSpec(method, drop_rate=0.3))
    assert out["w"].dtype == jnp.bfloat16
    assert np.asarray(out["w"]).tobytes() == np.asarray(base_bf16["w"]).tobytes()


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_kept_fraction_and_exact_rescale(p):
    base, ft = _pair(1_000_000)
    out = merge_pytrees(base, [ft], MergeSpec("dare", drop_rate=p))
    delta = ft["w"] - base["w"]
    got = np.asarray(out["w"]) - base["w"]
    kept = np.asarray(out["w"]) != base["w"]
    n = kept.size
    # Binomial: |kept/n − (1 − p)| within 6 standard deviations.
    assert abs(kept.mean() - (1 - p)) < 6 * np.sqrt(p * (1 - p) / n)
    # dropped entries are the base exactly; kept ones are base + δ/(1 − p) up to one fp32 rounding of the sum
    np.testing.assert_array_equal(np.asarray(out["w"])[~kept], base["w"][~kept])
    np.testing.assert_allclose(got[kept], delta[kept] / (1 - p), rtol=1e-5, atol=1e-6)
    # and the DARE step itself scales each kept delta by exactly 1/(1 − p), bit for bit
    from mnlu_jax.merge.math import dare_drop, tensor_key

    dropped = np.asarray(dare_drop(jnp.asarray(delta), tensor_key(0, "w", 0), p, rescale=True))
    k2 = dropped != 0
    np.testing.assert_array_equal(dropped[k2], delta[k2] * np.float32(1 / (1 - p)))
    assert np.array_equal(k2, kept)  # the same mask as the merge used


def test_same_seed_same_output_different_seed_different_mask():
    base, ft = _pair()
    a = merge_pytrees(base, [ft], MergeSpec("dare", seed=1))
    b = merge_pytrees(base, [ft], MergeSpec("dare", seed=1))
    c = merge_pytrees(base, [ft], MergeSpec("dare", seed=2))
    np.testing.assert_array_equal(a["w"], b["w"])
    assert (np.asarray(a["w"]) != np.asarray(c["w"])).mean() > 0.1


def test_masks_do_not_depend_on_traversal_order():
    base, ft = _pair()
    t1 = merge_pytrees({"a": base["w"], "b": base["w"]}, [{"a": ft["w"], "b": ft["w"]}], MergeSpec("dare"))
    t2 = merge_pytrees({"b": base["w"]}, [{"b": ft["w"]}], MergeSpec("dare"))
    np.testing.assert_array_equal(t1["b"], t2["b"])
    assert not np.array_equal(t1["a"], t1["b"])  # different names, different masks


def test_paper_two_model_case_is_0625_masked_delta():
    base, ft = _pair(500_000)
    out = merge_pytrees(base, [base, ft], MergeSpec("dare", drop_rate=0.2, apply="average"))
    delta = ft["w"] - base["w"]
    moved = np.asarray(out["w"]) - base["w"]
    kept = np.asarray(out["w"]) != base["w"]
    np.testing.assert_allclose(moved[kept], 0.625 * delta[kept], rtol=1e-5, atol=3e-7)  # one fp32 ulp of |θ|≈1
    assert abs(kept.mean() - 0.8) < 6 * np.sqrt(0.16 / kept.size)
    # the expectation is the plain average of the two models
    assert abs(moved.mean() - 0.5 * delta.mean()) < 5e-4


def test_sharded_equals_unsharded():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    base, ft = _pair(80_000)
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "tensor"))
    sh = NamedSharding(mesh, P("data", "tensor"))
    sb = {"w": jax.device_put(base["w"], sh)}
    sf = {"w": jax.device_put(ft["w"], sh)}
    # (DELLA's row ranks: a host sort in a partitioned computation deadlocked the CPU devices)
    for spec in (MergeSpec("dare", seed=3), MergeSpec("della", drop_rate=0.5, epsilon=0.1, seed=3)):
        a = merge_pytrees(sb, [sf], spec)
        b = merge_pytrees(base, [ft], spec)
        np.testing.assert_array_equal(np.asarray(a["w"]), np.asarray(b["w"]))


def test_ties_by_hand():
    base = {"w": np.zeros(4, np.float32)}
    m1 = {"w": np.array([1.0, -2.0, 0.1, 3.0], np.float32)}
    m2 = {"w": np.array([2.0, 1.0, -0.2, -1.0], np.float32)}
    out = merge_pytrees(base, [m1, m2], MergeSpec("ties", drop_rate=0.5))
    # top-2 of m1: {3.0, -2.0}; of m2: {2.0, 1.0}. Sums: [2, -1, 0, 3] -> signs [+, -, +, +].
    np.testing.assert_allclose(out["w"], [2.0, -2.0, 0.0, 3.0])


# ------------------------------------------------------------------ streaming on checkpoints
@pytest.fixture
def hf_pair(tmp_path):
    base = make_tiny_hf(tmp_path / "base", seed=0)
    ft = make_tiny_hf(tmp_path / "ft", seed=1)
    return base, ft


def _flat(d):
    st = SafetensorsCheckpoint(d)
    return {n: np.asarray(st.get(n)) for n in st.names()}


def test_streaming_equals_pytree_api(hf_pair, tmp_path):
    base, ft = hf_pair
    spec = MergeSpec("dare", drop_rate=0.2, seed=42)
    out = merge_checkpoints(base, [base, ft], spec, tmp_path / "merged", max_shard_bytes=50_000, progress=False)
    assert (out / "model.safetensors.index.json").exists() and (out / "merge_config.json").exists()
    merged = _flat(out)
    ref = merge_pytrees(_flat(base), [_flat(base), _flat(ft)], spec)
    assert set(merged) == set(ref)
    for n in merged:
        np.testing.assert_array_equal(merged[n], np.asarray(ref[n]), err_msg=n)
    import transformers
    transformers.AutoModelForCausalLM.from_pretrained(out)  # loads


def test_exclude_keeps_base(hf_pair, tmp_path):
    base, ft = hf_pair
    out = merge_checkpoints(base, [ft], MergeSpec("linear"), tmp_path / "m", exclude=r"norm", progress=False)
    merged, b = _flat(out), _flat(base)
    assert np.array_equal(merged["model.norm.weight"], b["model.norm.weight"])
    assert not np.array_equal(merged["model.embed_tokens.weight"], b["model.embed_tokens.weight"])
    with pytest.raises(ValueError, match=r"exclude 'norm\(': not a regular expression \(missing \)"):
        merge_checkpoints(base, [ft], MergeSpec("linear"), tmp_path / "m2", exclude=r"norm(", progress=False)
    with pytest.raises(ValueError, match=r"exclude '\[': not a regular expression"):
        merge_pytrees(_flat(base), [_flat(ft)], MergeSpec("linear"), exclude="[")
    assert not (tmp_path / "m2").exists()


def test_orbax_and_gguf_checkpoints_are_read_lazily_and_alike(hf_pair, tmp_path, monkeypatch):
    """NamedTensors reads our checkpoints one stacked parameter at a time (each restored once when the names are
    walked in order) and GGUF files tensor by tensor, with the same tensors as the safetensors they came from; a
    merge from our checkpoint is bitwise the merge from its HF directory."""
    import orbax.checkpoint as ocp

    from mnlu_jax.data.tiny_tokenizer import train_tiny_tokenizer
    from mnlu_jax.weights import names as N
    from mnlu_jax.weights.convert import hf_to_flax
    from mnlu_jax.weights.gguf_export import export_gguf
    from mnlu_jax.weights.named_tensors import NamedTensors, ordered

    base, ft = hf_pair
    ours = hf_to_flax(ft, tmp_path / "ft_ours", progress=False)
    with_tokenizer = make_tiny_hf(tmp_path / "g", vocab_size=320, seed=2)
    train_tiny_tokenizer(["Aspirin was given daily."] * 5, 300, with_tokenizer)
    gguf = export_gguf(with_tokenizer, tmp_path / "g.gguf", tensor_type="f32", progress=False)
    restores = []
    real_restore = ocp.PyTreeCheckpointer.restore
    monkeypatch.setattr(ocp.PyTreeCheckpointer, "restore",
                        lambda self, *a, **k: restores.append(1) or real_restore(self, *a, **k))
    for source, hf in ((NamedTensors(ours), _flat(ft)), (NamedTensors(gguf), _flat(with_tokenizer))):
        names = ordered(source.names(), source.config)
        assert set(names) == set(hf)
        for n in names:
            assert source.shape(n) == hf[n].shape and source.get(n).tobytes() == hf[n].tobytes(), (source.path, n)
    assert NamedTensors(ours).names() == [e.hf_name for e in N.entries(NamedTensors(ours).config)]
    assert len(restores) == len({e.path for e in N.entries(NamedTensors(ours).config)})  # once per parameter
    spec = MergeSpec("ties", drop_rate=0.5, seed=3)
    from_ours = _flat(merge_checkpoints(base, [base, ours], spec, tmp_path / "mo", progress=False))
    from_hf = _flat(merge_checkpoints(base, [base, ft], spec, tmp_path / "mh", progress=False))
    assert set(from_ours) == set(from_hf) and all(from_ours[n].tobytes() == from_hf[n].tobytes() for n in from_hf)


def test_vocab_mismatch_is_an_error_unless_a_policy_is_chosen(tmp_path):
    base = make_tiny_hf(tmp_path / "base", seed=0)
    ft = make_tiny_hf(tmp_path / "ft", seed=1, vocab_size=130)
    with pytest.raises(ValueError, match="vocabulary sizes differ"):
        merge_checkpoints(base, [ft], MergeSpec("dare"), tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists()
    out = merge_checkpoints(base, [base, ft], MergeSpec("linear"), tmp_path / "m2", vocab_policy="pad_mean", progress=False)
    merged, b, f = _flat(out), _flat(base), _flat(ft)
    emb = merged["model.embed_tokens.weight"]
    assert emb.shape == (130, 64)
    pad = b["model.embed_tokens.weight"].mean(0)
    np.testing.assert_allclose(emb[128], (pad + f["model.embed_tokens.weight"][128]) / 2, rtol=1e-5)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 130
    out = merge_checkpoints(base, [ft], MergeSpec("linear"), tmp_path / "m3", vocab_policy="truncate", progress=False)
    assert _flat(out)["lm_head.weight"].shape == (128, 64)
    # the tokenizer that knows the merge's rows goes with it: the fine-tune's when its added tokens are kept
    for d, n in ((base, 128), (ft, 130)):
        (Path(d) / "tokenizer_config.json").write_text(json.dumps({"vocab": n}))
    for policy, rows, source in (("pad_mean", 130, ft), ("truncate", 128, base)):
        out = merge_checkpoints(base, [base, ft], MergeSpec("linear"), tmp_path / f"tok_{policy}",
                                vocab_policy=policy, progress=False)
        assert json.loads((out / "tokenizer_config.json").read_text()) == {"vocab": rows}
        assert json.loads((out / "merge_config.json").read_text())["tokenizer_from"] == str(Path(source).absolute())
    # merge-stats compares a fine-tune that added tokens on the rows both have (it stopped with advice to pass a
    # --vocab-policy it does not take)
    from mnlu_jax.merge.stats import merge_stats

    rows = {r["tensor"]: r for r in merge_stats(base, [ft], tmp_path / "st", plot=False)}
    b, f = _flat(base), _flat(ft)
    d = f["lm_head.weight"][:128] - b["lm_head.weight"]
    assert rows["lm_head.weight"]["delta_norm_0"] == pytest.approx(float(np.linalg.norm(d)), rel=1e-5)
    assert json.loads((tmp_path / "st" / "merge_stats_models.json").read_text())["vocabulary_rows_compared"] == {
        "lm_head.weight": 128, "model.embed_tokens.weight": 128}


def test_shape_and_architecture_mismatch_name_the_problem(tmp_path):
    base = make_tiny_hf(tmp_path / "base", seed=0)
    other = make_tiny_hf(tmp_path / "other", seed=1, intermediate_size=32)
    with pytest.raises(ValueError, match="intermediate_size"):
        merge_checkpoints(base, [other], MergeSpec("dare"), tmp_path / "m", progress=False)


# ------------------------------------------------------------------ mergekit 0.1.5 as the reference
MERGEKIT_MANY = """
import sys, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions

import tempfile
options = MergeOptions(random_seed=0, quiet=True, lora_merge_cache=tempfile.mkdtemp())  # (model+lora references)
for config, out in zip(sys.argv[1::2], sys.argv[2::2]):  # as mergekit-yaml CONFIG OUT --random-seed 0 does
    options.apply_global_options()
    source = open(config).read()
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(source)), out, options=options, config_source=source)
"""


def _mergekit_many(tmp_path, configs: dict[str, dict]) -> dict[str, dict]:
    """Several mergekit configs in one process (each `mergekit-yaml` run spends seconds importing torch)."""
    if shutil.which("mergekit-yaml") is None:
        pytest.skip("mergekit not installed (pip install 'mnlu-jax[reference]')")
    import sys

    import yaml

    argv = []
    for name, config in configs.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        argv += [str(tmp_path / f"{name}.yaml"), str(tmp_path / f"mk_{name}")]
    subprocess.run([sys.executable, "-c", MERGEKIT_MANY, *argv], check=True, capture_output=True)
    return {name: _flat(tmp_path / f"mk_{name}") for name in configs}


def _mergekit(tmp_path, config: dict, name: str):
    return _mergekit_many(tmp_path, {name: config})[name]


@pytest.mark.parametrize("method,mk,params", [
    ("linear", {"merge_method": "linear"}, {"weights": (0.3, 0.7)}),
    ("task_arithmetic", {"merge_method": "task_arithmetic", "parameters": {"lambda": 0.8}}, {"lam": 0.8, "weights": (0.3, 0.7)}),
    ("ties", {"merge_method": "ties", "parameters": {"normalize": True}}, {"drop_rate": 0.5, "weights": (0.3, 0.7)}),
])
def test_matches_mergekit(tmp_path, method, mk, params):
    base = make_tiny_hf(tmp_path / "base", seed=0)
    m1 = make_tiny_hf(tmp_path / "m1", seed=1)
    m2 = make_tiny_hf(tmp_path / "m2", seed=2)
    density = {"density": 1 - params.get("drop_rate", 0.0)} if method == "ties" else {}
    cfg = {"merge_method": mk["merge_method"], "dtype": "float32",
           "models": [{"model": str(m1), "parameters": {"weight": params["weights"][0], **density}},
                      {"model": str(m2), "parameters": {"weight": params["weights"][1], **density}}]}
    if method != "linear":
        cfg["base_model"] = str(base)
    if "parameters" in mk:
        cfg["parameters"] = mk["parameters"]
    ref = _mergekit(tmp_path, cfg, method)
    out = merge_checkpoints(base, [m1, m2], MergeSpec(method, **params), tmp_path / "ours", progress=False)
    ours = _flat(out)
    for n in ours:
        np.testing.assert_allclose(ours[n], ref[n], rtol=1e-5, atol=1e-6, err_msg=n)


@pytest.mark.parametrize("method,mk_params,model_params,spec", [
    ("slerp", {"t": 0.3}, {}, {"t": 0.3}),
    ("model_stock", {}, {}, {}),
    ("model_stock", {"filter_wise": True}, {}, {"filter_wise": True}),
    ("breadcrumbs", {}, {"weight": 0.6, "density": 0.7, "gamma": 0.05}, {"drop_rate": 0.3, "gamma": 0.05}),
    ("breadcrumbs_ties", {}, {"weight": 0.6, "density": 0.7, "gamma": 0.05}, {"drop_rate": 0.3, "gamma": 0.05}),
])
def test_more_methods_match_mergekit(tmp_path, method, mk_params, model_params, spec):
    base = make_tiny_hf(tmp_path / "base", seed=0)
    ms = [make_tiny_hf(tmp_path / f"m{i}", seed=i) for i in (1, 2, 3)][:1 if method == "slerp" else 3]
    # mergekit lists the base among slerp's two inputs; its other methods take the models besides it
    listed = [base, *ms] if method == "slerp" else ms
    cfg = {"merge_method": method, "base_model": str(base), "dtype": "float32",
           "models": [{"model": str(m), **({"parameters": model_params} if model_params else {})} for m in listed]}
    if mk_params:
        cfg["parameters"] = mk_params
    ref = _mergekit(tmp_path, cfg, method)
    weights = (0.6,) * len(ms) if "weight" in model_params else None
    ours = _flat(merge_checkpoints(base, listed, MergeSpec(method, weights=None if method == "slerp" else weights,
                                                             **spec), tmp_path / "ours", progress=False))
    b = _flat(base)
    for n in ours:
        np.testing.assert_allclose(ours[n], ref[n], rtol=1e-5, atol=1e-6, err_msg=n)
    assert not np.allclose(ours["model.layers.0.mlp.up_proj.weight"], b["model.layers.0.mlp.up_proj.weight"])


def test_our_parameter_trees_merge_as_their_hf_tensors(hf_pair, tmp_path):
    """merge_pytrees(layout="ours") on converted params (stacked layers, (in, out) kernels) == the streaming merge
    of the HF checkpoints, bitwise, for methods whose masks, ranks or rows depend on the layout."""
    from mnlu_jax.model.config import ModelConfig
    from mnlu_jax.weights.convert import load_model, tensors_from_params

    base, ft = hf_pair
    other = make_tiny_hf(tmp_path / "other", seed=2)
    (pb, config, _), (pf, _, _), (po, _, _) = load_model(base), load_model(ft), load_model(other)
    assert isinstance(config, ModelConfig)
    for spec, models, trees in [(MergeSpec("dare", drop_rate=0.2, seed=3), [ft, other], [pf, po]),
                                (MergeSpec("ties", drop_rate=0.5), [ft, other], [pf, po]),
                                (MergeSpec("della", drop_rate=0.5, epsilon=0.1, seed=1), [ft, other], [pf, po]),
                                (MergeSpec("slerp", t=0.4), [ft], [pf]),
                                (MergeSpec("model_stock", filter_wise=True), [ft, other], [pf, po]),
                                (MergeSpec("nuslerp", nuslerp_flatten=False, weights=(1.0, 2.0)), [ft, other],
                                 [pf, po]),
                                (MergeSpec("sce", select_topk=0.5), [ft, other], [pf, po]),
                                (MergeSpec("arcee_fusion"), [ft], [pf]),  # a softmax along each HF row
                                (MergeSpec("multislerp", weights=(1.0, 2.0)), [ft, other], [pf, po])]:
        streamed = _flat(merge_checkpoints(base, models, spec, tmp_path / spec.method, progress=False))
        merged = dict(tensors_from_params(merge_pytrees(pb, trees, spec, layout="ours"), config))
        assert set(merged) == set(streamed)
        for n in streamed:
            assert merged[n].tobytes() == streamed[n].tobytes(), (spec.method, n)
    from mnlu_jax.merge.settings import Schedule

    varying = Schedule.make({"t": [{"filter": "mlp", "value": [0.2, 0.9]}, {"value": 0.5}]})
    streamed = _flat(merge_checkpoints(base, [ft], MergeSpec("slerp"), tmp_path / "sv", progress=False,
                                       schedule=varying))
    merged = dict(tensors_from_params(merge_pytrees(pb, [pf], MergeSpec("slerp"), layout="ours", schedule=varying),
                                      config))
    assert all(merged[n].tobytes() == streamed[n].tobytes() for n in streamed)
    assert not np.array_equal(streamed["model.layers.0.mlp.up_proj.weight"], _flat(tmp_path / "slerp")[
        "model.layers.0.mlp.up_proj.weight"])
    # read as plain tensors, a stacked (in, out) tree gives another TIES (ranks over all layers at once)
    hf_layout = dict(tensors_from_params(merge_pytrees(pb, [pf, po], MergeSpec("ties", drop_rate=0.5)), config))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not np.array_equal(hf_layout[name], _flat(tmp_path / "ties")[name])
    with pytest.raises(ValueError, match=r"layout 'torch': expected one of \('hf', 'ours'\)"):
        merge_pytrees(pb, [pf], MergeSpec("dare"), layout="torch")
    with pytest.raises(ValueError, match=r"'model_stock' takes at least 2 model\(s\) besides the base, got 1"):
        merge_checkpoints(base, [ft], MergeSpec("model_stock"), tmp_path / "ms1", progress=False)
    with pytest.raises(ValueError, match=r"'slerp' takes exactly 1 model\(s\) besides the base, got 2"):
        merge_checkpoints(base, [ft, other], MergeSpec("slerp"), tmp_path / "s2", progress=False)
    assert not (tmp_path / "s2").exists()
    # the base listed among slerp's models is elided, as mergekit lists it: [base, ft] is slerp(base, ft)
    listed = _flat(merge_checkpoints(base, [base, ft], MergeSpec("slerp", t=0.4), tmp_path / "s3", progress=False))
    assert all(listed[n].tobytes() == _flat(tmp_path / "slerp")[n].tobytes() for n in listed)


def test_parameters_varying_by_tensor_match_mergekit(tmp_path):
    """mergekit's gradients over the layers and name filters, for slerp's t and for TIES' weights, density and
    lambda, on 3-layer models (layers at 0, 0.5 and 1 on the gradients; embeddings, norm and head at 0)."""
    from mnlu_jax.merge.config import MergeConfig, run_merge
    from mnlu_jax.merge.settings import Schedule, resolve

    base = make_tiny_hf(tmp_path / "base", seed=0, num_hidden_layers=3)
    m1 = make_tiny_hf(tmp_path / "m1", seed=1, num_hidden_layers=3)
    m2 = make_tiny_hf(tmp_path / "m2", seed=2, num_hidden_layers=3)
    t = [{"filter": "self_attn", "value": [0.1, 0.9]}, {"filter": "mlp", "value": [0.8, 0.0, 0.6]}, {"value": 0.3}]
    ref = _mergekit(tmp_path, {"merge_method": "slerp", "base_model": str(base), "dtype": "float32",
                               "models": [{"model": str(base)}, {"model": str(m1)}], "parameters": {"t": t}}, "slerp")
    out = run_merge(MergeConfig(base=str(base), models=[str(base), str(m1)], method="slerp", t=t,
                                out=str(tmp_path / "ours_slerp")), progress=False)
    ours = _flat(out)
    for n in ours:
        np.testing.assert_allclose(ours[n], ref[n], rtol=1e-5, atol=1e-6, err_msg=n)
    assert json.loads((out / "merge_config.json").read_text())["varying"] == {"t": t}
    density = [{"filter": "mlp", "value": 0.4}, {"value": 0.7}]
    weights = [[0.2, 0.8], [1.0, 0.5]]
    ref = _mergekit(tmp_path, {
        "merge_method": "ties", "base_model": str(base), "dtype": "float32",
        "parameters": {"lambda": [0.5, 1.5], "normalize": True},
        "models": [{"model": str(m), "parameters": {"weight": w, "density": density}}
                   for m, w in zip((m1, m2), weights)]},
        "ties")
    drop_rate = [{"filter": "mlp", "value": 0.6}, {"value": 0.3}]
    cfg = MergeConfig(base=str(base), models=[str(m1), str(m2)], method="ties", weights=weights, lam=[0.5, 1.5],
                      drop_rate=drop_rate, out=str(tmp_path / "ours_ties"))
    ours = _flat(run_merge(cfg, progress=False))
    for n in ours:
        np.testing.assert_allclose(ours[n], ref[n], rtol=1e-5, atol=1e-6, err_msg=n)
    # the resolution itself: a gradient's straight lines, conditions in order, layers placed by their index
    schedule = cfg.schedule()
    spec = dataclasses.replace(schedule, num_layers=3).spec_for(cfg.spec(), "model.layers.1.mlp.up_proj.weight")
    assert spec.drop_rate == 0.6 and spec.lam == 1.0 and spec.weights == (0.5, 0.75)
    assert resolve([0.0, 1.0, 3.0], "x", 0.75) == 2.0 and resolve(t, "model.norm.weight", 0.0) == 0.3
    for bad, message in [({"t": "half"}, r"t: expected a number, a list of numbers"),
                         ({"t": [{"filter": "mlp"}]}, r"t\[0\]: expected \{filter: <part of a tensor name>"),
                         ({"t": [{"filter": "mlp", "value": [0.1, "x"]}]}, r"t\[0\]\.value: expected a number"),
                         ({"weights": [1.0, []]}, r"weights\[1\]: expected a number")]:
        with pytest.raises(ValueError, match=message):
            MergeConfig(base="b", models=["m1", "m2"], method="slerp", out="o", **bad).spec()
    with pytest.raises(ValueError, match=r"t: no condition applies to tensor model\.norm\.weight"):
        Schedule.make({"t": [{"filter": "mlp", "value": 0.5}]}, num_layers=3).spec_for(cfg.spec(), "model.norm.weight")
    with pytest.raises(ValueError, match=r"drop_rate 1\.5: expected 0 <= p <= 1"):  # every tensor checked first
        run_merge(MergeConfig(base=str(base), models=[str(m1)], method="dare", out=str(tmp_path / "never"),
                              drop_rate=[{"filter": "layers.2.mlp", "value": 1.5}, {"value": 0.2}]), progress=False)
    assert not (tmp_path / "never").exists()


def test_dare_matches_mergekit_dare_linear_in_distribution(tmp_path):
    """mergekit `dare_linear`, rescale false, density 1 − p, weight 1/(n(1 − p)) == MergeLM's DARE average."""
    p = 0.2
    base = make_tiny_hf(tmp_path / "base", seed=0, hidden_size=128, intermediate_size=256)
    ft = make_tiny_hf(tmp_path / "ft", seed=1, hidden_size=128, intermediate_size=256)
    cfg = {"merge_method": "dare_linear", "base_model": str(base), "dtype": "float32",
           "parameters": {"rescale": False, "normalize": False},
           "models": [{"model": str(ft), "parameters": {"weight": 1 / (2 * (1 - p)), "density": 1 - p}}]}
    ref = _mergekit(tmp_path, cfg, "dare")
    ours = _flat(merge_checkpoints(base, [base, ft], MergeSpec("dare", drop_rate=p), tmp_path / "ours", progress=False))
    b, f = _flat(base), _flat(ft)
    for n in ["model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight"]:
        delta = f[n] - b[n]
        for merged in (ours[n], ref[n]):
            kept = merged != b[n]
            assert abs(kept.mean() - (1 - p)) < 6 * np.sqrt(p * (1 - p) / kept.size)
            np.testing.assert_allclose((merged - b[n])[kept], 0.625 * delta[kept], rtol=1e-4, atol=1e-6)


def test_cli_merge_and_stats(hf_pair, tmp_path):
    from mnlu_jax.cli import main

    base, ft = hf_pair
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"base: {base}\nmodels: [{base}, {ft}]\nmethod: dare\ndrop_rate: 0.2\n")
    assert main(["merge", "--config", str(cfg), "--out", str(tmp_path / "merged"), "--seed", "42"]) == 0
    ref = merge_checkpoints(base, [base, ft], MergeSpec("dare", drop_rate=0.2, seed=42), tmp_path / "api", progress=False)
    a, b = _flat(tmp_path / "merged"), _flat(ref)
    assert all(np.array_equal(a[n], b[n]) for n in a)
    card = (tmp_path / "merged" / "README.md").read_text()  # a model card, as mergekit writes one
    assert card.startswith(f"---\nbase_model:\n- {Path(base).absolute()}\nlibrary_name: transformers\n")
    assert f"- `{Path(base).absolute()}` (the base)\n- `{Path(ft).absolute()}`\n" in card
    assert "[dare](https://arxiv.org/abs/2311.03099)" in card and '"seed": 42' in card
    assert main(["merge", "--base", str(base), "--out", str(tmp_path / "x")]) == 2  # no models: clear error
    assert main(["merge-stats", "--base", str(base), "--models", str(ft), str(base), "--out", str(tmp_path / "st")]) == 0
    rows = json.loads((tmp_path / "st" / "merge_stats.json").read_text())
    row = next(r for r in rows if r["tensor"] == "model.norm.weight")
    assert row["delta_norm_1"] == 0.0 and row["zero_fraction_1"] == 1.0 and row["delta_norm_0"] > 0
    assert (tmp_path / "st" / "merge_stats.png").exists()
    assert json.loads((tmp_path / "st" / "merge_stats_models.json").read_text())["models"] == {
        "0": str(Path(ft).absolute()), "1": str(Path(base).absolute())}
    from mnlu_jax.merge.stats import short_names

    assert short_names(["runs/x/train/final", "merged"]) == ["0: train/final", "1: merged"]


def test_models_equal_to_base_are_elided_without_changing_the_result(hf_pair, tmp_path):
    base, ft = hf_pair
    only_base = _flat(merge_checkpoints(base, [base], MergeSpec("dare", drop_rate=0.3), tmp_path / "b", progress=False))
    b = _flat(base)
    assert all(only_base[n].tobytes() == b[n].tobytes() for n in b)
    # the paper's [base, ft]: elided base == computed base (same keys, same denominator)
    spec = MergeSpec("dare", drop_rate=0.2, seed=5)
    elided = _flat(merge_checkpoints(base, [base, ft], spec, tmp_path / "e", progress=False))
    import shutil as sh

    copy = tmp_path / "base_copy"
    sh.copytree(base, copy)  # a different path: not elided
    computed = _flat(merge_checkpoints(base, [copy, ft], spec, tmp_path / "c", progress=False))
    assert all(elided[n].tobytes() == computed[n].tobytes() for n in elided)


# ------------------------------------------------------------------ mergekit configs run as they are
def _both_many(tmp_path, configs: dict[str, dict]) -> dict[str, tuple[dict, dict]]:
    """Each mergekit YAML through mergekit (in one process) and through `mnlu-jax merge --config` (into
    `ours_<name>`): {name: (our tensors, mergekit's)}, which hold the same tensor names."""
    import yaml

    from mnlu_jax.cli import main

    refs = _mergekit_many(tmp_path, configs)
    out = {}
    for name, config in configs.items():
        path = tmp_path / f"{name}.yaml"  # _mergekit_many wrote it
        assert yaml.safe_load(path.read_text()) == config
        assert main(["merge", "--config", str(path), "--out", str(tmp_path / f"ours_{name}")]) == 0
        out[name] = (_flat(tmp_path / f"ours_{name}"), refs[name])
        assert set(out[name][0]) == set(out[name][1]), name
    return out


def _both(tmp_path, config: dict, name: str) -> tuple[dict, dict, Path]:
    """The same mergekit YAML through `mergekit-yaml` and through `mnlu-jax merge --config`."""
    ours, ref = _both_many(tmp_path, {name: config})[name]
    return ours, ref, tmp_path / f"ours_{name}"


def test_mergekit_configs_merge_as_mergekit_does(tmp_path):
    """Deterministic methods, bitwise up to float rounding, including the L1 rescale of what TIES and Breadcrumbs
    keep and normalize off for linear / on for task arithmetic (both ignored before session 24)."""
    base = make_tiny_hf(tmp_path / "base", seed=0, num_hidden_layers=3)
    m1 = make_tiny_hf(tmp_path / "m1", seed=1, num_hidden_layers=3)
    m2 = make_tiny_hf(tmp_path / "m2", seed=2, num_hidden_layers=3)
    two = lambda **p: [{"model": str(m1), "parameters": {k: v[0] for k, v in p.items()}},  # noqa: E731
                       {"model": str(m2), "parameters": {k: v[1] for k, v in p.items()}}]
    cases = {
        "linear": {"merge_method": "linear", "models": two(weight=(0.3, 0.9)), "parameters": {"normalize": False}},
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": str(base),
                            "models": two(weight=(0.3, 0.9)), "parameters": {"lambda": 0.8, "normalize": True}},
        "ties": {"merge_method": "ties", "base_model": str(base),
                 "models": two(weight=([0.2, 0.8], 1.0),
                               density=([{"filter": "mlp", "value": 0.4}, {"value": 0.7}],) * 2),
                 "parameters": {"rescale": True, "int8_mask": True, "lambda": 1.2}},
        "breadcrumbs": {"merge_method": "breadcrumbs", "base_model": str(base), "models": two(weight=(0.6, 0.5)),
                        "parameters": {"density": 0.7, "gamma": 0.05, "rescale": True}},
        "breadcrumbs_ties": {"merge_method": "breadcrumbs_ties", "base_model": str(base),
                             "models": two(weight=(0.6, 0.5), density=(0.6, 0.6)), "parameters": {"gamma": 0.1}},
        # density and gamma model by model, one a gradient (mergekit binds them per model)
        "ties_per_model": {"merge_method": "ties", "base_model": str(base),
                           "models": two(weight=(0.5, 1.0), density=(0.4, [0.9, 0.2]))},
        "breadcrumbs_per_model": {"merge_method": "breadcrumbs_ties", "base_model": str(base),
                                  "models": two(weight=(0.6, 0.5), density=(0.5, 0.8), gamma=(0.02, 0.1))},
        "slerp": {"merge_method": "slerp", "base_model": str(base),
                  "models": [{"model": str(base)}, {"model": str(m1)}],
                  "parameters": {"t": [{"filter": "self_attn", "value": [0.1, 0.9]}, {"value": 0.3}]}},
        "nuslerp": {"merge_method": "nuslerp", "base_model": str(base), "models": two(weight=(0.3, [0.9, 0.2]))},
        "nuslerp_rows_no_base": {"merge_method": "nuslerp", "models": two(weight=(1.0, 3.0)),
                                 "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True}},
        "sce": {"merge_method": "sce", "base_model": str(base), "models": two(),
                "parameters": {"select_topk": 0.5, "int8_mask": True}},
        "sce_all": {"merge_method": "sce", "base_model": str(base),
                    "models": [{"model": str(m)} for m in (base, m1, m2)]},
        "karcher": {"merge_method": "karcher", "models": [{"model": str(m)} for m in (m1, m2)]},
        # one slice over every layer of each model, as mergekit's own slerp example is written; a single condition
        # where a list is expected
        "slerp_slices": {"merge_method": "slerp", "base_model": str(base),
                         "slices": [{"sources": [{"model": str(base), "layer_range": [0, 3]},
                                                 {"model": str(m1), "layer_range": [0, 3]}]}],
                         "parameters": {"t": [{"filter": "mlp", "value": [0.2, 0.9]}, {"value": 0.4}]}},
        "task_arithmetic_one_condition": {"merge_method": "task_arithmetic", "base_model": str(base),
                                          "models": two(weight=(0.5, 0.7)),
                                          "parameters": {"lambda": {"value": [0.5, 1.5]}}},
        # a base_model given apart is one more input of the mean, as in mergekit
        "karcher_base_apart": {"merge_method": "karcher", "base_model": str(base),
                               "models": [{"model": str(m)} for m in (m1, m2)], "parameters": {"max_iter": 3}},
        "model_stock": {"merge_method": "model_stock", "base_model": str(base),
                        "models": [{"model": str(m1)}, {"model": str(m2)}], "parameters": {"filter_wise": True}},
        # session 25: Multi-SLERP (of deltas; of three models themselves, weights as given), NearSwap, Arcee Fusion,
        # RAM and RAM+ (entries one model touches, several touch, and none: |delta| about 0.03 against 0.02)
        "multislerp": {"merge_method": "multislerp", "base_model": str(base),
                       "models": [{"model": str(base)}, *two(weight=(0.3, [0.9, 0.2]))]},
        "multislerp_no_base": {"merge_method": "multislerp",
                               "models": [*two(weight=(1.0, 2.0)), {"model": str(base), "parameters": {"weight": 0.5}}],
                               "parameters": {"normalize_weights": False, "eps": 1e-6}},
        "nearswap": {"merge_method": "nearswap", "base_model": str(base), "models": [{"model": str(m1)}],
                     "parameters": {"t": [{"filter": "mlp", "value": 0.01}, {"value": [0.002, 0.05]}]}},
        "arcee_fusion": {"merge_method": "arcee_fusion", "base_model": str(base),
                         "models": [{"model": str(base)}, {"model": str(m2)}]},
        "ram": {"merge_method": "ram", "base_model": str(base), "models": two(), "parameters": {"epsilon": 0.02}},
        "ramplus_tl": {"merge_method": "ramplus_tl", "base_model": str(base),
                       "models": [{"model": str(m)} for m in (base, m1, m2)],
                       "parameters": {"epsilon": 0.03, "r": 0.5, "alpha": 0.3}},
    }
    b, m2_flat = _flat(base), _flat(m2)
    for name, (ours, ref) in _both_many(tmp_path, {name: {**cfg, "dtype": "float32"}
                                                  for name, cfg in cases.items()}).items():
        for n in ours:
            if name == "arcee_fusion":
                # Its importance is |δ| times a KL divergence of two nearly equal softmaxes, which rounding moves by
                # ~1e-4 relative (torch's sums against XLA's), so an entry within that of the threshold may be
                # kept on one side only: each such entry is the base's or the model's value on both.
                differ = ~np.isclose(ours[n], ref[n], rtol=1e-5, atol=1e-6)
                assert differ.mean() < 1e-3, (n, differ.sum())
                for merged in (ours[n][differ], ref[n][differ]):
                    assert np.all((merged == b[n][differ]) | np.isclose(merged, m2_flat[n][differ])), n
                continue
            np.testing.assert_allclose(ours[n], ref[n], rtol=1e-5, atol=1e-6, err_msg=f"{name} {n}")
        assert not np.allclose(ours["model.layers.1.mlp.up_proj.weight"], b["model.layers.1.mlp.up_proj.weight"])
    import yaml

    # the mergekit config as given goes with the merge and into its card, as mergekit-yaml writes them
    given = yaml.safe_load((tmp_path / "ties.yaml").read_text())
    assert yaml.safe_load((tmp_path / "ours_ties" / "mergekit_config.yml").read_text()) == given
    card = (tmp_path / "ours_ties" / "README.md").read_text()
    assert "## Configuration" in card and "merge_method: ties\n" in card
    record = json.loads((tmp_path / "ours_ties" / "merge_config.json").read_text())
    assert record["rescale"] is True and record["rescale_norm"] == "l1" and record["normalize"] is True
    assert record["varying"]["drop_rate"] == [{"filter": "mlp", "value": pytest.approx(0.6)},
                                              {"value": pytest.approx(0.3)}]
    from mnlu_jax.config import load_config
    from mnlu_jax.merge.config import MergeConfig, translate_merge_config

    for bad, message in [
            ({"slices": [{"sources": [{"model": str(m1), "layer_range": [0, 3]},
                                      {"model": str(m2), "layer_range": [0, 3]}]}]},
             r"base_model .*base: not one of the slice's sources; mergekit merges a slice from its sources only"),
            ({"models": [{"model": str(base)}, {"model": str(m1)}],
              "parameters": {"t": [{"pattern": "mlp", "value": 0.3}, {"value": 0.5}]}},
             r"t\[0\]: expected \{filter: .*unknown key\(s\) \['pattern'\]: mergekit ignores them, and its "
             r"condition then applies to every tensor")]:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({"merge_method": "slerp", "base_model": str(base), "parameters": {"t": 0.5},
                                        **bad}))
        with pytest.raises(ValueError, match=message):
            MergeConfig.spec(load_config(MergeConfig, path, ["out=o"], translate=translate_merge_config))
    # what the rescale changed: TIES without it is another merge
    plain = _flat(merge_checkpoints(base, [m1, m2], MergeSpec("ties", drop_rate=0.3, weights=(1.0, 1.0)),
                                    tmp_path / "plain", progress=False))
    scaled = _flat(merge_checkpoints(base, [m1, m2], MergeSpec("ties", drop_rate=0.3, weights=(1.0, 1.0),
                                                               rescale=True), tmp_path / "scaled", progress=False))
    assert not np.allclose(plain["model.layers.0.mlp.up_proj.weight"], scaled["model.layers.0.mlp.up_proj.weight"])


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties", "della", "della_linear"])
def test_mergekit_random_methods_keep_and_rescale_as_mergekit_does(tmp_path, method):
    """Masks are random on both sides, so the test is structural: about `density` of the entries kept, and the kept
    entries the delta times one factor, the delta's L1 norm over the kept part's (mergekit's rescale)."""
    density = 0.6
    base = make_tiny_hf(tmp_path / "base", seed=0, hidden_size=128, intermediate_size=256)
    ft = make_tiny_hf(tmp_path / "ft", seed=1, hidden_size=128, intermediate_size=256)
    cfg = {"merge_method": method, "base_model": str(base), "dtype": "float32",
           "models": [{"model": str(ft), "parameters": {"weight": 1.0, "density": density,
                                                        **({"epsilon": 0.1} if "della" in method else {})}}]}
    ours, ref, _ = _both(tmp_path, cfg, method)
    b, f = _flat(base), _flat(ft)
    n = "model.layers.0.mlp.up_proj.weight"
    delta = (f[n] - b[n]).astype(np.float64)
    for merged in (ours[n], ref[n]):
        got = merged.astype(np.float64) - b[n]
        kept = got != 0
        assert abs(kept.mean() - density) < 6 * np.sqrt(density * (1 - density) / kept.size)
        factor = np.abs(delta).sum() / np.abs(delta[kept]).sum()
        np.testing.assert_allclose(got[kept], factor * delta[kept], rtol=1e-4, atol=1e-6)


def test_per_model_drop_rates_apply_model_by_model(tmp_path):
    """A drop rate per model: each model's delta is sparsified with its own, under its own key; the streaming
    merge of [base, m1, m2] (the base elided) equals the in-memory one of [m1, m2]."""
    from mnlu_jax.merge.math import dare_drop, merge_tensor, tensor_key

    rng = np.random.default_rng(0)
    base = rng.normal(size=(64, 32)).astype(np.float32)
    m1, m2 = (base + rng.normal(scale=0.1, size=base.shape).astype(np.float32) for _ in range(2))
    spec = MergeSpec("dare_linear", per_model=(("drop_rate", (0.3, 0.8)),), seed=4)
    keys = jnp.stack([tensor_key(4, "w", i) for i in range(2)])
    got = np.asarray(merge_tensor(jnp.asarray(base), (jnp.asarray(m1), jnp.asarray(m2)), keys, spec))
    want = base + np.asarray(dare_drop(jnp.asarray(m1 - base), keys[0], 0.3, True)) \
        + np.asarray(dare_drop(jnp.asarray(m2 - base), keys[1], 0.8, True))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert spec.needs_rng and spec.select_models([1]).per_model == (("drop_rate", (0.8,)),)
    with pytest.raises(ValueError, match=r"drop_rate 1\.5: expected 0 <= p <= 1"):
        MergeSpec("dare", per_model=(("drop_rate", (0.2, 1.5)),))
    with pytest.raises(ValueError, match=r"per_model: drop_rate has 2, gamma has 3 values; expected one per model"):
        MergeSpec("breadcrumbs", per_model=(("drop_rate", (0.2, 0.5)), ("gamma", (0.1, 0.1, 0.1))))
    with pytest.raises(ValueError, match=r"per_model: 't' cannot differ between models"):
        MergeSpec("slerp", per_model=(("t", (0.2, 0.5)),))
    with pytest.raises(ValueError, match=r"della: need 0 < \(1 - drop_rate\) ± epsilon < 1, got drop_rate=0\.9, "
                                         r"epsilon=0\.15"):
        MergeSpec("della", per_model=(("drop_rate", (0.5, 0.9)),))
    from mnlu_jax.merge.config import MergeConfig, run_merge

    hb = make_tiny_hf(tmp_path / "base", seed=0)
    h1, h2 = make_tiny_hf(tmp_path / "m1", seed=1), make_tiny_hf(tmp_path / "m2", seed=2)
    cfg = MergeConfig(base=str(hb), models=[str(hb), str(h1), str(h2)], method="dare_ties", out=str(tmp_path / "o"),
                      per_model={"drop_rate": [0.0, 0.3, [0.9, 0.1]]}, seed=2)
    streamed = _flat(run_merge(cfg, progress=False))
    assert json.loads((tmp_path / "o" / "merge_config.json").read_text())["varying"]["per_model"] == {
        "drop_rate": [0.0, 0.3, [0.9, 0.1]]}
    from mnlu_jax.merge.settings import Schedule

    schedule = Schedule.make({}, per_model={"drop_rate": [0.3, [0.9, 0.1]]})
    # the streaming merge keys its masks by the models' indices as listed ([base, m1, m2]: 1 and 2)
    spec = MergeSpec("dare_ties", per_model=(("drop_rate", (0.3, 0.2)),), seed=2)
    layer = "model.layers.1.mlp.up_proj.weight"
    resolved = dataclasses.replace(schedule, num_layers=2).spec_for(spec, layer)
    assert resolved.per_model == (("drop_rate", (0.3, pytest.approx(0.1))),)
    b, f1, f2 = _flat(hb), _flat(h1), _flat(h2)
    keys = jnp.stack([tensor_key(2, layer, i) for i in (1, 2)])
    want = merge_tensor(jnp.asarray(b[layer]), (jnp.asarray(f1[layer]), jnp.asarray(f2[layer])), keys, resolved)
    np.testing.assert_allclose(streamed[layer], np.asarray(want), rtol=1e-6, atol=1e-6)


def test_mergekit_configs_outside_what_we_merge_are_named(tmp_path):
    from mnlu_jax.config import load_config
    from mnlu_jax.merge.config import MergeConfig, translate_merge_config

    good = {"merge_method": "dare_ties", "base_model": "b",
            "models": [{"model": "m1", "parameters": {"weight": 0.5, "density": 0.5}},
                       {"model": "m2", "parameters": {"weight": 0.5, "density": 0.5}}]}
    path = tmp_path / "mk.yaml"

    def load(cfg, overrides=()):
        import yaml

        path.write_text(yaml.safe_dump(cfg))
        return load_config(MergeConfig, path, list(overrides), translate=translate_merge_config)

    cfg = load(good, ["out=o", "seed=3"])
    assert (cfg.method, cfg.base, cfg.models, cfg.weights, cfg.drop_rate, cfg.rescale_norm, cfg.seed, cfg.out) == (
        "dare_ties", "b", ["m1", "m2"], [0.5, 0.5], 0.5, "l1", 3, "o")
    assert load({**good, "models": [{"model": "m1", "parameters": {"weight": 1.0}}]}).drop_rate == 0.0  # density 1
    differing = load({**good, "models": [{"model": "b", "parameters": {"weight": 1}},  # the base: not used
                                         {"model": "m1", "parameters": {"weight": 1, "density": 0.5}},
                                         {"model": "m2", "parameters": {"weight": 1, "density": [0.7, 0.9]}}]})
    assert differing.per_model == {"drop_rate": [0.5, 0.5, [pytest.approx(0.3), pytest.approx(0.1)]]}
    cases = [({**good, "merge_method": "model_soup"},
              r"merge_method 'model_soup' is not supported by mnlu-jax; supported:"),
             ({"merge_method": "nearswap", "base_model": "b", "models": ["m1"]},
              r"parameters\.t: required by nearswap"),
             ({"merge_method": "ramplus_tl", "base_model": "b", "models": ["m1"], "parameters": {"r": [0.1, 0.2]}},
              r"parameters\.r: expected a number \(it does not vary by tensor here\), got \[0\.1, 0\.2\]"),
             ({"merge_method": "multislerp", "models": [{"model": "m1"}, {"model": "m2", "parameters": {"weight": 1}}]},
              r"models\[0\]\.parameters\.weight: required by multislerp"),
             ({"slices": [], "merge_method": "passthrough"},
              r"slices: expected a list of \{sources: \[\{model, layer_range\}, \.\.\.\]\}, got \[\]"),
             ({**good, "models": [{"model": "m1", "parameters": {"weight": 1, "density": "half"}}]},
              r"models\[0\]\.parameters\.density: expected a number, a list of numbers"),
             ({**good, "models": [{"model": "m1+lora_dir+x", "parameters": {"weight": 1}}]},
              r"models\[0\]\.model: m1\+lora_dir\+x: expected MODEL or MODEL\+LORA_ADAPTER"),
             ({**good, "models": [{"model": "m1", "parameters": {"density": 0.5}}]},
              r"models\[0\]\.parameters\.weight: required by dare_ties"),
             ({k: v for k, v in good.items() if k != "base_model"}, r"base_model: required by dare_ties"),
             ({**good, "tokenizer": {"source": "union", "tokens": {"<x>": {"source": 5}}}},
              r"tokenizer\.tokens\['<x>'\]\.source: expected a model path, \{kind: zero\}"),
             ({**good, "tokenizer": {"source": "union", "tokens": {"<x>": {"source": {"kind": "model_token",
                                                                                   "model": "m1"}}}}},
              r"tokenizer\.tokens\['<x>'\]\.source: model_token takes model and one of token_id and token"),
             ({**good, "chat_template": ["chatml"]}, r"chat_template: expected auto, a template name"),
             ({**good, "base_model": {"model": "b", "revision": "v1"}},
              r"base_model: unknown key\(s\) \['revision'\] in a model reference"),
             ({**good, "tokenizer": {"source": "union"}, "tokenizer_source": "base"},
              r"tokenizer and tokenizer_source: give one"),
             ({**good, "modules": {}}, r"mergekit key\(s\) \['modules'\] are not supported"),
             ({**good, "models": [{"model": "m1", "parameters": {"weight": 1, "gamma": 0.1}}]},
              r"models\[0\]\.parameters: \['gamma'\] not per-model parameter\(s\) of dare_ties"),
             ({**good, "parameters": {"t": 0.5}}, r"parameters: \['t'\] not parameter\(s\) of dare_ties"),
             ({"merge_method": "slerp", "base_model": "b", "models": ["b", "m1"]}, r"parameters\.t: required by slerp"),
             ({**good, "dtype": "int8"}, r"dtype 'int8': expected one of"),
             ({"merge_method": "linear", "base_model": "b", "models": [{"model": "m1", "parameters": {"weight": 1}}]},
              r"base_model: linear averages it as one more input")]
    for cfg, message in cases:
        with pytest.raises(ValueError, match=rf"{path}: .*{message}"):
            load(cfg)
    with pytest.raises(ValueError, match=r"rescale_norm 'l3': expected one of \('l1', 'l2', 'linf'\)"):
        MergeSpec("dare", rescale_norm="l3")


def test_hub_models_are_named_by_their_ids(hf_pair, tmp_path, monkeypatch):
    """A Hub id (as mergekit configs give models) is recorded and put in the model card as the id, which links the
    merge to its base on the Hub; it was made into a path under the working directory."""
    from mnlu_jax.weights import convert

    base, ft = hf_pair
    hub = {"org/base-model": Path(base), "org/fine-tune": Path(ft)}
    real = convert.resolve_source
    monkeypatch.setattr(convert, "resolve_source", lambda src: hub.get(str(src)) or real(src))
    out = merge_checkpoints("org/base-model", ["org/base-model", "org/fine-tune"], MergeSpec("dare"),
                            tmp_path / "merged", progress=False)
    record = json.loads((out / "merge_config.json").read_text())
    assert (record["base"], record["models"], record["tokenizer_from"]) == (
        "org/base-model", ["org/base-model", "org/fine-tune"], "org/base-model")
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model:\n- org/base-model\n") and "- `org/fine-tune`\n" in card


def test_select_mask_is_a_stable_sorts_first_k():
    """The bisection that replaced sorting (TIES, Breadcrumbs, SCE) picks exactly the entries a stable
    sort puts first, ties to the lower index: on values with many ties, and at k = 0, 1, n − 1 and n."""
    from mnlu_jax.merge.math import select_mask

    rng = np.random.default_rng(0)
    for values in (np.abs(rng.standard_normal(5000)), np.round(np.abs(rng.standard_normal(5000)) * 8) / 8,
                   np.zeros(7), np.array([0.0, np.inf, 1.0, np.inf, 0.0])):
        v = jnp.asarray(values.astype(np.float32))
        n = v.size
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            for largest, order in ((True, np.argsort(-values.astype(np.float32), kind="stable")),
                                   (False, np.argsort(values.astype(np.float32), kind="stable"))):
                want = np.zeros(n, bool)
                want[order[:k]] = True
                got = np.asarray(jax.jit(select_mask, static_argnums=2)(v, k, largest))
                assert np.array_equal(got, want), (largest, k, n)


def test_kth_smallest_is_the_sorted_value_negatives_included():
    """Arcee Fusion's quantiles by bisection over an order-preserving key of the float bits, and by NumPy's
    selection on the host (`sorted_at`, the streaming merge's): the value np.sort puts at index k, with negative
    values (their bits run the other way), ties, -0.0 and ±inf."""
    from mnlu_jax.merge.math import kth_smallest, sorted_at

    rng = np.random.default_rng(1)
    for values in (rng.standard_normal(4001) * 1e-6, np.round(rng.standard_normal(999) * 4) / 4,
                   np.array([-0.0, 0.0, -np.inf, 3.0, np.inf, -2.5, -2.5]), np.array([7.0])):
        v = values.astype(np.float32)
        ordered = np.sort(v)
        for k in sorted({0, 1, v.size // 4, v.size // 2, v.size - 1} & set(range(v.size))):
            got = float(jax.jit(kth_smallest, static_argnums=1)(jnp.asarray(v), k))
            assert got == ordered[k], (k, got, ordered[k])
        ks = tuple(sorted({0, v.size // 4, v.size // 2, v.size - 1}))
        for on_host in (True, False):
            got = np.asarray(jax.jit(sorted_at, static_argnums=(1, 2))(jnp.asarray(v), ks, on_host))
            np.testing.assert_array_equal(got, ordered[list(ks)], err_msg=str(on_host))
    # the host's sample brackets (small samples, so that some miss and fall back), over ties, ±inf and NaN
    from mnlu_jax.merge.math import _sorted_at_numpy

    spiky = rng.standard_normal(20_000)
    spiky[::7] = 0.0
    spiky[:5] = [np.inf, -np.inf, -0.0, 1e30, -1e30]
    for values in (rng.standard_normal(20_000), np.round(rng.standard_normal(20_000)), spiky, np.ones(20_000),
                   np.where(np.arange(20_000) == 3, np.nan, 1.0)):
        v = values.astype(np.float32)
        ordered = np.sort(v)
        ks = (0, 1, 4999, 10_000, 14_999, 19_998, 19_999)
        for sample in (16, 256, 4096):
            np.testing.assert_array_equal(_sorted_at_numpy(v, ks, sample=sample), ordered[list(ks)],
                                          err_msg=str(sample))


def test_ram_and_nearswap_by_hand():
    """RAM keeps an entry one model touches (|δ| > ε) and averages one several touch; RAM+ scales a model's unique
    entries by 1 + r·clip(shared/unique, 0, α); NearSwap takes the model's value within t of the base's."""
    base = jnp.zeros((1, 4))
    m1 = jnp.asarray([[0.5, 0.2, 0.0, 1e-6]])
    m2 = jnp.asarray([[0.1, 0.0, 0.0, -0.3]])
    got = merge_pytrees({"w": base}, [{"w": m1}, {"w": m2}], MergeSpec("ram", ram_epsilon=1e-5))["w"]
    np.testing.assert_allclose(got, [[0.3, 0.2, 0.0, -0.3]], rtol=1e-6)
    # model 1: 1 shared, 1 unique -> 1 + 0.5·min(1, 0.4); model 2: 1 shared, 1 unique -> the same
    plus = merge_pytrees({"w": base}, [{"w": m1}, {"w": m2}], MergeSpec("ramplus_tl", ram_r=0.5, ram_alpha=0.4))["w"]
    np.testing.assert_allclose(plus, [[0.3, 0.2 * 1.2, 0.0, -0.3 * 1.2]], rtol=1e-6)
    near = merge_pytrees({"w": base}, [{"w": jnp.asarray([[0.05, 0.2, -0.4, 0.0]])}], MergeSpec("nearswap", t=0.1))
    # within t: the model's value; 0.2 apart: weight 0.5 -> 0.1; 0.4 apart: weight 0.25 -> -0.1
    np.testing.assert_allclose(near["w"], [[0.05, 0.1, -0.1, 0.0]], rtol=1e-6)
    from mnlu_jax.merge.config import MergeConfig

    with pytest.raises(ValueError, match=r"nearswap: `t` is required"):
        MergeConfig(base="b", models=["m"], method="nearswap", out="o").spec()
    assert MergeConfig(base="b", models=["m"], method="slerp", out="o").spec().t == 0.5
    for fields, message in [({"method": "ram", "ram_epsilon": -1.0}, r"ram_epsilon -1\.0: expected >= 0"),
                            ({"method": "multislerp", "weights": (1.0, -1.0)},
                             r"multislerp: weights \[1\.0, -1\.0\] sum to 0, and normalize divides them")]:
        with pytest.raises(ValueError, match=message):
            MergeSpec(**fields)
    MergeSpec("multislerp", weights=(1.0, -1.0), normalize=False)  # not divided: allowed


def test_multislerp_whose_directions_cancel_is_an_error_naming_the_tensor(tmp_path):
    """Weighted unit deltas that sum to zero: two models take the straight line (mergekit's fallback), three are an
    error naming the tensor (mergekit raises too), and the streaming merge writes nothing."""
    base = {"w": jnp.ones((2, 3)), "v": jnp.ones((3,))}
    up, down = ({k: v + s * jnp.arange(1.0, v.size + 1).reshape(v.shape) for k, v in base.items()} for s in (1, -1))
    two = merge_pytrees(base, [up, down], MergeSpec("multislerp", weights=(1.0, 1.0)))
    np.testing.assert_allclose(two["w"], base["w"], atol=1e-6)
    with pytest.raises(ValueError, match=r"^v: the multislerp merge gave NaN or Inf values; the models' weighted "
                                         r"directions cancel"):
        merge_pytrees(base, [up, down, base], MergeSpec("multislerp", weights=(1.0, 1.0, 2.0)))
    hb = make_tiny_hf(tmp_path / "b", seed=0)
    bad = dict(_flat(hb))
    bad["model.norm.weight"] = bad["model.norm.weight"] * np.nan
    hn = tmp_path / "nan"
    shutil.copytree(hb, hn)
    for f in hn.glob("*.safetensors"):
        f.unlink()
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in bad.items()}, str(hn / "model.safetensors"))
    (hn / "model.safetensors.index.json").unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"model\.norm\.weight: the task_arithmetic merge gave NaN or Inf values; "
                                         r"check the inputs"):
        merge_checkpoints(hb, [hn], MergeSpec("task_arithmetic"), tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()


def test_passthrough_slices_stack_layers_as_mergekit_does(tmp_path, capsys):
    """Frankenmerges / depth up-scaling: layer ranges of two models stacked into a 5-layer model, a slice's scale
    as filters and a gradient over its layers, a source's own scale (which the final norm and LM head, from the last
    slice, take too); and one whole model scaled. Tensors equal mergekit's, the config has the layers written, and
    transformers loads it."""
    import yaml

    from mnlu_jax.cli import main

    m1 = make_tiny_hf(tmp_path / "m1", seed=1, num_hidden_layers=3)
    m2 = make_tiny_hf(tmp_path / "m2", seed=2, num_hidden_layers=3)
    zero_init = [{"filter": "o_proj", "value": 0.0}, {"filter": "down_proj", "value": [0.5, 1.0]}, {"value": 1.0}]
    cases = {
        "stacked": {"merge_method": "passthrough", "dtype": "float32", "slices": [
            {"sources": [{"model": str(m1), "layer_range": [0, 2]}]},
            {"sources": [{"model": str(m2), "layer_range": [1, 3]}], "parameters": {"scale": zero_init}},
            {"sources": [{"model": str(m1), "layer_range": [2, 3], "parameters": {"scale": 0.5}}]}]},
        "one_model": {"merge_method": "passthrough", "dtype": "float32",
                      "models": [{"model": str(m2), "parameters": {"scale": 2.0}}]},
    }
    for name, (ours, ref) in _both_many(tmp_path, cases).items():
        for n in ours:
            assert ours[n].tobytes() == ref[n].tobytes(), (name, n)
        ours_cfg = json.loads((tmp_path / f"ours_{name}" / "config.json").read_text())
        assert ours_cfg["num_hidden_layers"] == json.loads((tmp_path / f"mk_{name}" / "config.json").read_text())[
            "num_hidden_layers"] == (5 if name == "stacked" else 3)
    # the same stack in our own form, given on the command line
    native = [{"model": str(m1), "layer_range": [0, 2]}, {"model": str(m2), "layer_range": [1, 3], "scale": zero_init},
              {"model": str(m1), "layer_range": [2, 3], "scale": 0.5}]
    assert main(["merge", "--method", "passthrough", "--out", str(tmp_path / "native"),
                 f"slices={json.dumps(native)}"]) == 0
    assert main(["merge", "--method", "passthrough", "--out", str(tmp_path / "never"), f"slices={json.dumps(native)}",
                 "--models", str(m2)]) == 2
    assert "passthrough takes its models from `slices`" in capsys.readouterr().err
    one, two = _flat(m1), _flat(m2)
    stacked = _flat(tmp_path / "ours_stacked")
    assert all(v.tobytes() == stacked[n].tobytes() for n, v in _flat(tmp_path / "native").items())
    assert np.array_equal(stacked["model.layers.2.self_attn.q_proj.weight"],
                          two["model.layers.1.self_attn.q_proj.weight"])
    assert not stacked["model.layers.2.self_attn.o_proj.weight"].any()
    np.testing.assert_array_equal(stacked["model.layers.2.mlp.down_proj.weight"],
                                  two["model.layers.1.mlp.down_proj.weight"] * np.float32(0.5))
    np.testing.assert_array_equal(stacked["lm_head.weight"], one["lm_head.weight"] * np.float32(0.5))
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours_stacked")
    assert len(model.model.layers) == 5
    assert torch.isfinite(model(torch.tensor([[1, 5, 9]])).logits).all()
    record = json.loads((tmp_path / "ours_stacked" / "merge_config.json").read_text())
    assert record["num_hidden_layers"] == 5 and record["slices"][1]["layer_range"] == [1, 3]
    assert yaml.safe_load((tmp_path / "ours_stacked" / "mergekit_config.yml").read_text()) == cases["stacked"]
    from mnlu_jax.config import load_config
    from mnlu_jax.merge.config import MergeConfig, run_merge, translate_merge_config

    def load(cfg):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(cfg))
        cfg = load_config(MergeConfig, path, [f"out={tmp_path / 'never'}"], translate=translate_merge_config)
        return run_merge(cfg, progress=False)

    for bad, message in [
            ({"slices": [{"sources": [{"model": str(m1), "layer_range": [0, 2]},
                                      {"model": str(m2), "layer_range": [0, 2]}]}]},
             r"slices\[0\]\.sources: passthrough takes one source per slice"),
            ({"slices": [{"sources": [{"model": str(m1), "layer_range": [2, 4]}]}]},
             r"slices\[0\]\.sources\[0\]\.layer_range \[2, 4\]: expected 0 <= start < end <= 3"),
            ({"slices": [{"sources": [{"model": str(m1), "layer_range": [0, 1]}]}], "parameters": {"weight": 1}},
             r"parameters \['weight'\] not parameter\(s\) of passthrough"),
            ({"slices": [{"sources": [{"model": str(m1), "layer_range": [0, 1],
                                       "parameters": {"scale": [{"filter": "mlp", "value": 0.0}]}}]}]},
             r"model\.embed_tokens\.weight: no condition of the scale of .*m1 applies to it"),
            ({"slices": [{"sources": [{"model": str(m1), "layer_range": [0, 1]}]}], "models": [str(m1)]},
             r"passthrough takes `slices:` \(layer ranges to stack\) or `models:`"),
            ({"base_model": str(m1), "models": [str(m2)]}, r"base_model: mergekit adds it to passthrough's")]:
        with pytest.raises(ValueError, match=message):
            load({"merge_method": "passthrough", **bad})
    assert not (tmp_path / "never").exists()


def test_slices_merge_slice_by_slice_as_mergekit_does(tmp_path, capsys):
    """Slices of several sources with layer ranges that differ, each merged by its own settings (slice parameters
    over the file's, gradients over the slice's own layers, a slice's own base_model), then stacked: slerp, TIES,
    linear without a base into a model deeper than its sources, and one slice of part of the layers. Equal to
    mergekit's to rtol 1e-5; our own slice form on the command line gives the same tensors."""
    import yaml

    from mnlu_jax.cli import main

    base, m1, m2 = (make_tiny_hf(tmp_path / n, seed=i, num_hidden_layers=3) for i, n in enumerate(("base", "m1",
                                                                                                   "m2")))
    a, b = str(base), str(m1)
    t_by_part = [{"filter": "self_attn", "value": [0.0, 1.0]}, {"filter": "mlp", "value": [1.0, 0.2]}, {"value": 0.4}]
    cases = {
        "slerp": {"merge_method": "slerp", "base_model": a, "dtype": "float32", "parameters": {"t": t_by_part},
                  "slices": [{"sources": [{"model": a, "layer_range": [0, 2]}, {"model": b, "layer_range": [1, 3]}]},
                             {"sources": [{"model": a, "layer_range": [2, 3]}, {"model": b, "layer_range": [0, 1]}],
                              "parameters": {"t": 0.7}}]},
        "ties": {"merge_method": "ties", "base_model": a, "dtype": "float32", "parameters": {"lambda": 1.1},
                 "slices": [
                     {"sources": [{"model": a, "layer_range": [0, 2]},
                                  {"model": b, "layer_range": [0, 2], "parameters": {"weight": [0.2, 0.9]}},
                                  {"model": str(m2), "layer_range": [1, 3], "parameters": {"weight": 0.5}}],
                      "parameters": {"density": 0.6}},
                     {"sources": [{"model": a, "layer_range": [2, 3], "parameters": {"weight": 0.4}},
                                  {"model": b, "layer_range": [2, 3], "parameters": {"weight": 1.0}},
                                  {"model": str(m2), "layer_range": [0, 1], "parameters": {"weight": 0.3}}],
                      "base_model": b, "parameters": {"density": 0.4, "normalize": False}}]},
        "linear_deeper": {"merge_method": "linear", "dtype": "float32", "slices": [
            {"sources": [{"model": b, "layer_range": [0, 2], "parameters": {"weight": 0.3}},
                         {"model": str(m2), "layer_range": [1, 3], "parameters": {"weight": 0.7}}]},
            {"sources": [{"model": b, "layer_range": [1, 3], "parameters": {"weight": 0.5}},
                         {"model": str(m2), "layer_range": [0, 2], "parameters": {"weight": 0.5}}]}]},
        "part": {"merge_method": "multislerp", "base_model": a, "dtype": "float32", "slices": [
            {"sources": [{"model": a, "layer_range": [1, 3]}, {"model": b, "layer_range": [0, 2],
                                                                "parameters": {"weight": 1.0}},
                         {"model": str(m2), "layer_range": [1, 3], "parameters": {"weight": [0.5, 2.0]}}]}]},
    }
    for name, (ours, ref) in _both_many(tmp_path, cases).items():
        for n in ours:
            np.testing.assert_allclose(ours[n], ref[n], rtol=1e-5, atol=1e-6, err_msg=f"{name}: {n}")
        layers = json.loads((tmp_path / f"ours_{name}" / "config.json").read_text())["num_hidden_layers"]
        assert layers == json.loads((tmp_path / f"mk_{name}" / "config.json").read_text())["num_hidden_layers"]
        assert layers == {"slerp": 3, "ties": 3, "linear_deeper": 4, "part": 2}[name]
    # output layer 2 is slerp's second slice: layer 2 of the base and 0 of the model, at t 0.7
    one = _flat(tmp_path / "ours_slerp")
    up = "model.layers.2.mlp.up_proj.weight"
    assert not np.array_equal(one[up], _flat(base)[up])
    record = json.loads((tmp_path / "ours_ties" / "merge_config.json").read_text())
    assert [s["base"] for s in record["slices"]] == [source_name(a), source_name(b)]
    assert record["slices"][1]["sources"][2]["layer_range"] == [0, 1] and record["num_hidden_layers"] == 3
    import transformers

    assert len(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours_linear_deeper").model.layers) == 4
    # our own slice form, given on the command line
    native = [{"sources": [{"model": a, "layer_range": [0, 2]}, {"model": b, "layer_range": [1, 3]}], "t": t_by_part},
              {"sources": [{"model": a, "layer_range": [2, 3]}, {"model": b, "layer_range": [0, 1]}], "t": 0.7}]
    assert main(["merge", "--method", "slerp", "--base", a, "--out", str(tmp_path / "native"),
                 f"slices={json.dumps(native)}"]) == 0
    assert all(v.tobytes() == one[n].tobytes() for n, v in _flat(tmp_path / "native").items())
    for bad, message in [
            ([{"sources": [{"model": b, "layer_range": [0, 2]}, {"model": str(m2), "layer_range": [0, 2]}]}],
             r"slices\[0\]: its base \(.*base\) is not one of its sources"),
            ([{"sources": [{"model": a, "layer_range": [0, 2]}, {"model": b, "layer_range": [0, 1]}]}],
             r"slices\[0\]: its sources have \[2, 1\] layers"),
            ([{"sources": [{"model": a, "layer_range": [0, 2]}, {"model": b, "layer_range": [2, 4]}]}],
             r"slices\[0\]\.sources\[1\]\.layer_range \[2, 4\]: expected 0 <= start < end <= 3"),
            ([{"sources": [{"model": a, "layer_range": [0, 2]}, {"model": b, "layer_range": [0, 2]}], "lamda": 1}],
             r"slices\[0\]: unknown key\(s\) \['lamda'\]"),
            ([{"sources": [{"model": a, "layer_range": [0, 2]}, {"model": b, "layer_range": [0, 2]}],
               "t": [{"filter": "mlp", "value": 0.5}]}],
             r"t: no condition applies to tensor model\.embed_tokens\.weight")]:
        assert main(["merge", "--method", "slerp", "--base", a, "--out", str(tmp_path / "never"),
                     f"slices={json.dumps(bad)}"]) == 2
        assert re.search(message, capsys.readouterr().err), message
    from mnlu_jax.config import load_config
    from mnlu_jax.merge.config import MergeConfig, run_merge, translate_merge_config

    path = tmp_path / "bad.yaml"
    for bad, message in [
            ({"slices": [{"sources": [{"model": a, "layer_range": [0, 2]}, {"model": b, "layer_range": [0, 2]}],
                          "base_model": str(m2)}]},
             r"slices\[0\]: base_model .*m2: not one of the slice's sources"),
            ({"slices": [{"sources": [{"model": a, "layer_range": [0, 2]}, {"model": b, "layer_range": "0-2"}]}]},
             r"slices\[0\]\.sources\[1\]\.layer_range: expected \[START, END\]"),
            ({"slices": [{"sources": [{"model": a, "layer_range": [0, 2]},
                                      {"model": b, "layer_range": [0, 2], "parameters": {"density": 0.5}}]}]},
             r"slices\[0\]: models\[1\]\.parameters: \['density'\] not per-model parameter\(s\) of slerp")]:
        path.write_text(yaml.safe_dump({"merge_method": "slerp", "base_model": a, "parameters": {"t": 0.5}, **bad}))
        with pytest.raises(ValueError, match=message):
            run_merge(load_config(MergeConfig, path, [f"out={tmp_path / 'never'}"], translate=translate_merge_config),
                      progress=False)
    assert not (tmp_path / "never").exists()


def test_a_gradient_over_the_layers_compiles_one_merge_per_shape(tmp_path):
    """t, λ, the weights and the sparsifiers' drop rate, gamma and epsilon are arguments of the compiled merge, not
    part of its static spec: a gradient that gives every layer its own values (in a whole-model merge, model by
    model, and slice by slice) compiles one merge per tensor shape, not one per tensor, and still equals the merge
    with the values baked in."""
    from mnlu_jax.merge import math as merge_math
    from mnlu_jax.merge.config import MergeConfig, run_merge
    from mnlu_jax.merge.math import keys_for
    from mnlu_jax.merge.settings import Schedule

    base = make_tiny_hf(tmp_path / "base", seed=0, num_hidden_layers=4)
    ft = make_tiny_hf(tmp_path / "ft", seed=1, num_hidden_layers=4)
    ft2 = make_tiny_hf(tmp_path / "ft2", seed=2, num_hidden_layers=4)
    shapes = {v.shape for v in _flat(base).values()}
    cases = [
        ("slerp", MergeConfig(base=str(base), models=[str(ft)], method="slerp", t=[0.0, 1.0])),
        ("ties", MergeConfig(base=str(base), models=[str(ft), str(base)], method="ties", drop_rate=0.5,
                             lam=[0.5, 1.5], weights=[[1.0, 0.2], 1.0])),
        ("ties_density", MergeConfig(base=str(base), models=[str(ft)], method="ties", drop_rate=[0.1, 0.9])),
        ("dare_ties", MergeConfig(base=str(base), models=[str(ft), str(ft2)], method="dare_ties",
                                  per_model={"drop_rate": [[0.2, 0.7], 0.4]})),
        ("della", MergeConfig(base=str(base), models=[str(ft)], method="della", drop_rate=[0.3, 0.6],
                              epsilon=[0.05, 0.2])),
        ("breadcrumbs", MergeConfig(base=str(base), models=[str(ft), str(ft2)], method="breadcrumbs_ties",
                                    drop_rate=[0.2, 0.5], per_model={"gamma": [[0.01, 0.1], 0.05]})),
        ("slices", MergeConfig(base=str(base), method="slerp", slices=[
            {"sources": [{"model": str(base), "layer_range": [0, 2]}, {"model": str(ft), "layer_range": [0, 2]}],
             "t": [0.1, 0.9]},
            {"sources": [{"model": str(base), "layer_range": [2, 4]}, {"model": str(ft), "layer_range": [1, 3]}],
             "t": [0.3, 0.7]}]))]
    for name, cfg in cases:
        merge_math._merge_compiled.clear_cache()
        run_merge(dataclasses.replace(cfg, out=str(tmp_path / name)), progress=False)
        assert merge_math._merge_compiled._cache_size() == len(shapes), name
    # the traced values give what baked-in ones give: each tensor merged by its own spec, outside the shared jit
    cfg = MergeConfig(base=str(base), models=[str(ft), str(base)], method="ties", drop_rate=0.5, lam=[0.5, 1.5],
                      weights=[[1.0, 0.2], 1.0])
    schedule = dataclasses.replace(Schedule.make({"lam": [0.5, 1.5]}, [[1.0, 0.2], 1.0]), num_layers=4)
    ours, b, f = _flat(tmp_path / "ties"), _flat(base), _flat(ft)
    for n in ("model.layers.1.mlp.up_proj.weight", "model.layers.3.self_attn.q_proj.weight", "model.norm.weight"):
        spec = schedule.spec_for(cfg.spec(), n).select_models([0])  # (the base, listed second, is elided)
        want = merge_tensor(b[n], (f[n],), None, spec)
        np.testing.assert_allclose(ours[n], np.asarray(want), rtol=1e-6, atol=1e-7, err_msg=n)
    # and the sparsifiers' settings: kept counts, keep probabilities and DARE's draws as with them baked in
    f2 = _flat(ft2)
    for name in ("dare_ties", "della", "breadcrumbs"):
        cfg = dict(cases)[name]
        schedule = dataclasses.replace(cfg.schedule(), num_layers=4)
        ours = _flat(tmp_path / name)
        for n in ("model.layers.1.mlp.up_proj.weight", "model.layers.2.self_attn.k_proj.weight",
                  "model.layers.3.input_layernorm.weight"):
            spec = schedule.spec_for(cfg.spec(), n)
            models = (f[n], f2[n]) if len(cfg.models) == 2 else (f[n],)
            want = merge_tensor(b[n], models, keys_for(spec, n, len(models)), spec)
            np.testing.assert_allclose(ours[n], np.asarray(want), rtol=1e-6, atol=1e-7, err_msg=f"{name}: {n}")


def _word_model(path: Path, seed: int, words: list[str], added: list[str] = ()) -> Path:
    """A tiny model whose tokenizer has `words` (ids in that order) and then the special tokens `added`."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    make_tiny_hf(path, seed=seed, num_hidden_layers=2, vocab_size=len(words) + len(added))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": list(added)})
    fast.save_pretrained(path)
    return path


def _both_with_tokenizers(tmp_path, cases: dict[str, dict]):
    """`_both_many`, the tensors and the saved tokenizers' vocabularies checked equal to mergekit's: (name, our
    tensors, our tokenizer, mergekit's tokenizer) per case."""
    import transformers

    for name, (ours, ref) in _both_many(tmp_path, cases).items():
        for n in ours:
            np.testing.assert_allclose(ours[n], ref[n], rtol=1e-5, atol=1e-6, err_msg=f"{name}: {n}")
        ours_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / f"ours_{name}")
        ref_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / f"mk_{name}")
        assert ours_tok.get_vocab() == ref_tok.get_vocab(), name
        yield name, ours, ours_tok, ref_tok


def test_tokenizer_sources_align_vocabularies_as_mergekit_does(tmp_path):
    """mergekit's tokenizer_source: every model's embedding and LM head rows moved to the merge's token ids. Models
    whose tokenizers order the words differently, one lacking words and one with added special tokens; the union
    (padded to a multiple of 64) and another model's tokenizer: the rows a model lacks come from the one model
    that has the token, the base, or the mean of those that have it. Tensors and the saved tokenizer equal
    mergekit's."""
    words = ["<unk>"] + [f"w{i}" for i in range(1, 100)]
    base = _word_model(tmp_path / "base", 0, words)
    shuffled = words[:1] + words[1:][::-1]                    # the same words, other ids
    m1 = _word_model(tmp_path / "m1", 1, shuffled, added=["<a>", "<b>"])
    m2 = _word_model(tmp_path / "m2", 2, [w for w in shuffled if w not in ("w7", "w8")])  # lacks two words
    m3 = _word_model(tmp_path / "m3", 3, words[:50], added=["<b>"])                         # half, and <b>
    two = lambda a, b: [{"model": str(a), "parameters": {"weight": 0.7}},  # noqa: E731
                        {"model": str(b), "parameters": {"weight": 0.4}}]
    cases = {
        "union": {"merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
                  "models": two(m1, m2), "tokenizer": {"source": "union", "pad_to_multiple_of": 64}},
        "from_m1": {"merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
                    "models": two(m1, m3), "tokenizer_source": str(m1)},
        # by slices (the embeddings from the first slice's sources, the LM head from the last's) and passthrough
        "slices_union": {"merge_method": "slerp", "base_model": str(base), "dtype": "float32", "parameters": {"t": 0.3},
                         "tokenizer_source": "union", "slices": [
                             {"sources": [{"model": str(base), "layer_range": [0, 1]},
                                          {"model": str(m1), "layer_range": [1, 2]}]},
                             {"sources": [{"model": str(base), "layer_range": [1, 2]},
                                          {"model": str(m1), "layer_range": [0, 1]}]}]},
        "passthrough_base": {"merge_method": "passthrough", "base_model": str(base), "dtype": "float32",
                             "tokenizer_source": "base",
                             "slices": [{"sources": [{"model": str(m1), "layer_range": [0, 1]}]},
                                        {"sources": [{"model": str(base), "layer_range": [1, 2]}]}]},
    }
    for name, ours, _, _ in _both_with_tokenizers(tmp_path, cases):
        rows = {"union": 128, "from_m1": 102, "slices_union": 102, "passthrough_base": 100}[name]
        assert json.loads((tmp_path / f"ours_{name}" / "config.json").read_text())["vocab_size"] == rows
        assert ours["model.embed_tokens.weight"].shape[0] == rows
    # by hand: in the union, w7 (absent from m2) is the base's row plus m1's delta only; <a> (m1's alone) is m1's row
    b, one, two_ = _flat(base), _flat(m1), _flat(m2)
    union = _flat(tmp_path / "ours_union")["model.embed_tokens.weight"]
    e = "model.embed_tokens.weight"
    w7_base, w7_m1 = b[e][words.index("w7")], one[e][shuffled.index("w7")]
    np.testing.assert_allclose(union[words.index("w7")], w7_base + 0.7 * (w7_m1 - w7_base), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(union[100], one[e][100], rtol=1e-5, atol=1e-6)  # <a>: base and m2 take m1's row
    assert two_[e].shape[0] == 98
    # our own keys on the command line give the same merge
    from mnlu_jax.cli import main

    common = ["merge", "--method", "task_arithmetic", "--base", str(base), "--dtype", "float32", "--models", str(m1),
              str(m2), "--weights", "0.7", "0.4"]
    assert main([*common, "--out", str(tmp_path / "native"), "tokenizer_source=union", "pad_to_multiple_of=64"]) == 0
    translated = _flat(tmp_path / "ours_union")
    assert all(v.tobytes() == translated[n].tobytes() for n, v in _flat(tmp_path / "native").items())
    assert main([*common, "--out", str(tmp_path / "never"), "pad_to_multiple_of=64"]) == 2
    # a model without a tokenizer is taken to be in the base's order, with a warning (as mergekit does)
    bare = make_tiny_hf(tmp_path / "bare", seed=4, num_hidden_layers=2, vocab_size=100)
    from mnlu_jax.merge.config import MergeConfig, run_merge

    with pytest.warns(UserWarning, match=r"bare: no tokenizer could be loaded"):
        run_merge(MergeConfig(base=str(base), models=[str(bare)], method="task_arithmetic", tokenizer_source="base",
                              out=str(tmp_path / "bare_merge")), progress=False)
    short = make_tiny_hf(tmp_path / "short", seed=5, num_hidden_layers=2, vocab_size=98)  # fewer rows than tokens
    for f in base.glob("tokenizer*"):
        shutil.copy(f, short)
    with pytest.raises(ValueError, match=r"tokenizer_source 'union': .*short: its tokenizer has tokens with ids past "
                                         r"the config's vocab_size 98 .*only a BPE tokenizer can be cut to the rows, "
                                         r"this one is WordLevel"):
        run_merge(MergeConfig(base=str(short), models=[str(m2)], method="task_arithmetic", tokenizer_source="union",
                              out=str(tmp_path / "never")), progress=False)
    assert not (tmp_path / "never").exists()


def _bpe_model(path: Path, seed: int, vocab_size: int, special: bool = False) -> Path:
    """A tiny model whose BPE tokenizer has 18 tokens: letters a-j, ab, cd, abcd (merges), y and z, then
    the added tokens <x> and <y> (`special` ones, <y> the padding token, or not); its config has `vocab_size` rows."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    make_tiny_hf(path, seed=seed, num_hidden_layers=2, vocab_size=vocab_size)
    vocab = {t: i for i, t in enumerate(["<unk>", *"abcdefghij", "ab", "cd", "abcd", "y", "z"])}
    tok = Tokenizer(models.BPE(vocab, [("a", "b"), ("c", "d"), ("ab", "cd")], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    if special:
        fast.add_special_tokens({"additional_special_tokens": ["<x>", "<y>"], "pad_token": "<y>"})
    else:
        fast.add_tokens(["<x>", "<y>"])
    fast.save_pretrained(path)
    return path


def test_base_tokenizer_tokens_past_its_rows_are_cut_as_mergekit_cuts_them(tmp_path):
    """A base whose BPE tokenizer has more tokens than its config has rows (z, <x> and <y> past 15): under
    `base` and `union` they are cut from its tokenizer (vocabulary, added tokens, the merges that use or make them),
    as mergekit's get_stripped_tokenizer does; tensors, vocabulary and tokenization equal mergekit's. Beyond
    mergekit: special tokens past the rows are cut from the config's lists too (mergekit's output keeps them there,
    and transformers adds them back on load, at ids with no rows), and a cut that takes a merge's result (abcd,
    past 13), on which mergekit's cut fails, leaves a tokenizer that still encodes."""
    from mnlu_jax.merge.config import MergeConfig, run_merge
    from mnlu_jax.merge.vocabulary import _stripped
    from mnlu_jax.weights.convert import load_tokenizer

    # (one plain token to add back in the union: mergekit's order of several follows a hash map's)
    base = _bpe_model(tmp_path / "base", 0, vocab_size=15)
    full = _bpe_model(tmp_path / "full", 1, vocab_size=18)
    cases = {source: {"merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
                      "models": [{"model": str(full), "parameters": {"weight": 0.6}}], "tokenizer_source": source}
             for source in ("base", "union")}
    text = "abcd yz <x> j <y>"
    for name, ours, ours_tok, ref_tok in _both_with_tokenizers(tmp_path, cases):
        rows = {"base": 15, "union": 18}[name]
        assert len(ours_tok.get_vocab()) == ours["model.embed_tokens.weight"].shape[0] == rows, name
        assert ours_tok(text)["input_ids"] == ref_tok(text)["input_ids"], name
    assert load_tokenizer(tmp_path / "ours_base").tokenize("abcd yz") == ["abcd", "y", "<unk>"]
    # special tokens past the rows
    special = _bpe_model(tmp_path / "special", 2, vocab_size=14, special=True)
    with pytest.warns(UserWarning, match=r"special: its pad_token '<y>' has an id past the config's vocab_size 14"):
        run_merge(MergeConfig(base=str(special), models=[str(full)], method="task_arithmetic",
                              tokenizer_source="base", out=str(tmp_path / "special_merge")), progress=False)
    cut = load_tokenizer(tmp_path / "special_merge")
    assert len(cut.get_vocab()) == 14 and "<x>" not in cut.get_vocab() and cut.pad_token is None
    assert max(cut("abcd z <x> <y>")["input_ids"]) < 14
    # a merge's result past the rows
    cut = _stripped(load_tokenizer(full), 13, "here")
    assert sorted(cut.get_vocab().values()) == list(range(13))
    assert cut.tokenize("abcd") == ["ab", "cd"]


def test_token_sources_and_chat_templates_as_mergekit(tmp_path):
    """mergekit's `tokenizer.tokens` (our token_sources) and `chat_template`: a token no model has, added and taken
    from a model's row for another token; a token forced to one model's row in every model; a zero row and a row
    by number for the models that lack a token; model references in mergekit's mapping form. Tensors, vocabulary
    and the written template equal mergekit's (a named template, `auto` and template text)."""
    import transformers

    words = ["<unk>"] + [f"w{i}" for i in range(1, 60)]
    template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    base = _word_model(tmp_path / "base", 0, words)
    m1 = _word_model(tmp_path / "m1", 1, words[:1] + words[1:][::-1], added=["<a>"])
    m2 = _word_model(tmp_path / "m2", 2, [w for w in words if w != "w7"])
    config = json.loads((m1 / "tokenizer_config.json").read_text())
    (m1 / "tokenizer_config.json").write_text(json.dumps(dict(config, chat_template=template)))
    two = [{"model": str(m1), "parameters": {"weight": 0.7}}, {"model": {"model": {"path": str(m2)}},
                                                              "parameters": {"weight": 0.4}}]
    tokens = {"<new>": {"source": {"kind": "model_token", "model": str(m1), "token": "w5"}},
              "w3": {"source": {"model": str(m2)}, "force": True},
              "<a>": {"source": {"kind": "zero"}},
              "w7": {"source": {"kind": "model_token", "model": str(m1), "token_id": 3}}}
    cases = {
        "tokens": {"merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32", "models": two,
                   "tokenizer": {"source": "union", "tokens": tokens}, "chat_template": "chatml"},
        "auto": {"merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32", "models": two,
                 "tokenizer_source": "base", "chat_template": "auto"},
        "text": {"merge_method": "passthrough", "dtype": "float32", "chat_template": template.replace(": ", " > "),
                 "slices": [{"sources": [{"model": str(base), "layer_range": [0, 2]}]}]},
    }
    for name, _, ours_tok, ref_tok in _both_with_tokenizers(tmp_path, cases):
        if name != "tokens":  # (a named template is our own text, which renders as mergekit's file does)
            assert ours_tok.chat_template == ref_tok.chat_template, name
        chat = [{"role": "system", "content": "w4"}, {"role": "user", "content": "w1 w2"},
                {"role": "assistant", "content": "w3"}, {"role": "user", "content": "w5"}]
        assert (ours_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
                == ref_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)), name
    # by hand: every model's w3 is m2's, so the merged w3 is m2's row; <new> (base and m2 have none either) is m1's
    # w5 in every model; w7 takes m1's row 3 in m2, which lacks it
    e = "model.embed_tokens.weight"
    b, one, two_ = _flat(base), _flat(m1), _flat(m2)
    vocab = json.loads((tmp_path / "ours_tokens" / "tokenizer.json").read_text())["model"]["vocab"]
    merged = _flat(tmp_path / "ours_tokens")[e]
    at = transformers.AutoTokenizer.from_pretrained(tmp_path / "ours_tokens").get_vocab()
    np.testing.assert_allclose(merged[at["w3"]], two_[e][words.index("w3") - 0], rtol=1e-5, atol=1e-6)
    w5 = one[e][(words[:1] + words[1:][::-1]).index("w5")]
    np.testing.assert_allclose(merged[at["<new>"]], w5, rtol=1e-5, atol=1e-6)
    w7 = b[e][words.index("w7")]
    np.testing.assert_allclose(merged[at["w7"]], w7 + 0.7 * (one[e][words[1:][::-1].index("w7") + 1] - w7)
                               + 0.4 * (one[e][3] - w7), rtol=1e-5, atol=1e-6)
    assert "w3" in vocab
    assert "<|im_start|>" in transformers.AutoTokenizer.from_pretrained(tmp_path / "ours_tokens").chat_template
    # refused, naming the token or the field, before anything is written
    from mnlu_jax.merge.config import MergeConfig, run_merge, translate_merge_config

    common = dict(base=str(base), models=[str(m1), str(m2)], method="task_arithmetic", out=str(tmp_path / "never"))
    for settings, message in [
            ({"token_sources": {"w3": {"source": str(m2)}}}, r"token_sources: needs a tokenizer_source"),
            ({"tokenizer_source": "union", "token_sources": {"w7": {"source": str(m2)}}},
             r"token_sources\['w7'\]\.source: .*m2's tokenizer has no 'w7'"),
            ({"tokenizer_source": "union", "token_sources": {"w7": {"source": str(tmp_path / "else")}}},
             r"token_sources\['w7'\]\.source: .*else is not one of the merge's models"),
            ({"tokenizer_source": "union", "token_sources": {"w7": {"source": {"kind": "model_token", "model": str(m1),
                                                                               "token_id": 99}}}},
             r"token_sources\['w7'\]\.source\.token_id: 99 is past .*m1's 61 rows"),
            ({"tokenizer_source": "union", "token_sources": {"w7": {"source": {"kind": "model_token", "model": str(m1),
                                                                               "token": "nope"}}}},
             r"\.source\.token: 'nope' is not a token of"),
            ({"tokenizer_source": "union", "token_sources": {"w7": {"force": True}}},
             r"token_sources\['w7'\]\.source: expected a model path"),
            ({"chat_template": "alpaca", "tokenizer_source": "base"},
             r"chat_template 'alpaca': mergekit's alpaca template renders with stray"),
            ({"chat_template": "chatm", "tokenizer_source": "base"}, r"chat_template 'chatm': not a template name"),
            ({"chat_template": "{% for m in messages %}", "tokenizer_source": "base"},
             r"chat_template:1: the chat template does not parse")]:
        with pytest.raises(ValueError, match=message):
            run_merge(MergeConfig(**common, **settings), progress=False)
    # a token source that is not an input of the tensor that needs it: a merge by slices takes the embeddings from
    # the first slice's sources, where m2 lacks w7 and m1, its configured source, is not one
    with pytest.raises(ValueError, match=r"token_sources\['w7'\]: its source .*m1 is not an input of "
                                         r"model\.embed_tokens\.weight"):
        run_merge(MergeConfig(base=str(base), method="slerp", t=0.5, out=str(tmp_path / "never"),
                              tokenizer_source="base", token_sources={"w7": {"source": str(m1)}}, slices=[
                                  {"sources": [{"model": str(base), "layer_range": [0, 1]},
                                               {"model": str(m2), "layer_range": [0, 1]}]},
                                  {"sources": [{"model": str(base), "layer_range": [1, 2]},
                                               {"model": str(m1), "layer_range": [1, 2]}]}]), progress=False)
    # a merge whose base has no tokenizer (only generation_config.json beside its weights) writes none to carry one
    bare = make_tiny_hf(tmp_path / "bare", seed=5, num_hidden_layers=2)
    with pytest.raises(ValueError, match=r"chat_template 'chatml': the merge writes no tokenizer to carry it \(.*bare "
                                         r"has no tokenizer files"):
        run_merge(MergeConfig(base=str(bare), models=[str(make_tiny_hf(tmp_path / "bare_ft", seed=6,
                                                                          num_hidden_layers=2))],
                              method="task_arithmetic", chat_template="chatml", out=str(tmp_path / "never")),
                  progress=False)
    assert not (tmp_path / "never").exists()
    # mergekit's mapping form of a reference with a revision reads as a Hub id with @REVISION; other keys refused
    from mnlu_jax.merge.mergekit_config import reference

    assert reference({"model": {"path": "org/name", "revision": "v2"}, "lora": "org/adapter"}, "x") == \
        "org/name@v2+org/adapter"
    with pytest.raises(ValueError, match=r"models\[0\]\.model\.override_architecture: not supported"):
        run_merge(MergeConfig(**translate_merge_config(
            {"merge_method": "linear", "models": [{"model": {"model": str(m1), "override_architecture": "X"},
                                                   "parameters": {"weight": 1.0}}]}, "cfg.yaml")), progress=False)


def test_named_chat_templates_render_as_mergekits_files():
    """Our `chatml`, `llama3` and `mistral` (written here) render what mergekit 0.1.5's template files of those
    names render, conversation by conversation (a system message, several turns, a generation prompt, contents with
    spaces to trim), and refuse the conversations they refuse."""
    import importlib.resources

    from transformers.utils.chat_template_utils import render_jinja_template

    from mnlu_jax.merge.chat_template import NAMED

    files = importlib.resources.files("mergekit._data.chat_templates")
    chats = [[{"role": "user", "content": "Hi  there "}],
             [{"role": "system", "content": " Be brief."}, {"role": "user", "content": "Q1"},
              {"role": "assistant", "content": "A1 "}, {"role": "user", "content": "Q2"}],
             [{"role": "user", "content": "Q"}, {"role": "assistant", "content": " A\n"}],
             [{"role": "assistant", "content": "first"}],
             [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]]

    def render(template, chat, prompt):
        try:
            return render_jinja_template(conversations=[chat], chat_template=template, add_generation_prompt=prompt,
                                         bos_token="<s>", eos_token="</s>")[0][0]
        except Exception as e:  # (mistral refuses roles that do not alternate)
            return type(e).__name__

    for name, ours in NAMED.items():
        theirs = files.joinpath(f"{name}.jinja").read_text()
        for chat in chats:
            for prompt in (False, True):
                assert render(ours, chat, prompt) == render(theirs, chat, prompt), (name, chat, prompt)


def test_hub_ids_with_a_revision_download_that_revision(monkeypatch, tmp_path):
    """mergekit's `org/name@REVISION` (and the mapping form's `revision`) downloads that branch, tag or commit."""
    import huggingface_hub

    from mnlu_jax.weights.convert import check_source, resolve_source

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, revision=None, **kw: calls.append((repo, revision)) or str(tmp_path))
    assert resolve_source("org/name@v1.0") == tmp_path
    assert resolve_source("org/name") == tmp_path
    assert calls == [("org/name", "v1.0"), ("org/name", None)]
    check_source("org/name@refs/pr/3", "model")
    with pytest.raises(FileNotFoundError, match=r"model 'org/name@': no such file"):
        check_source("org/name@", "model")


def _lora(model: Path, out: Path, seed: int, **config) -> Path:
    """A PEFT LoRA adapter for `model` with random A and B (PEFT's own init has B = 0, which would change nothing),
    saved to `out`."""
    import peft
    import torch
    import transformers

    torch.manual_seed(seed)
    adapted = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(model),
                                  peft.LoraConfig(init_lora_weights=False, **config))
    if config.get("modules_to_save"):  # a trained copy: it replaces the model's tensor
        with torch.no_grad():
            adapted.base_model.model.lm_head.modules_to_save["default"].weight.add_(0.05)
    adapted.save_pretrained(out)
    return out


def test_lora_references_merge_the_adapter_in_as_peft_and_mergekit_do(tmp_path):
    """mergekit's MODEL+LORA: the adapter merged in as tensors are read. Linear layers and an embedding (B·A
    transposed), lora_alpha / r and rsLoRA's lora_alpha / sqrt(r) with an alpha_pattern, and a modules_to_save copy
    that replaces the model's LM head: equal to PEFT's merge_and_unload(); a TIES merge of two adapted models equal
    to mergekit's; adapters PEFT would merge otherwise, or for another model, refused by name."""
    peft = pytest.importorskip("peft")  # (mergekit depends on it)
    import transformers

    from mnlu_jax.weights.named_tensors import NamedTensors

    base = make_tiny_hf(tmp_path / "base", seed=0, num_hidden_layers=3)
    m1 = make_tiny_hf(tmp_path / "m1", seed=1, num_hidden_layers=3)
    m2 = make_tiny_hf(tmp_path / "m2", seed=2, num_hidden_layers=3)
    a1 = _lora(m1, tmp_path / "lora1", 3, r=4, lora_alpha=8, target_modules=["q_proj", "down_proj", "embed_tokens"],
               modules_to_save=["lm_head"])
    a2 = _lora(m2, tmp_path / "lora2", 4, r=8, lora_alpha=4, use_rslora=True, target_modules=["v_proj", "gate_proj"],
               alpha_pattern={"gate_proj": 16})
    for model, adapter in ((m1, a1), (m2, a2)):
        merged = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(model), adapter)
        merged.merge_and_unload().save_pretrained(tmp_path / f"peft_{adapter.name}")
        want, plain = _flat(tmp_path / f"peft_{adapter.name}"), _flat(model)
        ours = NamedTensors(f"{model}+{adapter}")
        assert set(ours.names()) == set(want)
        for n in want:
            np.testing.assert_allclose(ours.get(n), want[n], rtol=1e-5, atol=1e-6, err_msg=n)
        if adapter == a1:  # a model to decode, train from or convert (load_model) may be MODEL+ADAPTER too
            from mnlu_jax.weights.convert import load_model

            ours_params, _, tokenizer = load_model(f"{model}+{adapter}")
            want_params, _, _ = load_model(tmp_path / f"peft_{adapter.name}")
            jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), ours_params, want_params)
            assert tokenizer == model
        changed = {n for n in want if not np.array_equal(want[n], plain[n])}
        adapted = ("self_attn.q_proj", "mlp.down_proj") if adapter == a1 else ("self_attn.v_proj", "mlp.gate_proj")
        whole = {"model.embed_tokens.weight", "lm_head.weight"} if adapter == a1 else set()
        assert changed == {f"model.layers.{i}.{m}.weight" for i in range(3) for m in adapted} | whole
    ties = {"merge_method": "ties", "base_model": str(base), "dtype": "float32",
            "models": [{"model": f"{m1}+{a1}", "parameters": {"weight": 0.6, "density": 0.7}},
                       {"model": f"{m2}+{a2}", "parameters": {"weight": 0.4, "density": 0.7}}]}
    ours, ref, _ = _both(tmp_path, ties, "lora_ties")
    for n in ours:
        np.testing.assert_allclose(ours[n], ref[n], rtol=1e-5, atol=1e-6, err_msg=n)
    config = json.loads((a1 / "adapter_config.json").read_text())
    for field, value, message in [("use_dora", True, r"use_dora True is not supported"),
                                  ("peft_type", "IA3", r"peft_type 'IA3': only LORA adapters"),
                                  ("lora_alpha", 0, r"lora_alpha: expected a positive number")]:
        (a1 / "adapter_config.json").write_text(json.dumps({**config, field: value}))
        with pytest.raises(ValueError, match=message):
            NamedTensors(f"{m1}+{a1}")
    (a1 / "adapter_config.json").write_text(json.dumps(config))
    wider = make_tiny_hf(tmp_path / "wider", seed=5, num_hidden_layers=3, intermediate_size=128)
    with pytest.raises(ValueError, match=r"lora1: model\.layers\.0\.mlp\.down_proj\.weight: B·A is \(64, 96\), the "
                                         r"tensor of .*wider is \(64, 128\)"):
        NamedTensors(f"{wider}+{a1}")
    with pytest.raises(FileNotFoundError, match=r"LoRA adapter .*nowhere \(after the '\+' of a MODEL\+ADAPTER "
                                                r"reference\): .*nowhere: no such file"):
        NamedTensors(f"{m1}+{tmp_path / 'nowhere'}")


def test_della_row_ranks_by_numpy_equal_a_stable_sort():
    """DELLA's per-row ranks, sorted by NumPy on CPU threads (XLA:CPU sorts on one): each entry's position in its
    row's stable ascending sort, ties in index order, as XLA's argsort gives them on other backends."""
    from mnlu_jax.merge.math import row_ranks

    rng = np.random.default_rng(3)
    values = np.round(np.abs(rng.standard_normal((300, 37))) * 4).astype(np.float32)  # many ties
    want = np.argsort(np.argsort(values, axis=1, kind="stable"), axis=1, kind="stable").astype(np.float32)
    for on_host in (True, False):
        got = np.asarray(jax.jit(row_ranks, static_argnums=1)(jnp.asarray(values), on_host))
        assert np.array_equal(got, want), on_host


def test_merges_that_build_on_merges_run_as_mergekit_multi_runs_them(tmp_path, capsys):
    """`merge-multi`: a file of mergekit configs, the final one first and unnamed, reading the named `medical`
    (TIES of two fine-tunes) by name through a whole-model slice (which needs its layer count, so it is checked
    once `medical` exists) and a LoRA-less mapping-form reference. Tensors equal `mergekit-multi`'s, stage by stage.
    A rerun keeps both merges; a changed config is refused naming the change, and merged again with --no-lazy.
    Bad files are refused before anything is merged, naming the document."""
    import yaml

    from mnlu_jax.cli import main

    if shutil.which("mergekit-multi") is None:
        pytest.skip("mergekit not installed")
    base = make_tiny_hf(tmp_path / "base", seed=0)
    m1 = make_tiny_hf(tmp_path / "m1", seed=1)
    m2 = make_tiny_hf(tmp_path / "m2", seed=2)
    final = {"merge_method": "slerp", "base_model": str(base), "dtype": "float32", "parameters": {"t": 0.4},
             "slices": [{"sources": [{"model": str(base), "layer_range": [0, 2]},
                                     {"model": "medical", "layer_range": [0, 2]}]}]}
    medical = {"name": "medical", "merge_method": "ties", "base_model": {"model": {"path": str(base)}},
               "dtype": "float32", "models": [{"model": str(m1), "parameters": {"weight": 0.7, "density": 0.5}},
                                              {"model": str(m2), "parameters": {"weight": 0.5, "density": 0.5}}]}
    noisy = {"name": "noisy", "merge_method": "dare_linear", "base_model": str(base), "dtype": "float32",
             "models": [{"model": str(m1), "parameters": {"weight": 1.0, "density": 0.5}}]}  # (read by none)
    path, theirs = tmp_path / "multi.yaml", tmp_path / "multi_mk.yaml"
    theirs.write_text(yaml.safe_dump_all([final, medical, noisy]))
    path.write_text(theirs.read_text() + "---\n")  # (an empty last document, which mergekit-multi fails on)
    subprocess.run(["mergekit-multi", str(theirs), "-I", str(tmp_path / "mk_stages"), "--out-path",
                    str(tmp_path / "mk_final")], check=True, capture_output=True)
    command = ["merge-multi", str(path), "-I", str(tmp_path / "stages"), "--out", str(tmp_path / "final")]
    assert main(command) == 0
    for ours, theirs in ((tmp_path / "stages" / "medical", tmp_path / "mk_stages" / "medical"),
                         (tmp_path / "final", tmp_path / "mk_final")):
        mine, ref = _flat(ours), _flat(theirs)
        assert set(mine) == set(ref)
        for n in mine:
            np.testing.assert_allclose(mine[n], ref[n], rtol=1e-5, atol=1e-6, err_msg=f"{ours.name}: {n}")
    # the final merge's recorded config reads the intermediate by path, and runs as it is
    recorded = yaml.safe_load((tmp_path / "final" / "mergekit_config.yml").read_text())
    assert recorded["slices"][0]["sources"][1]["model"] == str((tmp_path / "stages" / "medical").absolute())
    # a rerun keeps what is made; a changed config is refused, then merged again with --no-lazy
    stamp = (tmp_path / "final" / "config.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(command) == 0
    assert capsys.readouterr().out.count("already merged from this config") == 3
    assert (tmp_path / "final" / "config.json").stat().st_mtime_ns == stamp
    # another seed changes DARE's masks (not TIES' or slerp's result): refused before a new merge runs
    extra = {"name": "extra", "merge_method": "linear", "dtype": "float32",
             "models": [{"model": str(m1), "parameters": {"weight": 1.0}}]}
    path.write_text(yaml.safe_dump_all([final, medical, noisy, extra]))
    assert main([*command, "--seed", "3"]) == 2
    assert re.search(r"document 3 \(noisy\): .*noisy holds a merge of another config \(seed: \[0\] then, 3 now\)",
                     capsys.readouterr().err)
    assert not (tmp_path / "stages" / "extra").exists()
    path.write_text(yaml.safe_dump_all([dict(final, parameters={"t": 0.9}), medical]))
    assert main(command) == 2
    assert re.search(r"document 1: .*final holds a merge of another config \(parameters: \{'t': 0\.4\} then, "
                     r"\{'t': 0\.9\} now\); remove it, or pass --no-lazy", capsys.readouterr().err)
    before = _flat(tmp_path / "final")
    assert main([*command, "--no-lazy"]) == 0
    after = _flat(tmp_path / "final")
    assert not np.allclose(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])
    assert not list(tmp_path.glob(".final.*")) and not list((tmp_path / "stages").glob(".medical.*"))
    # refusals, each before any merge
    named = lambda name, reads=str(m1): dict(medical, name=name, models=[{"model": reads}])  # noqa: E731
    bad = {
        "dup": ([named("a"), named("a")], r"document 2 \(a\): the name 'a' is also document 1 \(a\)'s"),
        "two_final": ([final, final], r"document 2: a second unnamed merge \(document 1 is one\)"),
        "cycle": ([named("a", "b"), named("b", "a")], r"document 1 \(a\): the merges read each other in a cycle: "
                                                      r"a -> b -> a"),
        "slash": ([named("a/b")], r"document 1: name: expected a directory name under the intermediate directory"),
        "revision": ([named("a"), named("b", "a@v1")], r"document 2 \(b\): models\[0\]\.model: 'a@v1' names the "
                                                       r"merge 'a', which has no revisions"),
        "list": ([named("a"), [1, 2]], r"document 2: expected a mergekit config \(a mapping with merge_method\), "
                                       r"got list"),
    }
    for key, (docs, message) in bad.items():
        (tmp_path / f"{key}.yaml").write_text(yaml.safe_dump_all(docs))
        assert main(["merge-multi", str(tmp_path / f"{key}.yaml"), "-I", str(tmp_path / key), "--out",
                     str(tmp_path / f"{key}_out")]) == 2, key
        assert re.search(message, capsys.readouterr().err), key
        assert not (tmp_path / key).exists() and not (tmp_path / f"{key}_out").exists(), key
    assert main(["merge-multi", str(path), "-I", str(tmp_path / "x")]) == 2
    assert "document 1: an unnamed (final) merge is written to --out, which was not given" in capsys.readouterr().err
    assert main(["merge", "--config", str(path), "--out", str(tmp_path / "x")]) == 2
    assert "2 YAML documents; a file of merges that build on merges runs with `mnlu-jax merge-multi" in \
        capsys.readouterr().err
    # the tokenizer's keywords stay keywords beside a merge named `base`
    from mnlu_jax.merge.multi import read_stages

    (tmp_path / "kw.yaml").write_text(yaml.safe_dump_all([named("base"), dict(final, base_model="base",
                                                                                tokenizer_source="base")]))
    last = read_stages(tmp_path / "kw.yaml", tmp_path / "kw", tmp_path / "kw_out")[-1]
    assert last.config["tokenizer_source"] == "base" and last.reads == ("base",)
    assert last.config["base_model"] == str((tmp_path / "kw" / "base").absolute())


def _low_rank_fine_tune(base: Path, out: Path, ranks: dict[str, int]) -> Path:
    """`base` with, on each linear layer whose name holds a key of `ranks`, a random update of that rank (others
    unchanged)."""
    shutil.copytree(base, out)
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(0)
    for f in sorted(out.glob("*.safetensors")):
        tensors = load_file(f)
        for n, w in tensors.items():
            rank = next((r for key, r in ranks.items() if key in n), 0)
            if rank:
                tensors[n] = w + 0.05 * rng.standard_normal((w.shape[0], rank)).astype(w.dtype) \
                    @ rng.standard_normal((rank, w.shape[1])).astype(w.dtype)
        save_file(tensors, f, metadata={"format": "pt"})
    return out


def test_a_merge_named_with_a_lora_reads_the_merges_output_with_that_adapter(tmp_path):
    """merge-multi's `NAME+LORA` (and the mapping form {model: NAME, lora: ...}): the name becomes the merge's output
    path with the adapter kept, in the string and the mapping form alike, and orders the merges; a path that only
    starts like a name, and a LoRA named like a merge, are left as they are."""
    import yaml

    from mnlu_jax.merge.multi import read_stages

    medical = {"name": "medical", "merge_method": "linear", "models": [{"model": "m1", "parameters": {"weight": 1}}]}
    final = {"merge_method": "ties", "base_model": "base", "models": [
        {"model": "medical+adapters/ner", "parameters": {"weight": 0.5}},
        {"model": {"model": {"path": "medical"}, "lora": {"path": "adapters/re"}}, "parameters": {"weight": 0.5}},
        {"model": "medical2+medical", "parameters": {"weight": 0.5}}]}
    path = tmp_path / "multi.yaml"
    path.write_text(yaml.safe_dump_all([final, medical]))
    stages = read_stages(path, tmp_path / "stages", tmp_path / "out")
    assert [s.name for s in stages] == ["medical", None]
    made = str((tmp_path / "stages" / "medical").absolute())
    assert [m["model"] for m in stages[1].config["models"]] == [f"{made}+adapters/ner", f"{made}+adapters/re",
                                                                "medical2+medical"]
    assert stages[1].reads == ("medical",) and stages[1].config["base_model"] == "base"


def test_extracted_lora_adapters_equal_mergekits_and_load_back(tmp_path):
    """`extract-lora` against `mergekit-extract-lora` 0.1.5 on the same pairs: the same tensors, the whole ones
    equal and each layer's B·A equal (the factors' signs are the SVD's to choose), and the same adapter_config.json.
    A Mistral at rank 4; a Llama with tied embeddings, its embeddings and LM head adapted too, S kept in A and o_proj
    left out; a fine-tune whose update has rank 1 in q_proj and 2 elsewhere, cut at `sv_epsilon` (rank_pattern).
    `--save-module` (which fails in mergekit 0.1.5: it appends to a tuple) saves a module whole. A full-rank
    adapter read back as `base+adapter` (and by PEFT) gives the fine-tune; so does one that leaves out the layers
    `sv_epsilon` takes to rank 0 (mergekit writes them at rank 0, which PEFT refuses)."""
    import json as _json

    from safetensors.numpy import load_file

    from mnlu_jax.cli import main
    from mnlu_jax.merge.extract_lora import extract_lora
    from mnlu_jax.weights.named_tensors import NamedTensors

    if shutil.which("mergekit-extract-lora") is None:
        pytest.skip("mergekit not installed")
    base = make_tiny_hf(tmp_path / "base", seed=0)
    ft = make_tiny_hf(tmp_path / "ft", seed=1)
    lbase = make_tiny_hf(tmp_path / "lbase", model_type="llama", seed=0)
    lft = make_tiny_hf(tmp_path / "lft", model_type="llama", seed=1)
    low = _low_rank_fine_tune(base, tmp_path / "low", {"q_proj": 1, "_proj": 2})
    cases = {"mistral": (ft, base, ["--max-rank", "4"], ["--max-rank", "4"]),
             "llama": (lft, lbase, ["--max-rank", "3", "--embed-lora", "--no-distribute-scale", "-e", "o_proj"],
                       ["--max-rank", "3", "--embed-lora", "--no-distribute-scale", "-e", "o_proj"]),
             "low": (low, base, ["--max-rank", "8", "--sv-epsilon", "1e-3"],
                     ["--max-rank", "8", "--sv-epsilon", "1e-3"])}
    for name, (model, ref, theirs, ours) in cases.items():
        subprocess.run(["mergekit-extract-lora", "--model", str(model), "--base-model", str(ref), "--out-path",
                        str(tmp_path / f"mk_{name}"), *theirs], check=True, capture_output=True)
        assert main(["extract-lora", "--model", str(model), "--base", str(ref), "--out",
                     str(tmp_path / f"ours_{name}"), *ours]) == 0
        mine = load_file(tmp_path / f"ours_{name}" / "adapter_model.safetensors")
        ref_t = load_file(tmp_path / f"mk_{name}" / "adapter_model.safetensors")
        assert set(mine) == set(ref_t), (name, set(mine) ^ set(ref_t))
        for key, value in mine.items():
            if "lora_A" in key or "lora_embedding_A" in key:
                b_key = key.replace("_A", "_B")
                np.testing.assert_allclose(mine[b_key] @ value, ref_t[b_key] @ ref_t[key], atol=2e-5,
                                           err_msg=f"{name}: {key}")
                assert value.shape == ref_t[key].shape, (name, key)
            elif "lora_B" not in key and "lora_embedding_B" not in key:
                np.testing.assert_array_equal(value, ref_t[key], err_msg=f"{name}: {key}")
        configs = [_json.loads((tmp_path / f"{who}_{name}" / "adapter_config.json").read_text())
                   for who in ("ours", "mk")]
        for c in configs:
            c["target_modules"] = sorted(c["target_modules"])
            c["modules_to_save"] = sorted(c["modules_to_save"])
        assert configs[0] == configs[1], name
    extract_lora(ft, base, tmp_path / "saved", max_rank=2, save_modules=("up_proj",), progress=False)
    saved = load_file(tmp_path / "saved" / "adapter_model.safetensors")
    np.testing.assert_array_equal(saved["base_model.model.model.layers.1.mlp.up_proj.weight"],
                                  _flat(ft)["model.layers.1.mlp.up_proj.weight"])
    assert not any("up_proj.lora" in k for k in saved)
    assert "up_proj" in _json.loads((tmp_path / "saved" / "adapter_config.json").read_text())["modules_to_save"]
    low_config = _json.loads((tmp_path / "ours_low" / "adapter_config.json").read_text())
    assert low_config["r"] == 2 and set(low_config["rank_pattern"].values()) == {1} and \
        all("q_proj" in m for m in low_config["rank_pattern"])
    # the randomized SVD: exact where the update's rank is below its sketch, within 0.2 % of the best cut elsewhere
    extract_lora(low, base, tmp_path / "low_randomized", max_rank=8, sv_epsilon=1e-3, svd="randomized",
                 progress=False)
    extract_lora(ft, base, tmp_path / "randomized", max_rank=4, svd="randomized", progress=False)
    assert _json.loads((tmp_path / "low_randomized" / "adapter_config.json").read_text()) == low_config
    pairs = {"low": ("ours_low", "low_randomized", low), "mistral": ("ours_mistral", "randomized", ft)}
    b_, w_ = _flat(base), {k: _flat(v[2]) for k, v in pairs.items()}
    for case, (exact_dir, randomized_dir, _) in pairs.items():
        exact, fast = (load_file(tmp_path / d / "adapter_model.safetensors") for d in (exact_dir, randomized_dir))
        assert set(exact) == set(fast)
        for key in (k for k in exact if ".lora_A." in k):
            b_key, tensor = key.replace(".lora_A.", ".lora_B."), key[len("base_model.model."):].replace(
                ".lora_A.", ".")
            delta = w_[case][tensor] - b_[tensor]
            best, got = (np.linalg.norm(delta - t[b_key] @ t[key]) for t in (exact, fast))
            assert got <= best * 1.002 + 1e-6, (case, key, got, best)
    # at full rank the adapter is the whole update: read back as base+adapter, and by PEFT, it is the fine-tune
    extract_lora(ft, base, tmp_path / "full", max_rank=64, progress=False)
    want = _flat(ft)
    back = NamedTensors(f"{base}+{tmp_path / 'full'}")
    for n, w in want.items():
        np.testing.assert_allclose(np.asarray(back.get(n), np.float32), w, atol=1e-5, err_msg=n)
    peft = pytest.importorskip("peft")
    import transformers

    merged = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base),
                                            tmp_path / "full").merge_and_unload()
    for n, w in merged.state_dict().items():
        np.testing.assert_allclose(w.detach().numpy(), want[n], atol=1e-5, err_msg=n)
    # a layer whose update falls below sv_epsilon is left out: mergekit writes it as a rank-0 LoRA, which PEFT refuses
    only_q = _low_rank_fine_tune(base, tmp_path / "only_q", {"q_proj": 1})
    subprocess.run(["mergekit-extract-lora", "--model", str(only_q), "--base-model", str(base), "--out-path",
                    str(tmp_path / "mk_only_q"), "--max-rank", "4", "--sv-epsilon", "1e-3"], check=True,
                   capture_output=True)
    assert set(_json.loads((tmp_path / "mk_only_q" / "adapter_config.json").read_text())["rank_pattern"].values()) \
        == {0}
    with pytest.raises(ValueError, match=r"`r` should be a positive integer value but the value passed is 0"):
        peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base), tmp_path / "mk_only_q")
    extract_lora(only_q, base, tmp_path / "only_q_lora", max_rank=4, sv_epsilon=1e-3, progress=False)
    config = _json.loads((tmp_path / "only_q_lora" / "adapter_config.json").read_text())
    assert (config["r"], config["target_modules"], config["rank_pattern"]) == (1, ["q_proj"], {})
    merged = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base),
                                            tmp_path / "only_q_lora").merge_and_unload()
    want = _flat(only_q)
    for n, w in merged.state_dict().items():
        np.testing.assert_allclose(w.detach().numpy(), want[n], atol=1e-5, err_msg=n)
    # refusals name the field or tensor, and nothing is written
    other = make_tiny_hf(tmp_path / "other", seed=2, intermediate_size=64)
    for kwargs, message in (({"max_rank": 0}, r"max_rank: expected a positive rank, got 0"),
                            ({"include": ("(",)}, r"include '\(': not a regular expression"),
                            ({"exclude": (".",)}, r"extract-lora: no tensor of .*ft is extracted or saved"),
                            ({"base": other}, r"model\.layers\.0\.mlp\.down_proj\.weight: \(64, 96\) in .*ft but "
                                              r"\(64, 64\) in .*other; a LoRA extracts")):
        with pytest.raises(ValueError, match=message):
            extract_lora(ft, kwargs.pop("base", base), tmp_path / "never", progress=False, **kwargs)
        assert not (tmp_path / "never").exists()
    with pytest.raises(FileExistsError, match="full: output directory exists"):
        extract_lora(ft, base, tmp_path / "full", progress=False)
