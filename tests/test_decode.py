"""Greedy decoder: token-for-token equality with transformers.generate, batch invariance, sharding."""

import collections
import dataclasses

import numpy as np
import pytest

import jax

from mnlu_jax.decode.engine import DecodeConfig, Generator, lookup_drafts, plan_prefixes, shard_params
from mnlu_jax.sharding import make_mesh
from mnlu_jax.weights.convert import load_model
from tests.conftest import make_tiny_hf, smollm2_chat_texts

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
    assert {s[:2] for s in gen.compiled_shapes if s[0] != "decode"} <= {("prefill", 16), ("prefill", 32)}
    # the longest prompts go first; the last ones ran in a smaller batch with a shorter cache (32 + 20 slots,
    # then 16 + 20 once every prompt left fits in three quarters of that)
    decode_shapes = sorted(s[1:] for s in gen.compiled_shapes if s[0] == "decode")
    assert decode_shapes[-1] == (4, 52) and decode_shapes[0][0] < 4 and (4, 36) in decode_shapes


def test_batch_invariance(tiny):
    params, config, _, prompts = tiny
    dc = DecodeConfig(batch_size=3, max_new_tokens=12, buckets=(32,), prefill_batch=2, chunk_steps=3)
    alone = [Generator(params, config, dc).generate([p])[0].tokens for p in prompts]
    together = [r.tokens for r in Generator(params, config, dc).generate(prompts)]
    reversed_ = [r.tokens for r in Generator(params, config, dc).generate(prompts[::-1])][::-1]
    big = [r.tokens for r in Generator(params, config, DecodeConfig(batch_size=8, max_new_tokens=12, buckets=(32,),
                                                                    prefill_batch=4, chunk_steps=5)).generate(prompts)]
    assert alone == together == reversed_ == big


def test_plan_prefixes_picks_the_longest_shared_block_head():
    a = list(range(100, 140))                       # 40 tokens
    b = a[:32] + [7] * 10                           # shares 2 blocks of 16 with a
    c = a[:16] + [8] * 20                           # shares 1 block with a and b
    d = [9] * 16                                    # shares nothing; a 16-token prompt has no head of whole blocks
    e = a[:32]                                      # equal to b's head, but must keep a token for its tail
    assert plan_prefixes([a, b, c, d, e], 16) == [32, 32, 16, 0, 16]
    # a head chosen by one prompt only is not worth computing: that prompt falls back to a shared shorter one
    f = a[:16] + [5] * 40
    g = f[:48] + [6]
    assert plan_prefixes([a, c, f, g], 16) == [16, 16, 48, 48]
    x = a[:32] + [1] * 20
    y = a[:32] + [2] * 4                            # shares 32 with x and z, but they both take 48
    z = x[:48] + [3]
    assert plan_prefixes([x, y, z], 16) == [48, 0, 48]
    assert plan_prefixes([a, b], 64) == [0, 0]
    with pytest.raises(ValueError, match="prefix_block"):
        plan_prefixes([a], 0)


@pytest.fixture(scope="module")
def shared_head_prompts():
    """Prompts like one evaluation set's: a common instruction head (longer than the sliding window), then
    each its own text; two heads, one of them shared by a single pair."""
    rng = np.random.default_rng(1)
    head_a, head_b = list(rng.integers(3, 128, size=37)), list(rng.integers(3, 128, size=21))
    prompts = [head_a + list(rng.integers(3, 128, size=n)) for n in (4, 11, 19, 2, 26)]
    prompts += [head_b + list(rng.integers(3, 128, size=n)) for n in (9, 1)]
    prompts += [list(rng.integers(3, 128, size=14))]
    return prompts


