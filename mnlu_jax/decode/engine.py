"""Batched greedy decoding with a KV cache and continuous batching (slot refill).

Shapes are static so the number of compilations is bounded: one prefill per prompt-length bucket and group
size, one insert per bucket, one decode chunk per (batch, cache length), of which a run uses a few. The cache
starts with `batch_size` slots of `max_bucket + max_new_tokens` positions. A prompt is left-padded to its bucket,
prefilled in a group of up to `prefill_batch` rows (a power of two), and its keys/values copied into free
slots; then all slots advance together, `chunk_steps` greedy steps per jitted call. Between chunks, finished
rows (EOS, a stop id, or `max_new_tokens`) give their slot to the next prompt, so one long answer never holds
the batch hostage; as the queue drains, the batch and the cache shrink to what is left.

Prefix caching: prompts of one evaluation set share a long head (system prompt, task instruction, label
list). Before decoding, `plan_prefixes` gives each prompt the longest block-aligned head it shares with
another prompt of the input and whose tail falls into a smaller bucket than the whole prompt; that head's
keys/values are computed once (a one-row prefill), kept while prompts still need them, and copied in front
of each such prompt, whose prefill then covers only its own tail. A row's cache is laid out
[head, left-padded to a bucket | tail, left-padded to a bucket | new tokens]; padding slots have segment 0, and
masks go by stored positions, so the gaps are invisible.

Speculative decoding (`DecodeConfig.speculate`, off by default): each step also checks drafted tokens taken
from the row's own prompt and output (prompt lookup) and keeps those greedy would have produced; see
`_speculative_chunk`.

Batch invariance: a prompt's padding depends only on its own length (its bucket) and its split only on the
input set (never on batch size, slot or order), masked cache slots contribute exact zeros, and each row of a
matmul is computed independently, so its tokens do not depend on its slot, on the prompts that share its batch,
or on the batch size and cache length it runs with (which shrink as a run drains: see `_shrink_plan`); tested
alone, together, reversed and in wider batches, and against transformers. With `prefix_cache=False` a
prompt's computation does not depend on the input set either.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mnlu_jax.model.config import ModelConfig
from mnlu_jax.model.feature_major import feature_major_axes, forward_feature_major, to_feature_major
from mnlu_jax.model.mistral import forward, init_cache, to_dtype, unstack_layers

LAYER_LOOPS = ("auto", "scan", "unrolled", "feature_major")
PROMPT_OVERFLOW = ("middle", "left", "error")  # what generate does with a prompt over the largest bucket


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    batch_size: int = 8
    max_new_tokens: int = 256
    # Prompt-length buckets: finer steps waste less prefill compute on padding; each is one compilation.
    buckets: tuple[int, ...] = (16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768,
                                1024, 1280, 1536, 2048)
    prefill_batch: int = 4
    chunk_steps: int = 16
    stop_ids: tuple[int, ...] = ()
    pad_id: int = 0
    # "scan": lax.scan over stacked layers (fast compile); "unrolled": per-layer weight buffers in a Python loop
    # (each matmul reads its weight in place; the choice for memory-bound small-batch decoding on accelerators);
    # "feature_major": unrolled, with (out, in) weights and (features, tokens) activations (model/feature_major.py:
    # 1.5-1.9x faster decode steps on CPUs); "auto": feature_major on CPU devices, scan elsewhere.
    layer_loop: str = "auto"
    fuse_projections: bool = True  # with "unrolled": Q/K/V and gate/up as one matmul each (see unstack_layers)
    # Shared prompt heads computed once (see the module docstring); `prefix_block` is the split granularity.
    prefix_cache: bool = True
    prefix_block: int = 16
    # Prompt-lookup speculative decoding (vLLM's "ngram" drafts): each step drafts the `speculate` tokens that
    # followed the latest earlier occurrence of the row's last n tokens (n = lookup_max down to lookup_min) in
    # its own prompt and output, and checks them all in one forward pass, keeping the drafts that agree with the
    # model's greedy choice plus the model's next token. The output is greedy's (every kept token is the model's
    # argmax); what changes is how many tokens a step yields, a gain where weights, not arithmetic, bound a step
    # (small batches, accelerators) and answers copy their input (NER spans). 0 turns it off.
    speculate: int = 0
    lookup_max: int = 3
    lookup_min: int = 1
    # Prompts longer than the largest bucket (decode/generate.py): "middle" keeps their first and last halves (the
    # chat header and instruction, the options and generation prompt), "left" their end, "error" refuses them.
    prompt_overflow: str = "middle"

    def __post_init__(self):  # checked when made: a pipeline makes it before its first stage
        if self.prompt_overflow not in PROMPT_OVERFLOW:
            raise ValueError(f"prompt_overflow {self.prompt_overflow!r}: expected one of {PROMPT_OVERFLOW}")
        if self.layer_loop not in LAYER_LOOPS:
            raise ValueError(f"layer_loop {self.layer_loop!r}: expected one of {LAYER_LOOPS}")
        for name, least in (("batch_size", 1), ("max_new_tokens", 1), ("prefill_batch", 1), ("chunk_steps", 1),
                            ("prefix_block", 1), ("speculate", 0), ("lookup_min", 1), ("lookup_max", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
                raise ValueError(f"{name} {v!r}: expected an integer >= {least}")
        if self.lookup_max < self.lookup_min:
            raise ValueError(f"lookup_max {self.lookup_max} < lookup_min {self.lookup_min}: expected "
                             "1 <= lookup_min <= lookup_max")
        if not self.buckets or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1
                                   for b in self.buckets):
            raise ValueError(f"buckets {self.buckets!r}: expected one or more prompt lengths (integers >= 1)")


def parse_buckets(text: str) -> tuple[int, ...]:
    """`--buckets 128,256,512` -> (128, 256, 512); anything else is named."""
    try:
        buckets = tuple(int(x) for x in text.split(","))
    except ValueError:
        buckets = ()
    if not buckets or min(buckets) < 1:
        raise ValueError(f"--buckets {text!r}: expected prompt lengths separated by commas, e.g. 128,256,512")
    return buckets


@dataclasses.dataclass
class Result:
    index: int
    tokens: list[int]
    finish_reason: str  # "stop" (EOS/stop id) or "length"


def _greedy(params, config: ModelConfig, ids, pos, seg, cache, cache_index, feature_major: bool):
    """Each row's next token (argmax after its last input token) and the updated cache, with either model."""
    if feature_major:
        logits, cache = forward_feature_major(params, config, ids, pos, seg, cache, cache_index)  # (vocab, B)
        return jnp.argmax(logits, axis=0).astype(jnp.int32), cache
    logits, cache = forward(params, config, ids, pos, seg, cache=cache, cache_index=cache_index, last_only=True)
    return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache


def _greedy_all(params, config: ModelConfig, ids, pos, seg, cache, cache_index, feature_major: bool):
    """Every input token's greedy successor, (B, T), and the updated cache."""
    if feature_major:
        logits, cache = forward_feature_major(params, config, ids, pos, seg, cache, cache_index,
                                              all_positions=True)                       # (vocab, B, T)
        return jnp.argmax(logits, axis=0).astype(jnp.int32), cache
    logits, cache = forward(params, config, ids, pos, seg, cache=cache, cache_index=cache_index, last_only=False)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32), cache


def lookup_drafts(history, history_len, draft: int, lookup_max: int, lookup_min: int):
    """(B, draft) token drafts by prompt lookup: for each row, the tokens that followed the latest earlier
    occurrence of its last n tokens (`history[:, :history_len]`, n from lookup_max down to lookup_min, the first
    n that occurs), and whether one was found. Slots past a row's history hold -1, which matches no token; drafts
    running past it, and rows without a match, get token 0: a draft only decides how many tokens the step may
    keep, never which."""
    b, h = history.shape
    idx = jnp.arange(h, dtype=jnp.int32)
    drafts = jnp.zeros((b, draft), jnp.int32)
    found = jnp.zeros((b,), bool)
    for n in range(lookup_max, lookup_min - 1, -1):
        tail = jnp.take_along_axis(history, jnp.clip(history_len[:, None] - n + jnp.arange(n)[None], 0, h - 1), 1)
        match = (idx[None] + n < history_len[:, None]) & (history_len[:, None] > n)  # ends before the tail
        for i in range(n):
            match = match & (jnp.roll(history, -i, axis=1) == tail[:, i:i + 1])
        start = jnp.max(jnp.where(match, idx[None], -1), axis=1)                     # latest occurrence or -1
        hit = (start >= 0) & ~found
        follow = jnp.take_along_axis(history, jnp.clip(start[:, None] + n + jnp.arange(draft)[None], 0, h - 1), 1)
        drafts = jnp.where(hit[:, None], follow, drafts)
        found = found | hit
    return jnp.maximum(drafts, 0), found


