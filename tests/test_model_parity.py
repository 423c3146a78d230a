"""Golden-logit parity with transformers (MaxText style) and conversion round trips (Levanter style)."""

import json
import shutil

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from mnlu_jax.model.mistral import forward
from mnlu_jax.weights.convert import (
    flax_to_hf, hf_to_flax, load_model, load_params, params_from_tensors, TensorSource,
)
from mnlu_jax.weights.safetensors_io import SafetensorsCheckpoint
from tests.conftest import LLAMA3_ROPE, make_tiny_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def hf_logits(model_dir, ids, attention_mask=None, position_ids=None):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32,
                                                              attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=None if attention_mask is None else torch.tensor(attention_mask),
                    position_ids=None if position_ids is None else torch.tensor(position_ids))
    return out.logits.numpy()


# head_dim 32 with hidden 64 and 4 heads: an explicit head_dim unlike hidden / heads (Mistral Nemo: 128 vs 160)
@pytest.mark.parametrize("model_type,extra", [("mistral", {}), ("llama", {}), ("mistral", {"head_dim": 32})],
                         ids=["mistral", "llama", "mistral-head_dim"])
def test_logits_match_transformers_unpadded(tmp_path, model_type, extra):
    d = make_tiny_hf(tmp_path / "hf", model_type=model_type, **extra)
    params, config, _ = load_model(d)
    assert config.model_type == model_type and config.dim_per_head == extra.get("head_dim", 16)
    if model_type == "mistral":
        assert config.sliding_window == 8
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 128, size=(2, 24))  # 24 > window 8: the window matters
    ref = hf_logits(d, ids)
    ours, _ = forward(jax.tree_util.tree_map(jnp.asarray, params), config, jnp.asarray(ids))
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_sliding_window_changes_logits(tmp_path):
    """Guard against a window that is silently ignored: no window must give different logits."""
    d = make_tiny_hf(tmp_path / "hf")
    params, config, _ = load_model(d)
    ids = jnp.asarray(np.random.default_rng(1).integers(3, 128, size=(1, 24)))
    a, _ = forward(params, config, ids)
    b, _ = forward(params, config.replace(sliding_window=None), ids)
    assert not np.allclose(np.asarray(a[:, -1]), np.asarray(b[:, -1]), atol=1e-4)
    np.testing.assert_allclose(np.asarray(a[:, :8]), np.asarray(b[:, :8]), rtol=1e-6, atol=1e-6)


def test_logits_match_transformers_left_padded(tiny_mistral_dir):
    params, config, _ = load_model(tiny_mistral_dir)
    rng = np.random.default_rng(2)
    lens = [20, 13, 6]
    t = max(lens)
    ids = np.zeros((3, t), np.int64)
    mask = np.zeros((3, t), np.int64)
    pos = np.zeros((3, t), np.int64)
    for i, n in enumerate(lens):
        ids[i, t - n:] = rng.integers(3, 128, size=n)
        mask[i, t - n:] = 1
        pos[i, t - n:] = np.arange(n)
    ref = hf_logits(tiny_mistral_dir, ids, mask, pos)
    ours, _ = forward(params, config, jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask))
    ours = np.asarray(ours)
    for i, n in enumerate(lens):
        r, o = ref[i, t - n:], ours[i, t - n:]
        np.testing.assert_allclose(o, r, rtol=1e-5, atol=1e-5 * np.abs(r).max())
        # and the padded row equals the same prompt run alone
        alone, _ = forward(params, config, jnp.asarray(ids[i:i + 1, t - n:]))
        np.testing.assert_allclose(o, np.asarray(alone)[0], rtol=1e-5, atol=1e-6)


def test_packed_segments_do_not_attend_across(tiny_mistral_dir):
    params, config, _ = load_model(tiny_mistral_dir)
    rng = np.random.default_rng(3)
    a, b = rng.integers(3, 128, size=7), rng.integers(3, 128, size=9)
    packed = np.concatenate([a, b, [0, 0]])[None]
    seg = np.array([[1] * 7 + [2] * 9 + [0, 0]])
    pos = np.array([list(range(7)) + list(range(9)) + [0, 0]])
    out, _ = forward(params, config, jnp.asarray(packed), jnp.asarray(pos), jnp.asarray(seg))
    la, _ = forward(params, config, jnp.asarray(a[None]))
    lb, _ = forward(params, config, jnp.asarray(b[None]))
    np.testing.assert_allclose(np.asarray(out)[0, :7], np.asarray(la)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out)[0, 7:16], np.asarray(lb)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("model_type", ["mistral", "llama"])