@pytest.mark.parametrize("layer_loop", ["scan", "unrolled", "feature_major"])
def test_prefix_cache_gives_the_same_tokens_as_full_prefill(tiny, shared_head_prompts, layer_loop):
    params, config, hf, _ = tiny
    prompts = shared_head_prompts
    base = dict(batch_size=3, max_new_tokens=10, buckets=(16, 32, 64), prefill_batch=2, chunk_steps=4,
                layer_loop=layer_loop)
    gen = Generator(params, config, DecodeConfig(**base, prefix_cache=True))
    cached = [r.tokens for r in gen.generate(prompts)]
    full = [r.tokens for r in Generator(params, config, DecodeConfig(**base, prefix_cache=False)).generate(prompts)]
    assert cached == full
    assert cached == [hf_greedy(hf, p, 10, config.eos_ids) for p in prompts]
    # heads were computed once each (32 and 16 tokens) and reused by every prompt that starts with them
    assert gen.stats["head_tokens_reused"] == 5 * 32 + 2 * 16
    assert {s[0] for s in gen.compiled_shapes} == {"prefill", "head", "tail", "decode"}
    assert {s[1] for s in gen.compiled_shapes if s[0] == "head"} == {16, 32}
    # with one coarse bucket a split saves no prefill and would only lengthen the cache: no heads are used
    coarse = Generator(params, config, DecodeConfig(**{**base, "buckets": (64,)}, prefix_cache=True))
    assert [r.tokens for r in coarse.generate(prompts)] == full
    assert coarse.stats["head_tokens_reused"] == 0


def test_prefix_cache_batch_invariance(tiny, shared_head_prompts):
    params, config, _, _ = tiny
    prompts = shared_head_prompts
    dc = DecodeConfig(batch_size=2, max_new_tokens=8, buckets=(16, 32, 64), prefill_batch=2, chunk_steps=3)
    one = [r.tokens for r in Generator(params, config, dc).generate(prompts)]
    reversed_ = [r.tokens for r in Generator(params, config, dc).generate(prompts[::-1])][::-1]
    wide = DecodeConfig(batch_size=8, max_new_tokens=8, buckets=(16, 32, 64), prefill_batch=4, chunk_steps=5)
    big = [r.tokens for r in Generator(params, config, wide).generate(prompts)]
    assert one == reversed_ == big


@pytest.mark.parametrize("fuse", [False, True])
def test_unrolled_layer_loop_gives_the_same_tokens(tiny, fuse):
    params, config, _, prompts = tiny
    base = dict(batch_size=4, max_new_tokens=16, buckets=(16, 32), prefill_batch=2, chunk_steps=4)
    scan = [r.tokens for r in Generator(params, config, DecodeConfig(**base, layer_loop="scan")).generate(prompts)]
    unrolled = [r.tokens for r in Generator(params, config, DecodeConfig(**base, layer_loop="unrolled",
                                                                         fuse_projections=fuse)).generate(prompts)]
    assert unrolled == scan
    feature_major = Generator(params, config, DecodeConfig(**base, layer_loop="feature_major"))
    assert [r.tokens for r in feature_major.generate(prompts)] == scan
    assert Generator(params, config, DecodeConfig(**base)).layer_loop == "feature_major"  # "auto" on CPU devices
    with pytest.raises(ValueError, match="layer_loop"):
        Generator(params, config, DecodeConfig(**base, layer_loop="while"))


def test_prefill_groups_are_powers_of_two_without_filler_rows(tiny):
    params, config, _, _ = tiny
    rng = np.random.default_rng(3)
    prompts = [list(rng.integers(3, 128, size=n)) for n in (10, 11, 12, 13, 14, 20)]  # five in bucket 16, one in 32
    gen = Generator(params, config, DecodeConfig(batch_size=8, max_new_tokens=3, buckets=(16, 32), prefill_batch=8,
                                                 prefix_cache=False))
    gen.generate(prompts)
    assert gen.stats["prefill_tokens"] == 5 * 16 + 32        # every computed row is a prompt
    prefills = sorted((s[1], s[-1]) for s in gen.compiled_shapes if s[0] == "prefill")
    assert prefills == [(16, 1), (16, 4), (32, 1)]  # 5 = 4 + 1
    for bad in ("prefill_batch", "batch_size", "chunk_steps", "max_new_tokens"):
        with pytest.raises(ValueError, match=bad):
            Generator(params, config, DecodeConfig(**{bad: 0}))