def _map_cache(fn, *caches) -> dict:
    """`fn(*arrays, batch_axis=, length_axis=)` applied field by field across caches of one layout: keys/values
    stacked (L, B, KVH, S, hd) or per-layer lists of (B, KVH, S, hd), positions/segments (B, S)."""
    def kv(*xs):
        return fn(*xs, batch_axis=xs[0].ndim - 4, length_axis=xs[0].ndim - 2)

    def rows(*xs):
        return fn(*xs, batch_axis=0, length_axis=1)

    return {"k": jax.tree_util.tree_map(kv, *(c["k"] for c in caches)),
            "v": jax.tree_util.tree_map(kv, *(c["v"] for c in caches)),
            "pos": rows(*(c["pos"] for c in caches)), "seg": rows(*(c["seg"] for c in caches))}


def _pad_length(cache, cache_len: int):
    """Empty slots (segment 0) appended to every row of a cache, up to `cache_len`. The prompt is prefilled
    into a cache just as long as itself, so its attention does not scan the slots of the tokens to come."""
    def pad(x, batch_axis, length_axis):
        widths = [(0, 0)] * x.ndim
        widths[length_axis] = (0, cache_len - x.shape[length_axis])
        return jnp.pad(x, widths)

    return _map_cache(pad, cache)


def _prefill(params, ids, pos, seg, *, config: ModelConfig, cache_len: int, per_layer: bool = False,  # noqa: D417
             feature_major: bool = False):
    """Prefill a group: returns the first generated token per row and the group's filled cache rows."""
    b, t = ids.shape
    cache = init_cache(config, b, t, per_layer=per_layer)
    first, cache = _greedy(params, config, ids, pos, seg, cache, 0, feature_major)
    return first, _pad_length(cache, cache_len)


def _prefill_tail(params, head, ids, pos, seg, *, config: ModelConfig, cache_len: int, per_layer: bool = False,
                  feature_major: bool = False):
    """Prefill prompt tails behind cached heads: `head` holds P rows of head keys/values/positions/segments
    (length Lh); the tails are written from slot Lh on and attend to the head and to themselves."""
    b, t = ids.shape
    head_len = head["pos"].shape[1]
    cache = _pad_length(head, head_len + t)
    first, cache = _greedy(params, config, ids, pos, seg, cache, head_len, feature_major)
    return first, _pad_length(cache, cache_len)


def _left_pad(rows: list[tuple[Sequence[int], int]], length: int, pad_id: int):
    """Token ids, positions and segments (1 = real) of shape (len(rows), length) for prefill: each (tokens, first
    position) row right-aligned; the left padding is segment 0."""
    n_rows = len(rows)
    ids = np.full((n_rows, length), pad_id, np.int32)
    pos = np.zeros((n_rows, length), np.int32)
    seg = np.zeros((n_rows, length), np.int32)
    for r, (toks, start) in enumerate(rows):
        n = len(toks)
        ids[r, length - n:] = np.asarray(toks, np.int32)
        pos[r, length - n:] = np.arange(start, start + n)
        seg[r, length - n:] = 1
    return ids, pos, seg


def _stack_rows(caches: list) -> dict:
    """Concatenate one-row caches along the batch axis."""
    return _map_cache(lambda *xs, batch_axis, length_axis: jnp.concatenate(xs, axis=batch_axis), *caches)


def _head_keys(prompt: Sequence[int], block: int) -> list[tuple[int, int]]:
    """(length, chained hash) of each whole-block head of `prompt` that leaves at least one token: O(length)."""
    keys, h = [], 0
    for m in range(block, len(prompt), block):
        h = hash((h, tuple(int(t) for t in prompt[m - block:m])))
        keys.append((m, h))
    return keys