def test_round_trip_bitwise(tmp_path, dtype, model_type):
    src = make_tiny_hf(tmp_path / "hf", model_type=model_type, dtype=dtype)
    assert (src / "model.safetensors.index.json").exists()  # sharded input
    hf_to_flax(src, tmp_path / "ours", progress=False)
    flax_to_hf(tmp_path / "ours", tmp_path / "back", max_shard_bytes=100_000, progress=False)
    a, b = SafetensorsCheckpoint(src), SafetensorsCheckpoint(tmp_path / "back")
    assert (tmp_path / "back" / "model.safetensors.index.json").exists()
    expected = set(a.names()) - ({"lm_head.weight"} if model_type == "llama" else set())
    assert set(b.names()) == expected
    for n in expected:
        x, y = np.asarray(a.get(n)), np.asarray(b.get(n))
        assert x.dtype == y.dtype and x.shape == y.shape, n
        assert x.tobytes() == y.tobytes(), n
    cfg = json.loads((tmp_path / "back" / "config.json").read_text())
    assert cfg["torch_dtype"] == dtype
    # transformers loads the export and gives the same logits as the original
    ids = np.random.default_rng(0).integers(3, 128, size=(1, 12))
    np.testing.assert_array_equal(hf_logits(tmp_path / "back", ids), hf_logits(src, ids))


def test_several_eos_ids_load_and_export(tmp_path):
    """Llama 3 configs list several EOS ids: the config stays hashable (a static jit argument; a list made that
    fail) and the export writes the list back."""
    src = make_tiny_hf(tmp_path / "hf", model_type="llama", eos_token_id=[2, 3])
    params, config, _ = load_model(src)
    assert config.eos_ids == (2, 3)
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 128, size=(1, 6)))
    logits = jax.jit(lambda p, x, config: forward(p, config, x)[0], static_argnames="config")(params, ids, config)
    np.testing.assert_allclose(np.asarray(logits), hf_logits(src, np.asarray(ids)), rtol=1e-5, atol=1e-5)
    hf_to_flax(src, tmp_path / "ours", progress=False)
    flax_to_hf(tmp_path / "ours", tmp_path / "back", progress=False)
    for name in ("config.json", "generation_config.json"):
        assert json.loads((tmp_path / "back" / name).read_text())["eos_token_id"] == [2, 3], name
    assert transformers.AutoConfig.from_pretrained(tmp_path / "back").eos_token_id == [2, 3]