def test_shrink_plan_puts_the_live_rows_first(tiny):
    params, config, _, _ = tiny
    gen = Generator(params, config, DecodeConfig(batch_size=8, max_new_tokens=10, buckets=(16, 32, 64)))
    # queue not empty: the batch stays, the cache is cut once everything left fits in 3/4 of it
    assert gen._shrink_plan([0, 2, 5], 8, [(0, 16)] * 3, (0, 32), 74) == ([0, 2, 5, 1, 3, 4, 6, 7], 42)
    assert gen._shrink_plan([0, 2, 5], 8, [(0, 16)] * 3, (0, 64), 74) == (None, 74)
    # queue empty: the live rows first, then idle rows up to the next power of two
    assert gen._shrink_plan([1, 6, 7], 8, [(0, 16), (16, 32), (0, 16)], None, 74) == ([1, 6, 7, 0], 74)  # 58 > 3/4
    assert gen._shrink_plan([1, 2, 3, 4, 6], 8, [(0, 64)] * 5, None, 74) == (None, 74)


def test_rows_stopping_at_different_steps_keep_their_tokens(tiny):
    """The longest prompt (slot 0) stops first while three short ones run on: the cache is cut around an idle
    slot in front of live ones (and a run of mixed stops shrinks the batch too); every prompt must still get
    exactly its own tokens, its unstopped output cut at the stop id."""
    params, config, _, _ = tiny
    rng = np.random.default_rng(5)
    prompts = [list(rng.integers(3, 128, size=n)) for n in (30, 9, 7, 5)]
    base = dict(batch_size=4, max_new_tokens=12, buckets=(16, 32), prefill_batch=4, chunk_steps=2)
    full = [r.tokens for r in Generator(params, config, DecodeConfig(**base, stop_ids=(-1,))).generate(prompts)]
    others = {t for toks in full[1:] for t in toks}
    stop = next(t for t in full[0][1:4] if t not in others)  # ends the long prompt early, no other
    gen = Generator(params, config, DecodeConfig(**base, stop_ids=(stop,)))
    assert [r.tokens for r in gen.generate(prompts)] == [full[0][: full[0].index(stop)]] + full[1:]
    assert ("decode", 4, 28) in gen.compiled_shapes  # cut from 32 + 12 to 16 + 12 slots, batch kept
    # many prompts, one stop token ending several rows at their own steps
    prompts = [list(rng.integers(3, 128, size=n)) for n in (30, 28, 26, 9, 7, 5, 12, 3, 14, 6)]
    full = [r.tokens for r in Generator(params, config, DecodeConfig(**base, stop_ids=(-1,))).generate(prompts)]
    stop = collections.Counter(t for toks in full for t in set(toks[1:8])).most_common(1)[0][0]
    expected = [toks[: toks.index(stop)] if stop in toks else toks for toks in full]
    assert [r.tokens for r in Generator(params, config, DecodeConfig(**base, stop_ids=(stop,))).generate(prompts)] \
        == expected


def test_stop_ids_and_length(tiny):
    params, config, _, prompts = tiny
    base = Generator(params, config, DecodeConfig(batch_size=2, max_new_tokens=10, buckets=(32,))).generate(prompts[:2])
    stop_at = base[0].tokens[3]
    res = Generator(params, config, DecodeConfig(batch_size=2, max_new_tokens=10, buckets=(32,),
                                                 stop_ids=(stop_at,))).generate(prompts[:1])[0]
    assert res.finish_reason == "stop" and res.tokens == base[0].tokens[: base[0].tokens.index(stop_at)]
    assert all(len(r.tokens) <= 10 for r in base)
    with pytest.raises(ValueError, match=r"prompt 1 is empty \(1 empty prompts\)"):  # nothing to predict from
        Generator(params, config, DecodeConfig(batch_size=2, max_new_tokens=10, buckets=(32,))).generate(
            [prompts[0], []])
    # an id past the embedding table (a tokenizer with tokens the model lacks) was clamped to the last row
    with pytest.raises(ValueError, match=rf"prompt 1 has token id {config.vocab_size}, outside the model's "
                                         rf"vocabulary \(0\.\.{config.vocab_size - 1}\)"):
        Generator(params, config, DecodeConfig(batch_size=2, max_new_tokens=10, buckets=(32,))).generate(
            [prompts[0], [1, config.vocab_size]])