def plan_prefixes(prompts: Sequence[Sequence[int]], block: int,
                  worth_it: Callable[[int, int], bool] = lambda prompt_len, head_len: True) -> list[int]:
    """For each prompt, the length of the longest head of whole `block`-token blocks (leaving at least one
    token) that some other prompt of the input starts with and that `worth_it(prompt length, head length)`
    accepts; 0 when there is none. A head chosen by only one prompt falls back to the longest shorter head that
    at least two prompts chose (or 0), so every head that is computed is used at least twice. Heads are matched
    here by chained block hashes; the engine keys the computed heads by their tokens, so a hash collision would
    cost a recomputation, never a wrong head."""
    if block <= 0:
        raise ValueError(f"prefix_block must be positive, got {block}")
    keys = [_head_keys(p, block) for p in prompts]
    counts = collections.Counter(k for ks in keys for k in ks)
    # each prompt's candidate heads: shared with another prompt and worth splitting at, shortest first
    candidates = [[k for k in ks if counts[k] > 1 and worth_it(len(p), k[0])] for p, ks in zip(prompts, keys)]
    users = collections.Counter(cs[-1] for cs in candidates if cs)
    # lowering a singleton never changes another head's user count (its head had only itself)
    return [max((k[0] for k in cs if users[k] >= 2), default=0) for cs in candidates]


def _insert(cache, group_cache, slots):
    """Copy the group's cache rows into `slots` of the main cache."""
    def put(big, small, batch_axis, length_axis):
        return big.at[(slice(None),) * batch_axis + (slots,)].set(small)

    return _map_cache(put, cache, group_cache)


def _compact(cache, rows, *, length: int):
    """The cache's `rows` (along its batch axis), each cut to its first `length` slots."""
    def cut(x, batch_axis, length_axis):
        return jax.lax.slice_in_dim(jnp.take(x, rows, axis=batch_axis), 0, length, axis=length_axis)

    return _map_cache(cut, cache)


def _decode_chunk(params, cache, tokens, positions, write_idx, active, *, config: ModelConfig, steps: int,
                  stop_ids: tuple[int, ...], feature_major: bool = False):
    """`steps` greedy steps for every slot. Inactive slots compute but write nothing visible (segment 0)."""
    stop = jnp.asarray(stop_ids if stop_ids else (-1,), jnp.int32)

    def step(carry, _):
        cache, tok, pos, widx, act = carry
        seg = act.astype(jnp.int32)[:, None]
        nxt, cache = _greedy(params, config, tok[:, None], pos[:, None], seg, cache, widx, feature_major)
        emitted = jnp.where(act, nxt, -1)
        hit_stop = jnp.any(nxt[:, None] == stop[None, :], axis=-1)
        act = act & ~hit_stop
        return (cache, nxt, pos + 1, widx + 1, act), emitted

    (cache, tokens, positions, write_idx, active), out = jax.lax.scan(
        step, (cache, tokens, positions, write_idx, active), None, length=steps)
    return cache, tokens, positions, write_idx, active, out.T  # out: (B, steps)