def bin_copy(src, out, legacy=False):
    """`src` (an HF safetensors directory) re-saved as `pytorch_model.bin` + config.json at `out` (`legacy`: in
    torch's pre-1.6 format, which older Hub checkpoints use and which cannot be memory-mapped)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(src)
    out.mkdir()
    torch.save(model.state_dict(), out / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
    (out / "config.json").write_text((src / "config.json").read_text())
    return out


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_bin_checkpoint(tmp_path, legacy):
    src = make_tiny_hf(tmp_path / "hf")
    binary = bin_copy(src, tmp_path / "bin", legacy=legacy)
    p1, _, _ = load_model(src)
    p2, _, _ = load_model(binary)
    for x, y in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_consolidated_safetensors_beside_hf_files_are_not_read(tmp_path):
    """Mistral's repositories hold `consolidated.safetensors` (mistral-inference names) next to HF's files; without
    an index naming the HF shards (removed here), the HF files are read."""
    from mnlu_jax.weights.safetensors_io import INDEX_NAME, write_sharded

    src = make_tiny_hf(tmp_path / "hf")
    (src / INDEX_NAME).unlink()
    st = SafetensorsCheckpoint(src)
    native = {n.replace("model.", "").replace("self_attn.q_proj", "attention.wq"): np.asarray(st.get(n))
              for n in st.names()}
    expected, _, _ = load_model(src)
    write_sharded(tmp_path / "native", [(n, v.shape, v.dtype) for n, v in native.items()], native.__getitem__)
    next((tmp_path / "native").glob("*.safetensors")).rename(src / "consolidated.safetensors")
    got, _, _ = load_model(src)
    for x, y in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(got)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for f in src.glob("model*.safetensors"):
        f.unlink()
    with pytest.raises(ValueError, match=r"layers\.0\.attention\.wq\.weight"):  # alone, it is read and refused
        load_model(src)


def test_a_sharded_index_that_contradicts_its_shards_is_named(tmp_path, caplog):
    """The index says where transformers looks for each tensor; one that points elsewhere, a tensor stored twice (the
    later copy would silently win) or shards the index leaves out are named."""
    import logging
    import shutil

    from mnlu_jax.weights.safetensors_io import INDEX_NAME, write_sharded

    src = make_tiny_hf(tmp_path / "hf")
    index = json.loads((src / INDEX_NAME).read_text())
    wm = index["weight_map"]
    a, b = sorted(set(wm.values()))[:2]
    name = next(n for n, f in wm.items() if f == a)
    bad = tmp_path / "moved"
    shutil.copytree(src, bad)
    (bad / INDEX_NAME).write_text(json.dumps({**index, "weight_map": {**wm, name: b}}))
    with pytest.raises(ValueError, match=rf"{INDEX_NAME}: 1 tensors listed in the wrong shard, e.g. '{name}' in {b}, "
                                         rf"which is in {a}"):
        SafetensorsCheckpoint(bad)
    twice = tmp_path / "twice"
    shutil.copytree(src, twice)
    value = np.asarray(SafetensorsCheckpoint(src).get(name))
    write_sharded(tmp_path / "extra", [(name, value.shape, value.dtype)], lambda n: value)
    next((tmp_path / "extra").glob("*.safetensors")).rename(twice / "zz-extra.safetensors")
    (twice / INDEX_NAME).write_text(json.dumps({**index, "weight_map": {**wm, "x": "zz-extra.safetensors"}}))
    with pytest.raises(ValueError, match=rf"tensor '{name}' is in both {a} and zz-extra\.safetensors"):
        SafetensorsCheckpoint(twice)
    (twice / INDEX_NAME).write_text(json.dumps(index))  # the extra shard unlisted: not read, and said so
    with caplog.at_level(logging.WARNING, logger="mnlu_jax.weights.safetensors_io"):
        SafetensorsCheckpoint(twice)
    assert "shards ['zz-extra.safetensors'] are not in" in caplog.text


def test_bad_inputs_name_the_tensor(tmp_path):
    src = make_tiny_hf(tmp_path / "hf")
    ts = TensorSource(src)
    items = dict(ts.items())
    bad = dict(items)
    bad.pop("model.layers.1.mlp.up_proj.weight")
    with pytest.raises(ValueError, match="missing tensors.*model.layers.1.mlp.up_proj.weight"):
        params_from_tensors(ts.config, bad.items())
    bad = dict(items)
    bad["model.layers.0.self_attn.q_proj.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match=r"q_proj.weight.*shape \(3, 3\), expected \(64, 64\)"):
        params_from_tensors(ts.config, bad.items())
    bad = dict(items)
    bad["model.layers.0.self_attn.q_proj.bias"] = np.zeros((64,), np.float32)
    with pytest.raises(ValueError, match="unexpected tensors.*q_proj.bias"):
        params_from_tensors(ts.config, bad.items())
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="config.json: unsupported model_type 'gpt2'"):
        hf_to_flax(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_hf_to_flax_checks_every_tensor_before_writing(tmp_path):
    """The leaf-by-leaf conversion checks names and shapes up front: a missing, mis-shaped or unknown tensor is an
    error naming it, and nothing is written."""
    from mnlu_jax.weights.safetensors_io import write_sharded

    src = make_tiny_hf(tmp_path / "hf")
    st = SafetensorsCheckpoint(src)
    cases = {
        "missing": ({"model.layers.1.mlp.up_proj.weight": None},
                    r"tensor model\.layers\.1\.mlp\.up_proj\.weight missing"),
        "shape": ({"model.layers.0.self_attn.q_proj.weight": np.zeros((3, 3), np.float32)},
                  r"q_proj\.weight has shape \(3, 3\), expected \(64, 64\)"),
        "unknown": ({"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)},
                    r"tensors a mistral model does not have: \['model\.layers\.0\.self_attn\.q_proj\.bias'\]"),
    }
    for case, (change, message) in cases.items():
        tensors = {n: np.asarray(st.get(n)) for n in st.names()}
        for n, v in change.items():
            if v is None:
                tensors.pop(n)
            else:
                tensors[n] = v
        d = tmp_path / case
        write_sharded(d, [(n, v.shape, v.dtype) for n, v in tensors.items()], tensors.__getitem__)
        shutil.copy2(src / "config.json", d / "config.json")
        with pytest.raises(ValueError, match=message):
            hf_to_flax(d, tmp_path / f"out_{case}", progress=False)
        assert not (tmp_path / f"out_{case}").exists() and not list(tmp_path.glob(f".out_{case}.tmp-*"))


def test_hf_to_flax_from_bin_and_cast_equals_in_memory_conversion(tmp_path):
    """The checkpoint written leaf by leaf holds what the in-memory conversion gives, for .bin input and with a
    dtype cast (safetensors and GGUF inputs are covered by the round trips)."""
    src = make_tiny_hf(tmp_path / "hf")
    binary = bin_copy(src, tmp_path / "bin")
    for source, dtype in ((binary, None), (src, "bfloat16")):
        out = hf_to_flax(source, tmp_path / f"ours_{source.name}", dtype=dtype, progress=False)
        expected, _, _ = load_model(source, dtype=dtype)
        got = load_params(out / "params")
        assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(expected)
        for x, y in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(got)):
            assert np.asarray(x).dtype == np.asarray(y).dtype
            assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
        assert json.loads((out / "config.json").read_text())["torch_dtype"] == (dtype or "float32")


def test_save_params_holds_one_lazy_parameter_at_a_time(tmp_path):
    """`save_params` writes numpy leaves without copying them and builds `LazyParam`s one at a time: Python-side
    allocations (numpy's, traced by tracemalloc) peak at about one parameter, where Orbax's defaults copy all."""
    import tracemalloc

    from mnlu_jax.weights.convert import LazyParam, save_params

    n, shape = 8, (1024, 1024)  # 4 MiB each in float32
    nbytes = 4 * shape[0] * shape[1]
    save_params(tmp_path / "warm-up", {"w": np.zeros(2, np.float32)})  # Orbax's lazy imports are not traced

    def saved_with_peak(name: str, tree: dict) -> float:
        tracemalloc.start()
        try:
            save_params(tmp_path / name, tree)
            peak = tracemalloc.get_traced_memory()[1] / nbytes
        finally:
            tracemalloc.stop()
        restored = load_params(tmp_path / name)
        for i in range(n):
            np.testing.assert_array_equal(np.asarray(restored[f"p{i}"]), np.full(shape, i, np.float32))
        return peak

    lazy = {f"p{i}": LazyParam(shape, np.float32, lambda i=i: np.full(shape, i, np.float32)) for i in range(n)}
    assert (peak := saved_with_peak("lazy", lazy)) < 2.5, f"peak {peak:.1f} parameters in memory"
    arrays = {f"p{i}": np.full(shape, i, np.float32) for i in range(n)}
    assert (peak := saved_with_peak("arrays", arrays)) < 1.5, f"numpy leaves copied: peak {peak:.1f} parameters"
    with pytest.raises(ValueError, match=r"built \(2,\) float32, declared \(3,\) float32"):
        save_params(tmp_path / "wrong", {"w": LazyParam((3,), np.float32, lambda: np.zeros(2, np.float32))})


@pytest.mark.parametrize("shape", [(1040, 1030), (2049, 517), (17, 70000)])
def test_blocked_transpose_equals_numpy(shape):
    """The conversions' transpose (16-row blocks over threads, above 2^20 elements; the tiny test models stay
    below that) gives numpy's bytes: odd row counts, a cast, and a layer of a stacked buffer as the target."""
    import ml_dtypes

    from mnlu_jax.weights.names import transpose_into, transposed

    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    for src in (x, x.astype(ml_dtypes.bfloat16)):
        got = transposed(src)
        assert got.flags.c_contiguous and got.dtype == src.dtype
        assert got.tobytes() == np.ascontiguousarray(src.T).tobytes()
    stacked = np.zeros((3,) + shape[::-1], ml_dtypes.bfloat16)
    transpose_into(stacked[1], x)  # float32 in, bfloat16 out: cast as numpy casts
    assert stacked[1].tobytes() == np.ascontiguousarray(x.T.astype(ml_dtypes.bfloat16)).tobytes()
    assert not stacked[0].any() and not stacked[2].any()
    with pytest.raises(ValueError, match=r"transpose of \(2, 3\) into \(2, 3\)"):
        transpose_into(np.zeros((2, 3)), np.zeros((2, 3)))