def test_generation_config_eos_ids_stop_like_hf(tiny, tmp_path):
    """generation_config.json may list EOS ids that config.json lacks (Llama 3 Instruct's <|eot_id|>);
    transformers' generate() stops on them, so `mnlu-jax generate` does too."""
    import json
    import types

    from mnlu_jax.decode.generate import make_generator

    params, config, hf, prompts = tiny
    dc = DecodeConfig(batch_size=2, max_new_tokens=10, buckets=(32,))
    base = Generator(params, config, dc).generate(prompts[:1])[0]
    extra = base.tokens[3]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, extra]}))
    tokenizer = types.SimpleNamespace(eos_token_id=None, pad_token_id=0)
    gen = make_generator(params, config, tokenizer, dc, model_dir=tmp_path)
    assert gen.stop_ids == (2, extra)
    res = gen.generate(prompts[:1])[0]
    assert res.finish_reason == "stop" and res.tokens == hf_greedy(hf, prompts[0], 10, (2, extra))
    assert make_generator(params, config, tokenizer, dc).stop_ids == (2,)  # no model_dir: config.json's only
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": "</s>"}))
    with pytest.raises(ValueError, match="generation_config.json: eos_token_id must be an int or a list"):
        make_generator(params, config, tokenizer, dc, model_dir=tmp_path)


@pytest.mark.parametrize("layer_loop", ["scan", "unrolled", "feature_major"])
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
    # speculation on the mesh too (its drafting runs on the batch-sharded token history)
    spec = Generator(sp, config, dataclasses.replace(dc, speculate=2), mesh=mesh)
    assert [r.tokens for r in spec.generate(prompts)] == single and spec.stats["draft_tokens_kept"] > 0


def test_sharded_prefix_cache_equals_single_device(tiny, shared_head_prompts):
    params, config, _, _ = tiny
    dc = DecodeConfig(batch_size=4, max_new_tokens=6, buckets=(16, 32, 64), prefill_batch=2, chunk_steps=3)
    single = [r.tokens for r in Generator(params, config, dc).generate(shared_head_prompts)]
    mesh = make_mesh(data=2, fsdp=1, tensor=2, devices=jax.devices()[:4])
    gen = Generator(shard_params(params, config, mesh), config, dc, mesh=mesh)
    assert [r.tokens for r in gen.generate(shared_head_prompts)] == single
    assert gen.stats["head_tokens_reused"] > 0


@pytest.mark.slow
def test_lookup_drafts_follow_the_latest_longest_match():
    import jax.numpy as jnp

    rows = [[5, 6, 7, 8, 9, 5, 6, 7, 1, 5, 6],   # "5 6" last seen at 5 (not 0): drafts 7 1 5
            [4, 9, 9, 3, 2, 7, 3],               # no 2-gram "7 3" before; the 1-gram "3" at 3: drafts 2 7 3
            [1, 2, 3, 4],                        # no earlier "4": nothing drafted
            [8, 1, 8]]                           # "8" at 0, then only 2 tokens follow: the third draft is 0
    hist = np.full((4, 12), -1, np.int32)
    for r, row in enumerate(rows):
        hist[r, :len(row)] = row
    drafts, found = lookup_drafts(jnp.asarray(hist), jnp.asarray([len(r) for r in rows], jnp.int32), 3, 2, 1)
    assert np.asarray(drafts).tolist() == [[7, 1, 5], [2, 7, 3], [0, 0, 0], [1, 8, 0]]
    assert np.asarray(found).tolist() == [True, True, False, True]