def _speculative_chunk(params, cache, tokens, positions, write_idx, active, history, history_len, *,
                       config: ModelConfig, steps: int, stop_ids: tuple[int, ...], draft: int, lookup: tuple[int, int],
                       feature_major: bool = False):
    """`steps` speculative steps for every slot (see DecodeConfig.speculate): each feeds the row's last token and
    its `draft` drafted ones, and keeps the longest run of drafts that equal the model's greedy choices, plus the
    model's token after them (cut after a stop id). Output (B, steps * (draft + 1)), -1 where nothing is kept.

    The keys/values of rejected drafts stay in the cache behind the kept tokens, at later positions than the
    next query's (so masked out), and the next step's writes, which start at the first of them and span as many
    slots, replace them all."""
    stop = jnp.asarray(stop_ids if stop_ids else (-1,), jnp.int32)
    b, h = history.shape
    offsets = jnp.arange(draft + 1, dtype=jnp.int32)

    def step(carry, _):
        cache, tok, pos, widx, act, hist, hlen, kept = carry
        drafts, _ = lookup_drafts(hist, hlen, draft, *lookup)
        ids = jnp.concatenate([jnp.maximum(tok, 0)[:, None], drafts], axis=1)            # (B, draft + 1)
        seg = jnp.broadcast_to(act.astype(jnp.int32)[:, None], ids.shape)
        preds, cache = _greedy_all(params, config, ids, pos[:, None] + offsets[None], seg, cache, widx,
                                   feature_major)
        accepted = jnp.sum(jnp.cumprod(drafts == preds[:, :draft], axis=1), axis=1)      # leading agreements
        is_stop = jnp.any(preds[..., None] == stop, axis=-1) & (offsets[None] <= accepted[:, None])
        any_stop = jnp.any(is_stop, axis=1)
        n_out = jnp.where(any_stop, jnp.argmax(is_stop, axis=1) + 1, accepted + 1)      # tokens this step yields
        keep = (offsets[None] < n_out[:, None]) & act[:, None]
        emitted = jnp.where(keep, preds, -1)
        slots = jnp.where(keep, hlen[:, None] + offsets[None], h)                        # h: dropped
        hist = hist.at[jnp.arange(b)[:, None], slots].set(preds, mode="drop")
        last = jnp.take_along_axis(preds, (n_out - 1)[:, None], axis=1)[:, 0]
        kept = kept + jnp.sum(jnp.where(act, n_out - 1, 0))
        hlen = hlen + jnp.where(act, n_out, 0)
        return (cache, last, pos + n_out, widx + n_out, act & ~any_stop, hist, hlen, kept), emitted

    carry = (cache, tokens, positions, write_idx, active, history, history_len, jnp.int32(0))
    (cache, tokens, positions, write_idx, active, history, history_len, kept), out = jax.lax.scan(
        step, carry, None, length=steps)
    out = out.transpose(1, 0, 2).reshape(b, steps * (draft + 1))
    return cache, tokens, positions, write_idx, active, history, history_len, out, kept