def test_truncated_safetensors_is_an_error(tmp_path):
    src = make_tiny_hf(tmp_path / "hf")
    shard = sorted(src.glob("*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{shard.name}.*truncated"):
        hf_to_flax(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_orbax_checkpoint_restores_in_bf16(tmp_path, tiny_mistral_dir):
    hf_to_flax(tiny_mistral_dir, tmp_path / "ours", progress=False)
    p = load_params(tmp_path / "ours" / "params", dtype="bfloat16")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(p))


def test_missing_source_and_offline_hub_id_are_clear_errors(tmp_path, monkeypatch):
    from mnlu_jax.weights.convert import resolve_source

    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        resolve_source(tmp_path / "nope")
    import huggingface_hub

    def offline(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="BioMistral/BioMistral-7B-DARE: not a local path, and downloading"):
        resolve_source("BioMistral/BioMistral-7B-DARE")
    from mnlu_jax.weights.convert import load_tokenizer

    (tmp_path / "weights_only").mkdir()  # transformers' message named neither the folder nor the files
    (tmp_path / "weights_only" / "generation_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"weights_only: no tokenizer files \(expected tokenizer\.json"):
        load_tokenizer(tmp_path / "weights_only")


def test_flax_module_wraps_the_same_pytree_with_logical_axes(tiny_mistral_dir):
    import flax.linen as nn

    from mnlu_jax.model.flax_module import MistralForCausalLM
    from mnlu_jax.sharding import DEFAULT_RULES, make_mesh

    params, config, _ = load_model(tiny_mistral_dir)
    model = MistralForCausalLM(config)
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 128, size=(2, 12)))
    a, _ = model.apply({"params": params}, ids)
    b, _ = forward(params, config, ids)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    variables = model.init(jax.random.PRNGKey(0), ids)
    specs = nn.get_partition_spec(variables)
    assert tuple(specs["params"]["model"]["layers"]["mlp"]["up_proj"]["kernel"]) == ("layers", "embed", "mlp")
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    sh = nn.logical_to_mesh_sharding(specs, mesh, DEFAULT_RULES)
    assert tuple(sh["params"]["model"]["layers"]["mlp"]["up_proj"]["kernel"].spec) == (None, "fsdp", "tensor")
    assert jax.tree_util.tree_structure(nn.unbox(variables)["params"]) == jax.tree_util.tree_structure(params)


@pytest.mark.parametrize("window", [None, 4])
def test_flash_attention_mask_translation(window):
    """The cuDNN path's arguments (segment mask + index causality + left window) select exactly the keys of our
    position-based mask on packed rows. Checked through jax.nn.dot_product_attention's XLA implementation, which
    takes the same arguments (cuDNN itself needs an NVIDIA GPU: benchmarks/train_mfu.py runs it there)."""
    from mnlu_jax.model.mistral import attend, attend_flash, attention_mask

    rng = np.random.default_rng(0)
    b, t, h, kvh, hd = 2, 14, 4, 2, 8
    q = jnp.asarray(rng.normal(size=(b, t, h, hd)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, t, kvh, hd)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, t, kvh, hd)), jnp.float32)
    seg = jnp.asarray([[1] * 6 + [2] * 5 + [0] * 3, [1] * 14])
    pos = jnp.asarray([list(range(6)) + list(range(5)) + [0] * 3, list(range(14))])
    ref = np.asarray(attend(q, k, v, attention_mask(pos, seg, pos, seg, window)))
    got = np.asarray(attend_flash(q, k, v, seg, seg, window, implementation="xla"))
    real = np.asarray(seg) > 0
    np.testing.assert_allclose(got[real], ref[real], rtol=1e-5, atol=1e-6)
    assert np.isfinite(got).all()  # padding rows attend among themselves: no empty softmax, no NaN
    other = np.asarray(attend_flash(q, k, v, seg, seg, 3 if window else 5, implementation="xla"))
    assert np.abs(other[real] - ref[real]).max() > 1e-3  # a different window is visibly different


