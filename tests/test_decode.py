"""Greedy decoder: token-for-token equality with transformers.generate, batch invariance, sharding."""

import numpy as np
import pytest

import jax

from mnlu_jax.decode.engine import DecodeConfig, Generator, shard_params
from mnlu_jax.sharding import make_mesh
from mnlu_jax.weights.convert import load_model
from tests.conftest import make_tiny_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def hf_greedy(model, prompt, max_new, eos):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=max_new, do_sample=False, eos_token_id=list(eos), pad_token_id=0)
    toks = out[0, len(prompt):].tolist()
    if toks and toks[-1] in eos:
        toks = toks[:-1]
    return toks


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = make_tiny_hf(tmp_path_factory.mktemp("m") / "hf", eos_token_id=2)
    params, config, _ = load_model(d)
    hf = transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
    hf.eval()
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(3, 128, size=n)) for n in (5, 17, 9, 30, 12, 3, 25)]
    return params, config, hf, prompts


def test_tiny_mistral_matches_hf_generate_with_window(tiny):
    params, config, hf, prompts = tiny
    assert config.sliding_window == 8  # shorter than prompt + output
    gen = Generator(params, config, DecodeConfig(batch_size=4, max_new_tokens=20, buckets=(16, 32),
                                                 prefill_batch=2, chunk_steps=4))
    results = gen.generate(prompts)
    for p, r in zip(prompts, results):
        assert r.tokens == hf_greedy(hf, p, 20, config.eos_ids)
    # compilations are bounded by the buckets, not by the number of prompts
    assert {s[:2] for s in gen.compiled_shapes} <= {("prefill", 16), ("prefill", 32)}


def test_batch_invariance(tiny):
    params, config, _, prompts = tiny
    dc = DecodeConfig(batch_size=3, max_new_tokens=12, buckets=(32,), prefill_batch=2, chunk_steps=3)
    alone = [Generator(params, config, dc).generate([p])[0].tokens for p in prompts]
    together = [r.tokens for r in Generator(params, config, dc).generate(prompts)]
    reversed_ = [r.tokens for r in Generator(params, config, dc).generate(prompts[::-1])][::-1]
    big = [r.tokens for r in Generator(params, config, DecodeConfig(batch_size=8, max_new_tokens=12, buckets=(32,),
                                                                    prefill_batch=4, chunk_steps=5)).generate(prompts)]
    assert alone == together == reversed_ == big


@pytest.mark.parametrize("fuse", [False, True])
def test_unrolled_layer_loop_gives_the_same_tokens(tiny, fuse):
    params, config, _, prompts = tiny
    base = dict(batch_size=4, max_new_tokens=16, buckets=(16, 32), prefill_batch=2, chunk_steps=4)
    scan = [r.tokens for r in Generator(params, config, DecodeConfig(**base)).generate(prompts)]
    unrolled = [r.tokens for r in Generator(params, config, DecodeConfig(**base, layer_loop="unrolled",
                                                                         fuse_projections=fuse)).generate(prompts)]
    assert unrolled == scan
    with pytest.raises(ValueError, match="layer_loop"):
        Generator(params, config, DecodeConfig(**base, layer_loop="while"))


def test_stop_ids_and_length(tiny):
    params, config, _, prompts = tiny
    base = Generator(params, config, DecodeConfig(batch_size=2, max_new_tokens=10, buckets=(32,))).generate(prompts[:2])
    stop_at = base[0].tokens[3]
    res = Generator(params, config, DecodeConfig(batch_size=2, max_new_tokens=10, buckets=(32,),
                                                 stop_ids=(stop_at,))).generate(prompts[:1])[0]
    assert res.finish_reason == "stop" and res.tokens == base[0].tokens[: base[0].tokens.index(stop_at)]
    assert all(len(r.tokens) <= 10 for r in base)


@pytest.mark.parametrize("layer_loop", ["scan", "unrolled"])
def test_sharded_equals_single_device(tiny, layer_loop):
    params, config, _, prompts = tiny
    dc = DecodeConfig(batch_size=4, max_new_tokens=10, buckets=(32,), prefill_batch=4, chunk_steps=5,
                      layer_loop=layer_loop)
    single = [r.tokens for r in Generator(params, config, dc).generate(prompts)]
    mesh = make_mesh(data=2, fsdp=1, tensor=2, devices=jax.devices()[:4])
    sp = shard_params(params, config, mesh)
    assert len(sp["model"]["layers"]["mlp"]["up_proj"]["kernel"].sharding.device_set) == 4
    sharded = [r.tokens for r in Generator(sp, config, dc, mesh=mesh).generate(prompts)]
    assert sharded == single


@pytest.mark.slow
def test_smollm2_matches_hf_generate_on_16_chat_prompts(smollm2_path):
    from mnlu_jax.weights.convert import load_tokenizer

    params, config, _ = load_model(smollm2_path)
    tok = load_tokenizer(smollm2_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name,
                                                           torch_dtype=torch.float32)
    hf.eval()
    topics = ["aspirin", "metformin", "BRCA1", "asthma", "warfarin", "insulin", "tumor necrosis factor", "sepsis"]
    questions = []
    for i, t in enumerate(topics):
        questions.append(f"Extract the Chemical entities.\nMedical text: Patients received {t} daily for {i + 2} weeks.")
        questions.append(f"Is {t} related to cancer? Options: (A) yes (B) no (C) maybe" + " Explain briefly." * (i % 3))
    prompts = [tok(tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                           add_generation_prompt=True), add_special_tokens=False)["input_ids"]
               for q in questions]
    assert len(prompts) == 16 and len({len(p) for p in prompts}) > 4
    gen = Generator(params, config, DecodeConfig(batch_size=8, max_new_tokens=24, buckets=(64, 128),
                                                 prefill_batch=4, chunk_steps=8, stop_ids=config.eos_ids))
    ours = gen.generate(prompts)
    matches = 0
    for p, r in zip(prompts, ours):
        ref = hf_greedy(hf, p, 24, config.eos_ids)
        matches += r.tokens == ref
    # fp32 on both sides; allow no mismatches
    assert matches == 16