class Generator:
    """Greedy generation over many prompts with continuous batching. Use `generate` or `stream`."""

    def __init__(self, params, config: ModelConfig, decode: DecodeConfig, mesh=None):
        self.config = config
        self.dc = decode
        stop = tuple(decode.stop_ids) or config.eos_ids
        self.stop_ids = tuple(int(s) for s in stop)
        self.mesh = mesh
        self._buckets = sorted(decode.buckets)  # bucket_for runs per prompt and per candidate head
        loop = decode.layer_loop  # DecodeConfig checked its settings when it was made
        if loop == "auto":
            platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
            loop = "feature_major" if platform == "cpu" else "scan"
        self.layer_loop = loop
        # Host (numpy) weights go to the device once here, not at every jitted call.
        params = jax.tree_util.tree_map(lambda x: jax.device_put(x) if isinstance(x, np.ndarray) else x, params)
        if loop == "feature_major":
            params = to_feature_major(params, config)
            if mesh is not None:
                from mnlu_jax.sharding import tree_shardings

                params = jax.device_put(params, tree_shardings(feature_major_axes(config), params, mesh))
        elif loop == "unrolled":
            params = unstack_layers(params, decode.fuse_projections)
        self.params = params
        # The cache is as long as the longest prompt's bucket plus the new tokens of each `stream` call, so short
        # prompts do not pay for attention over the largest bucket (one compilation per distinct length).
        self._per_layer_cache = loop != "scan"
        model = dict(config=config, feature_major=loop == "feature_major")
        self._prefill = jax.jit(functools.partial(_prefill, **model, per_layer=self._per_layer_cache),
                                static_argnames=("cache_len",))
        self._prefill_tail = jax.jit(functools.partial(_prefill_tail, **model, per_layer=self._per_layer_cache),
                                     static_argnames=("cache_len",))
        self._insert = jax.jit(_insert, donate_argnums=(0,))
        self._compact = jax.jit(_compact, static_argnames=("length",))
        if decode.speculate:
            self._chunk = jax.jit(functools.partial(
                _speculative_chunk, **model, steps=decode.chunk_steps, stop_ids=self.stop_ids,
                draft=decode.speculate, lookup=(decode.lookup_max, decode.lookup_min)), donate_argnums=(1,))
        else:
            self._chunk = jax.jit(
                functools.partial(_decode_chunk, **model, steps=decode.chunk_steps, stop_ids=self.stop_ids),
                donate_argnums=(1,))
        self.compiled_shapes: set[tuple] = set()  # (kind, shape) pairs seen: bounded by the bucket count
        # prefill_tokens: prompt positions computed (padding included); head_tokens_reused: prompt tokens read
        # from a shared head's cache instead
        # draft_tokens_kept: with speculation, tokens that came from accepted drafts (beyond one per step)
        self.stats = {"prefill_calls": 0, "chunk_calls": 0, "generated_tokens": 0, "seconds": 0.0,
                      "prefill_tokens": 0, "head_tokens_reused": 0, "draft_tokens_kept": 0}

    def bucket_for(self, n: int) -> int:
        for b in self._buckets:
            if n <= b:
                return b
        raise ValueError(f"prompt of {n} tokens is longer than the largest bucket {self._buckets[-1]}; "
                         "truncate it or add a bucket")

    def _empty_cache(self, cache_len: int):
        cache = init_cache(self.config, self.dc.batch_size, cache_len, per_layer=self._per_layer_cache)
        if self.mesh is not None:
            from mnlu_jax.sharding import tree_shardings

            kv = ("layers", "batch", "kv_heads", "length", None)
            if self._per_layer_cache:
                kv = [kv[1:]] * self.config.num_hidden_layers
            axes = {"k": kv, "v": kv, "pos": ("batch", "length"), "seg": ("batch", "length")}
            cache = jax.device_put(cache, tree_shardings(axes, cache, self.mesh))
        return cache

    def stream(self, prompts: Sequence[Sequence[int]], progress: Callable[[int, int], None] | None = None
               ) -> Iterator[Result]:
        """Yield a Result per prompt as soon as it finishes (not in input order)."""
        dc = self.dc
        B = dc.batch_size
        if not prompts:
            return
        empty = [i for i, p in enumerate(prompts) if len(p) == 0]
        if empty:  # its "next token" would be read off a padding position; transformers and vLLM refuse it too
            raise ValueError(f"prompt {empty[0]} is empty ({len(empty)} empty prompts); every prompt needs a token")
        vocab = self.config.vocab_size
        if min(min(p) for p in prompts) < 0 or max(max(p) for p in prompts) >= vocab:
            # an embedding lookup would clamp it to another token without a word
            i, t = next((i, t) for i, p in enumerate(prompts) for t in p if not 0 <= t < vocab)
            raise ValueError(f"prompt {i} has token id {t}, outside the model's vocabulary (0..{vocab - 1}): is the "
                             "tokenizer the model's own?")
        # a split only pays where the tail falls into a smaller bucket than the whole prompt (with coarse buckets
        # it would save no prefill and only lengthen the cache)
        heads = plan_prefixes(prompts, dc.prefix_block, lambda n, m: self.bucket_for(n - m) < self.bucket_for(n)) \
            if dc.prefix_cache else [0] * len(prompts)
        # per prompt: (head bucket, tail bucket); a prompt without a shared head is all tail
        shapes = [(self.bucket_for(m), self.bucket_for(len(p) - m)) if m else (0, self.bucket_for(len(p)))
                  for p, m in zip(prompts, heads)]
        head_users = collections.Counter(tuple(p[:m]) for p, m in zip(prompts, heads) if m)
        head_store: dict[tuple, dict] = {}  # head tokens -> its one-row cache, while prompts still need it
        # long layouts first; one shape's prompts together so that prefill groups fill up
        queue = sorted(range(len(prompts)), key=lambda i: (-sum(shapes[i]), shapes[i], i))
        # a speculative step writes `speculate` slots past its last kept token
        cache_len = max(sum(sh) for sh in shapes) + dc.max_new_tokens + dc.speculate
        cache = self._empty_cache(cache_len)
        tokens = np.zeros(B, np.int32)
        positions = np.zeros(B, np.int32)
        write_idx = np.zeros(B, np.int32)
        active = np.zeros(B, bool)
        # speculation drafts from each row's prompt and output so far (-1: empty)
        history = np.full((B, max(map(len, prompts)) + dc.max_new_tokens + dc.speculate + 1) if dc.speculate
                          else (B, 0), -1, np.int32)
        history_len = np.zeros(B, np.int32)
        slot_prompt = [-1] * B
        outputs: dict[int, list[int]] = {}
        t0 = time.perf_counter()
        while queue or active.any():
            free = [s for s in range(len(active)) if not active[s]]
            while queue and free:
                # one prefill group: prompts of the same layout, as many as the largest power of two that fits
                # prefill_batch, the free slots and the run of that layout in the queue (so the calls' row counts
                # are few, which bounds compilations, and no call computes filler rows: 5 prompts go as 4 + 1)
                shape = shapes[queue[0]]
                run = next((j for j, i in enumerate(queue) if shapes[i] != shape), len(queue))
                size = 1 << (min(dc.prefill_batch, len(free), run).bit_length() - 1)
                group, queue = queue[:size], queue[size:]
                first, gcache = self._prefill_group(prompts, group, heads, shape, cache_len, head_store, head_users)
                taken, free = free[:size], free[size:]
                cache = self._insert(cache, gcache, jnp.asarray(taken, jnp.int32))
                first = np.asarray(first)
                self.stats["prefill_calls"] += 1
                for r, (i, s) in enumerate(zip(group, taken)):
                    tok = int(first[r])
                    outputs[i] = [tok]
                    slot_prompt[s] = i
                    tokens[s] = tok
                    positions[s] = len(prompts[i])
                    write_idx[s] = sum(shape)
                    active[s] = tok not in self.stop_ids and dc.max_new_tokens > 1
                    if dc.speculate:
                        history[s] = -1
                        history[s, :len(prompts[i])] = prompts[i]
                        history[s, len(prompts[i])] = tok
                        history_len[s] = len(prompts[i]) + 1
                    if not active[s]:
                        yield self._finish(i, outputs.pop(i), slot_prompt, s)
            if not active.any():
                continue
            live = [int(x) for x in np.flatnonzero(active)]
            rows, length = self._shrink_plan(live, len(active), [shapes[slot_prompt[r]] for r in live],
                                             shapes[queue[0]] if queue else None, cache_len)
            if rows is not None:  # a smaller batch and/or a shorter cache from here on (see _shrink_plan)
                cache = self._compact(cache, jnp.asarray(rows, jnp.int32), length=length)
                n = len(live)
                tokens, positions, write_idx = tokens[rows], positions[rows], write_idx[rows]
                history, history_len = history[rows], history_len[rows]
                active = np.arange(len(rows)) < n  # rows past the live ones are idle (their slots are free)
                slot_prompt = [slot_prompt[r] for r in live] + [-1] * (len(rows) - n)
                cache_len = length
            self.compiled_shapes.add(("decode", len(active), cache_len))
            state = (jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(write_idx), jnp.asarray(active))
            if dc.speculate:
                cache, tok_d, pos_d, widx_d, act_d, hist_d, hlen_d, out, kept = self._chunk(
                    self.params, cache, *state, jnp.asarray(history), jnp.asarray(history_len))
                history, history_len = np.array(hist_d), np.array(hlen_d)
                self.stats["draft_tokens_kept"] += int(kept)
            else:
                cache, tok_d, pos_d, widx_d, act_d, out = self._chunk(self.params, cache, *state)
            self.stats["chunk_calls"] += 1
            out = np.asarray(out)
            tokens, positions, write_idx = np.array(tok_d), np.array(pos_d), np.array(widx_d)
            new_active = np.array(act_d)
            for s in range(len(active)):
                if not active[s]:
                    continue
                i = slot_prompt[s]
                done = False
                for t in out[s]:
                    if t < 0:  # nothing kept there (an inactive row, or a speculative step's unused slots)
                        continue
                    outputs[i].append(int(t))
                    if int(t) in self.stop_ids or len(outputs[i]) >= dc.max_new_tokens:
                        done = True
                        break
                if done or not new_active[s]:
                    active[s] = False
                    yield self._finish(i, outputs.pop(i), slot_prompt, s)
            if progress is not None:
                progress(self.stats["generated_tokens"], len(prompts) - len(queue) - int(active.sum()))
        self.stats["seconds"] += time.perf_counter() - t0

    def _shrink_plan(self, live: list[int], batch: int, live_shapes: list, next_shape, cache_len: int):
        """(rows, length) to shrink the decode batch and cache to, or (None, cache_len) to keep them: the new batch
        is the old one's `rows`, the live rows first.

        The queue runs longest layouts first, so the cache can shorten as it drains: once every live row and every
        queued prompt fits in three quarters of it (layout + max_new_tokens), it is cut to that. Once the queue is
        empty, the live rows move to the first slots of a batch of the next power of two (at least as many), so
        the last few prompts of a run do not pay for a full batch. Each shrink is one more compiled decode shape,
        at most a logarithmic number per run; the rows' tokens do not change (batch invariance)."""
        needed = (max(sum(sh) for sh in live_shapes + ([next_shape] if next_shape else []))
                  + self.dc.max_new_tokens + self.dc.speculate)
        length = needed if needed <= 0.75 * cache_len else cache_len
        size = batch
        if next_shape is None:
            size = min(batch, 1 << (len(live) - 1).bit_length())
        if size == batch and length == cache_len:
            return None, cache_len
        # the live rows first (the caller relies on it), then idle rows to fill the batch
        live_set = set(live)
        idle = [r for r in range(batch) if r not in live_set]
        return live + idle[:size - len(live)], length

    def _prefill_group(self, prompts, group, heads, shape, cache_len, head_store, head_users):
        """Prefill one group of prompts with the same layout: the whole prompt, or its tail behind a cached head."""
        dc = self.dc
        head_len, tail_len = shape
        P = len(group)  # a power of two (see stream)
        ids, pos, seg = _left_pad([(prompts[i][heads[i]:], heads[i]) for i in group], tail_len, dc.pad_id)
        self.stats["prefill_tokens"] += P * tail_len
        if not head_len:
            self.compiled_shapes.add(("prefill", tail_len, cache_len, P))
            return self._prefill(self.params, ids, pos, seg, cache_len=cache_len)
        rows = [self._head_cache(tuple(prompts[i][:heads[i]]), head_len, head_store, head_users) for i in group]
        self.compiled_shapes.add(("tail", head_len, tail_len, cache_len, P))
        return self._prefill_tail(self.params, _stack_rows(rows), ids, pos, seg, cache_len=cache_len)

    def _head_cache(self, head: tuple, head_len: int, head_store: dict, head_users: dict):
        """The one-row cache of a shared head (left-padded to `head_len`), computed at its first use and
        released after its last."""
        entry = head_store.get(head)
        if entry is None:
            ids, pos, seg = _left_pad([(head, 0)], head_len, self.dc.pad_id)
            _, cache = self._prefill(self.params, ids, pos, seg, cache_len=head_len)
            self.compiled_shapes.add(("head", head_len))
            self.stats["prefill_calls"] += 1
            self.stats["prefill_tokens"] += head_len
            entry = head_store[head] = {"cache": cache, "left": head_users[head]}
        self.stats["head_tokens_reused"] += len(head)
        entry["left"] -= 1
        if entry["left"] == 0:
            del head_store[head]
        return entry["cache"]

    def _finish(self, i: int, toks: list[int], slot_prompt: list[int], s: int) -> Result:
        slot_prompt[s] = -1
        reason = "stop" if toks and toks[-1] in self.stop_ids else "length"
        if reason == "stop":
            toks = toks[:-1]
        self.stats["generated_tokens"] += len(toks) + (reason == "stop")
        return Result(i, toks, reason)

    def generate(self, prompts: Sequence[Sequence[int]]) -> list[Result]:
        results = {r.index: r for r in self.stream(prompts)}
        return [results[i] for i in range(len(prompts))]


def shard_params(params, config: ModelConfig, mesh):
    from mnlu_jax.sharding import param_shardings

    return jax.device_put(params, param_shardings(config, mesh))


def cast_params(params, dtype: str):
    dt = to_dtype(dtype)
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dt), params)