@pytest.mark.parametrize("window", [None, 7, 40])
def test_causal_blocks_equal_full_attention(window):
    """Blocked cache-free attention (each query block against the keys it can see) = the full masked product on
    packed, left-padded and right-padded rows, with ragged last blocks and windows shorter and longer than a block."""
    from mnlu_jax.model.mistral import attend, attend_causal_blocks, attention_mask

    rng = np.random.default_rng(0)
    b, t, h, kvh, hd = 3, 75, 4, 2, 8
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, hd)), jnp.float32) for n in (h, kvh, kvh))
    seg = np.zeros((b, t), np.int32)
    pos = np.zeros((b, t), np.int32)
    seg[0, :30], seg[0, 30:61], pos[0, :30], pos[0, 30:61] = 1, 2, np.arange(30), np.arange(31)  # packed + padding
    seg[1, 11:], pos[1, 11:] = 1, np.arange(t - 11)                                                # left-padded
    seg[2, :50], pos[2, :50] = 1, np.arange(50)                                                    # right-padded
    seg, pos = jnp.asarray(seg), jnp.asarray(pos)
    mask = attention_mask(pos, seg, pos, seg, window)
    ref = np.asarray(attend(q, k, v, mask))
    real = np.asarray(seg) > 0
    for max_blocks in (1, 2, 16):  # block = max(32, ceil(t / max_blocks)): 1, 2 or 3 blocks (the last ragged)
        got = np.asarray(attend_causal_blocks(q, k, v, mask, window, max_blocks=max_blocks))
        np.testing.assert_allclose(got[real], ref[real], rtol=1e-5, atol=1e-6)
        assert np.isfinite(got).all()


def test_unknown_attention_impl_is_an_error(tiny_mistral_dir):
    params, config, _ = load_model(tiny_mistral_dir)
    with pytest.raises(ValueError, match="attention_impl 'flash'"):
        forward(params, config.replace(attention_impl="flash"), jnp.ones((1, 4), jnp.int32))