@pytest.mark.parametrize("layer_loop", ["scan", "feature_major"])
def test_speculative_decoding_gives_the_greedy_tokens(tiny, shared_head_prompts, layer_loop):
    """Drafts checked in one pass keep exactly greedy's tokens: with a sliding window shorter than the output,
    shared heads, refills, batch shrinking, stop ids cutting rows mid-step, and lengths that are not a multiple of
    the draft length; and drafts are really kept (else this would test nothing)."""
    params, config, hf, prompts = tiny
    prompts = prompts[:4] + shared_head_prompts[:3]
    base = dict(batch_size=3, max_new_tokens=19, buckets=(16, 64), prefill_batch=2, chunk_steps=3,
                layer_loop=layer_loop)
    plain = [r.tokens for r in Generator(params, config, DecodeConfig(**base)).generate(prompts)]
    assert plain[:4] == [hf_greedy(hf, p, 19, config.eos_ids) for p in prompts[:4]]
    stop = collections.Counter(t for toks in plain for t in set(toks[2:10])).most_common(1)[0][0]
    cut = [toks[: toks.index(stop)] if stop in toks else toks for toks in plain]
    assert cut != plain
    gen = Generator(params, config, DecodeConfig(**base, speculate=3))
    assert [r.tokens for r in gen.generate(prompts)] == plain
    assert gen.stats["draft_tokens_kept"] > 10 and gen.stats["head_tokens_reused"] > 0
    wide = Generator(params, config, DecodeConfig(**{**base, "batch_size": 8}, speculate=1,
                                                  stop_ids=(stop, *config.eos_ids)))
    assert [r.tokens for r in wide.generate(prompts)] == cut and wide.stats["draft_tokens_kept"] > 0
    with pytest.raises(ValueError, match="lookup_min <= lookup_max"):
        DecodeConfig(speculate=2, lookup_min=3, lookup_max=2)


def test_decode_config_refuses_bad_settings_when_made():
    """A pipeline makes its DecodeConfig before its first stage, so a bad setting stops it then, not after
    training; --buckets is parsed with a message that names the flag."""
    from mnlu_jax.decode.engine import parse_buckets

    for kw, match in [({"batch_size": 0}, "batch_size 0: expected an integer >= 1"),
                      ({"max_new_tokens": -1}, "max_new_tokens -1"), ({"chunk_steps": 0}, "chunk_steps 0"),
                      ({"prefill_batch": 0}, "prefill_batch 0"), ({"speculate": -1}, "speculate -1: expected an "
                                                                   "integer >= 0"),
                      ({"buckets": ()}, r"buckets \(\): expected one or more"), ({"buckets": (0, 64)}, "buckets"),
                      ({"layer_loop": "fast"}, "layer_loop 'fast': expected one of"),
                      ({"prompt_overflow": "right"}, "prompt_overflow 'right'")]:
        with pytest.raises(ValueError, match=match):
            DecodeConfig(**kw)
    assert DecodeConfig(batch_size=np.int64(4)).batch_size == 4
    assert parse_buckets("64,128") == (64, 128)
    for bad in ("64,abc", "", "0,64", "64;128"):
        with pytest.raises(ValueError, match=rf"--buckets '{bad}': expected prompt lengths separated by commas"):
            parse_buckets(bad)


def test_smollm2_matches_hf_generate_on_16_chat_prompts(smollm2_models):
    params, config, tok, hf = smollm2_models
    prompts = [tok(text, add_special_tokens=False)["input_ids"] for text in smollm2_chat_texts(tok)]
    assert len(prompts) == 16 and len({len(p) for p in prompts}) > 4
    gen = Generator(params, config, DecodeConfig(batch_size=8, max_new_tokens=24, buckets=(16, 32, 48, 64, 128),
                                                 prefill_batch=4, chunk_steps=8, stop_ids=config.eos_ids))
    ours = gen.generate(prompts)
    matches = 0
    for p, r in zip(prompts, ours):
        ref = hf_greedy(hf, p, 24, config.eos_ids)
        matches += r.tokens == ref
    # fp32 on both sides; allow no mismatches
    assert matches == 16
    # the chat header and the shared instructions were computed once (prefix caching is on by default)
    assert gen.stats["head_tokens_reused"] >= 16 * 16
    # prompt-lookup speculation keeps the same tokens, most of the answers' copied words coming from drafts
    spec = Generator(params, config, DecodeConfig(batch_size=8, max_new_tokens=24, buckets=(16, 32, 48, 64, 128),
                                                  prefill_batch=4, chunk_steps=4, stop_ids=config.eos_ids,
                                                  speculate=2))
    assert [r.tokens for r in spec.generate(prompts)] == [r.tokens for r in ours]
    assert spec.stats["draft_tokens_kept"] > 0