@pytest.mark.parametrize("fuse", [False, True])
def test_unstacked_layers_give_the_same_logits(tiny_mistral_dir, fuse):
    from mnlu_jax.model.mistral import unstack_layers

    params, config, _ = load_model(tiny_mistral_dir)
    ids = jnp.asarray(np.random.default_rng(1).integers(3, 128, size=(2, 19)))
    ref, _ = forward(params, config, ids)
    unstacked = unstack_layers(params, fuse=fuse)
    assert len(unstacked["model"]["layers"]) == config.num_hidden_layers
    assert ("qkv_proj" in unstacked["model"]["layers"][0]["self_attn"]) == fuse
    got, _ = forward(unstacked, config, ids)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type,rope", [
    ("mistral", dict(rope_theta=1e6)),  # Mistral v0.2+ base; transformers 5 writes it under rope_parameters only
    ("llama", LLAMA3_ROPE),  # Llama 3.1+
    ("llama", dict(rope_scaling={"rope_type": "linear", "factor": 4.0})),
], ids=["mistral-theta-1e6", "llama3-scaling", "linear-scaling"])
def test_rope_variants_match_transformers(tmp_path, model_type, rope):
    d = make_tiny_hf(tmp_path / "hf", model_type=model_type, **rope)
    params, config, _ = load_model(d)
    assert config.rope_theta == rope.get("rope_theta", 10000.0)
    assert dict(config.rope_scaling or ()) == (rope.get("rope_scaling") or {})
    ids = np.random.default_rng(4).integers(3, 128, size=(2, 40))
    ref = hf_logits(d, ids)
    ours, _ = forward(params, config, jnp.asarray(ids))
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # the variant is not a no-op on these inputs: plain RoPE gives other logits
    plain, _ = forward(params, config.replace(rope_theta=10000.0, rope_scaling=None), jnp.asarray(ids))
    assert not np.allclose(np.asarray(plain), ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    # an export keeps the RoPE settings: transformers reads them back and gives the source's logits
    hf_to_flax(d, tmp_path / "ours", progress=False)
    flax_to_hf(tmp_path / "ours", tmp_path / "back", progress=False)
    np.testing.assert_allclose(hf_logits(tmp_path / "back", ids), ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    # the export uses the legacy keys (rope_theta + rope_scaling), which we read back to the same settings
    exported = json.loads((tmp_path / "back" / "config.json").read_text())
    assert "rope_parameters" not in exported and exported["rope_theta"] == config.rope_theta
    _, back, _ = load_model(tmp_path / "back")
    assert (back.rope_theta, back.rope_scaling) == (config.rope_theta, config.rope_scaling)


def test_rope_frequencies_equal_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from mnlu_jax.model.config import ModelConfig
    from mnlu_jax.model.mistral import rope_frequencies

    llama3 = LLAMA3_ROPE["rope_scaling"]
    for scaling in (llama3, {**llama3, "original_max_position_embeddings": 8192, "factor": 32.0},
                    {"rope_type": "linear", "factor": 2.0}):
        hf = transformers.LlamaConfig(hidden_size=512, num_attention_heads=4, max_position_embeddings=131072,
                                      rope_theta=5e5, rope_scaling=dict(scaling))
        ref, _ = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf, "cpu")
        ours = rope_frequencies(ModelConfig.from_hf_dict(hf.to_dict()))
        np.testing.assert_array_equal(ours, ref.numpy())


@pytest.mark.parametrize("fields,message", [
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "RoPE type 'yarn' is not supported"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "RoPE type 'dynamic' is not supported"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "needs .*low_freq_factor"),
    ({"rope_theta": 1e4, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}, "conflicting RoPE bases"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
     "partial_rotary_factor 0.5 is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
])
def test_unsupported_config_settings_are_clear_errors(tmp_path, fields, message):
    from mnlu_jax.model.config import ModelConfig

    cfg = {"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
           "num_hidden_layers": 2, "num_attention_heads": 4, **fields}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=f"config.json.*{message}"):
        ModelConfig.from_json_file(path)


def _write_gguf(path, rope_freqs: bool, scaling: dict | None = None):
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in (("vocab_size", 32), ("embedding_length", 16), ("feed_forward_length", 32),
                       ("block_count", 1), ("attention.head_count", 2), ("attention.head_count_kv", 1)):
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.rope.freq_base", 1e4)
    for key, value in (scaling or {}).items():
        (w.add_string if isinstance(value, str) else w.add_float32)(f"llama.rope.scaling.{key}", value)
    w.add_tensor("token_embd.weight", np.zeros((32, 16), np.float32))
    if rope_freqs:
        w.add_tensor("rope_freqs.weight", np.ones(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_rope_scaling(tmp_path):
    from mnlu_jax.weights.gguf_io import gguf_config

    cfg = gguf_config(_write_gguf(tmp_path / "linear.gguf", False, {"type": "linear", "factor": 4.0}))
    assert dict(cfg.rope_scaling) == {"rope_type": "linear", "factor": 4.0}
    assert gguf_config(_write_gguf(tmp_path / "plain.gguf", False)).rope_scaling is None
    # llama.cpp's per-frequency factors (Llama 3.1 GGUFs) cannot be turned back into rope_scaling: refused, not
    # skipped (skipping them would rotate every position wrongly)
    with pytest.raises(ValueError, match="freqs.gguf.*rope_freqs.weight"):
        gguf_config(_write_gguf(tmp_path / "freqs.gguf", True))
    with pytest.raises(ValueError, match="yarn.gguf.*RoPE type 'yarn' is not supported"):
        gguf_config(_write_gguf(tmp_path / "yarn.gguf", False, {"type": "yarn", "factor": 4.0}))


def _spm_tokenizer(out_dir, vocab_size: int):
    """A SentencePiece-style tokenizer.json (Mistral 7B / Llama 2): `▁` for spaces, byte fallback, <s> prepended."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    texts = ["Patients with renal failure received 20 mg of aspirin daily.", "BRCA1 mutations were detected."] * 20
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                       show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>").save_pretrained(
        str(out_dir))


@pytest.mark.parametrize("model_type,tokenizer,tensor_type", [("mistral", "spm", "f32"), ("llama", "byte_level", "f16"),
                                                             ("mistral", "byte_level", "q8_0")])
def test_gguf_export_round_trips(tmp_path, model_type, tokenizer, tensor_type):
    """flax-to-gguf: our reader gives back the config and the weights (exactly in f32, within the type's rounding
    otherwise), and transformers' GGUF loader gives the tokenizer's ids and the model's logits."""
    from mnlu_jax.cli import main
    from mnlu_jax.data.tiny_tokenizer import train_tiny_tokenizer
    from mnlu_jax.weights.convert import tensors_from_params
    from mnlu_jax.weights.gguf_io import gguf_tokenizer

    src = make_tiny_hf(tmp_path / "hf", model_type=model_type, vocab_size=320)
    if tokenizer == "spm":
        _spm_tokenizer(src, 300)
    else:
        train_tiny_tokenizer(["Patients with renal failure received 20 mg of aspirin daily."] * 20, 300, src)
    out = tmp_path / "model.gguf"
    assert main(["convert", "flax-to-gguf", str(src), str(out), "--gguf-type", tensor_type]) == 0
    a, ca, _ = load_model(src)
    b, cb, tok_src = load_model(out)
    # written as the llama architecture (read back as Mistral when it has a window); GGUF keeps eps in float32
    assert cb == ca.replace(rms_norm_eps=float(np.float32(ca.rms_norm_eps)))
    ta, tb = dict(tensors_from_params(a, ca)), dict(tensors_from_params(b, cb))
    assert set(ta) == set(tb)
    tolerance = {"f32": 0.0, "f16": 1e-3, "q8_0": 2e-2}[tensor_type]
    for n in ta:
        assert np.abs(ta[n] - tb[n]).max() <= tolerance * max(1.0, np.abs(ta[n]).max()), n
        if ta[n].ndim == 1 or tensor_type == "f32":
            assert ta[n].tobytes() == tb[n].tobytes(), n
    text = "Patients with  renal failure: 20 mg, ünïcödé 日本.\nNext"
    original, exported = transformers.AutoTokenizer.from_pretrained(src), gguf_tokenizer(out)
    fields = gguf_fields(out)  # both written: llama.cpp's defaults differ by tokenizer (BOS on for `llama`)
    assert (fields["tokenizer.ggml.add_bos_token"], fields["tokenizer.ggml.add_eos_token"]) == (tokenizer == "spm", False)
    assert exported(text)["input_ids"] == original(text)["input_ids"]
    assert exported.decode(exported(text)["input_ids"]) == original.decode(original(text)["input_ids"])
    if tensor_type == "f32":
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name,
                                                               dtype=torch.float32)
        ids = torch.tensor([original(text)["input_ids"]])
        # transformers reads a llama GGUF without a sliding window (llama.cpp too): equal up to the window
        n = ca.sliding_window or ids.shape[1]
        with torch.no_grad():
            ref = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)(ids).logits
            np.testing.assert_allclose(hf(ids).logits.numpy()[:, :n], ref.numpy()[:, :n], atol=1e-5)


def test_gguf_export_refuses_what_it_cannot_write(tmp_path):
    from mnlu_jax.weights.gguf_export import export_gguf

    src = make_tiny_hf(tmp_path / "hf", vocab_size=320)
    with pytest.raises(ValueError, match=r"no tokenizer beside the weights|no tokenizer\.json"):
        export_gguf(src, tmp_path / "a.gguf")
    from mnlu_jax.data.tiny_tokenizer import train_tiny_tokenizer

    tok = train_tiny_tokenizer(["some text to learn from"] * 5, 300, src)
    with pytest.raises(ValueError, match=r"tensor type 'q4_k': expected one of"):
        export_gguf(src, tmp_path / "a.gguf", tensor_type="q4_k")
    with pytest.raises(ValueError, match=r"a\.bin: expected a \.gguf file name"):
        export_gguf(src, tmp_path / "a.bin")
    spec = json.loads((src / "tokenizer.json").read_text())  # a split rule llama.cpp has no name for here
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\d"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    (src / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"tokenizer\.json: its pre-tokenizer .* give it \(tokenizer_pre"):
        export_gguf(src, tmp_path / "a.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*tmp"))
    export_gguf(src, tmp_path / "named.gguf", tokenizer_pre="smollm", progress=False)
    assert gguf_fields(tmp_path / "named.gguf")["tokenizer.ggml.pre"] == "smollm"
    tokens = gguf_fields(tmp_path / "named.gguf")["tokenizer.ggml.tokens"]  # the model's 320 ids, the rest unused
    assert len(tok) < 320 and len(tokens) == 320 and tokens[len(tok)] == f"[PAD{len(tok)}]"
    rope = make_tiny_hf(tmp_path / "rope", model_type="llama", vocab_size=320, **LLAMA3_ROPE)
    train_tiny_tokenizer(["some text to learn from"] * 5, 300, rope)
    with pytest.raises(ValueError, match=r"only linear scaling has GGUF keys"):
        export_gguf(rope, tmp_path / "r.gguf")
    linear = make_tiny_hf(tmp_path / "linear", model_type="llama", vocab_size=320,
                          rope_scaling={"rope_type": "linear", "factor": 2.0})
    train_tiny_tokenizer(["some text to learn from"] * 5, 300, linear)
    _, config, _ = load_model(export_gguf(linear, tmp_path / "l.gguf", progress=False))
    assert dict(config.rope_scaling) == {"rope_type": "linear", "factor": 2.0}
    from mnlu_jax.weights.safetensors_io import write_sharded

    st = SafetensorsCheckpoint(linear)  # a tensor the architecture has no place for is refused, not dropped
    extra = tmp_path / "extra"
    specs = [(n, st.shape(n), st.dtype(n)) for n in st.names()]
    specs.append(("model.layers.0.self_attn.q_proj.bias", (64,), np.dtype(np.float32)))
    write_sharded(extra, specs, lambda n: st.get(n) if n in st.names() else np.zeros(64, np.float32))
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(linear / f, extra / f)
    with pytest.raises(ValueError, match=r"tensors a llama model does not have: \['model\.layers\.0\.self_attn"):
        export_gguf(extra, tmp_path / "e.gguf")


def gguf_fields(path) -> dict:
    gguf = pytest.importorskip("gguf")
    return {k: f.contents() for k, f in gguf.GGUFReader(str(path)).fields.items()}


def test_gguf_reader_and_tokenizer_are_kept_per_file(tmp_path):
    """The parsed GGUF metadata and its tokenizer are reused for the same file, each caller gets its own tokenizer,
    and a file replaced at the same path is read afresh."""
    from mnlu_jax.data.tiny_tokenizer import train_tiny_tokenizer
    from mnlu_jax.weights.gguf_export import export_gguf
    from mnlu_jax.weights.gguf_io import gguf_config, gguf_tokenizer, open_gguf

    src = make_tiny_hf(tmp_path / "hf", vocab_size=320)
    train_tiny_tokenizer(["Patients with renal failure received 20 mg of aspirin daily."] * 20, 300, src)
    out = export_gguf(src, tmp_path / "model.gguf", tensor_type="f32", progress=False)
    assert open_gguf(out) is open_gguf(str(out))
    first, second = gguf_tokenizer(out), gguf_tokenizer(out)
    assert first is not second
    first.add_tokens(["<added>"])
    assert len(gguf_tokenizer(out)) == len(second) == len(first) - 1
    reader = open_gguf(out)
    other = make_tiny_hf(tmp_path / "other", vocab_size=320, num_hidden_layers=3)
    train_tiny_tokenizer(["Patients with renal failure received 20 mg of aspirin daily."] * 20, 300, other)
    replacement = export_gguf(other, tmp_path / "replacement.gguf", tensor_type="f32", progress=False)
    replacement.replace(out)
    assert open_gguf(out) is not reader and gguf_config(out).num_hidden_layers == 3
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        open_gguf(tmp_path / "missing.gguf")
