"""The Mistral/Llama decoder as pure functions over a parameter pytree in Hugging Face layout.

Parameters (layers stacked on a leading axis so `lax.scan` keeps compile time flat in depth):

    model.embed_tokens.weight                 (vocab, embed)            same as HF
    model.layers.input_layernorm.weight       (layers, embed)
    model.layers.self_attn.{q,k,v}_proj.kernel (layers, embed, heads*head_dim)   = HF weight.T
    model.layers.self_attn.o_proj.kernel      (layers, heads*head_dim, embed)
    model.layers.post_attention_layernorm.weight (layers, embed)
    model.layers.mlp.{gate,up}_proj.kernel    (layers, embed, mlp)
    model.layers.mlp.down_proj.kernel         (layers, mlp, embed)
    model.norm.weight                          (embed,)
    lm_head.kernel                             (embed, vocab)   absent when embeddings are tied

Conversion to and from HF is therefore rename + transpose + stack, with no Q/K permutation.

Attention takes per-token `positions` (RoPE and causality) and `segment_ids` (0 = padding), so packed
sequences, left or right padding and a KV cache all go through one mask:
    key visible  <=>  same segment, segment > 0, key_pos <= query_pos, query_pos - key_pos < window.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mnlu_jax.model.config import ModelConfig

Params = dict[str, Any]
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def to_dtype(name: str | Any) -> Any:
    if isinstance(name, str):
        if name not in DTYPES:
            raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
        return DTYPES[name]
    return name


# ---------------------------------------------------------------------------------------------
# Parameter shapes, logical axes and initialisation
# ---------------------------------------------------------------------------------------------
def param_shapes(config: ModelConfig) -> Params:
    """Nested dict of shapes, the single source of truth for layout (used by init, conversion, sharding)."""
    d, f, v, nl = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    q, kv = config.num_attention_heads * config.dim_per_head, config.kv_heads * config.dim_per_head
    shapes: Params = {
        "model": {
            "embed_tokens": {"weight": (v, d)},
            "layers": {
                "input_layernorm": {"weight": (nl, d)},
                "self_attn": {
                    "q_proj": {"kernel": (nl, d, q)},
                    "k_proj": {"kernel": (nl, d, kv)},
                    "v_proj": {"kernel": (nl, d, kv)},
                    "o_proj": {"kernel": (nl, q, d)},
                },
                "post_attention_layernorm": {"weight": (nl, d)},
                "mlp": {
                    "gate_proj": {"kernel": (nl, d, f)},
                    "up_proj": {"kernel": (nl, d, f)},
                    "down_proj": {"kernel": (nl, f, d)},
                },
            },
            "norm": {"weight": (d,)},
        }
    }
    if not config.tie_word_embeddings:
        shapes["lm_head"] = {"kernel": (d, v)}
    return shapes


def param_logical_axes(config: ModelConfig) -> Params:
    """Logical axis names for every parameter (mapped to mesh axes by train/sharding.py rules)."""
    axes: Params = {
        "model": {
            "embed_tokens": {"weight": ("vocab", "embed")},
            "layers": {
                "input_layernorm": {"weight": ("layers", "norm")},
                "self_attn": {
                    "q_proj": {"kernel": ("layers", "embed", "heads")},
                    "k_proj": {"kernel": ("layers", "embed", "kv_heads")},
                    "v_proj": {"kernel": ("layers", "embed", "kv_heads")},
                    "o_proj": {"kernel": ("layers", "heads", "embed")},
                },
                "post_attention_layernorm": {"weight": ("layers", "norm")},
                "mlp": {
                    "gate_proj": {"kernel": ("layers", "embed", "mlp")},
                    "up_proj": {"kernel": ("layers", "embed", "mlp")},
                    "down_proj": {"kernel": ("layers", "mlp", "embed")},
                },
            },
            "norm": {"weight": ("norm",)},
        }
    }
    if not config.tie_word_embeddings:
        axes["lm_head"] = {"kernel": ("embed", "vocab")}
    return axes


def init_params(config: ModelConfig, key: jax.Array, dtype: Any = None) -> Params:
    """Random init as in HF (normal, std 0.02; norms at 1)."""
    dtype = to_dtype(dtype or config.param_dtype)
    shapes = param_shapes(config)
    leaves, treedef = jax.tree_util.tree_flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))[0]]
    keys = jax.random.split(key, len(leaves))
    out = []
    for k, shape, path in zip(keys, leaves, paths):
        name = jax.tree_util.keystr(path)
        if "norm" in name:
            out.append(jnp.ones(shape, dtype))
        else:
            out.append((0.02 * jax.random.normal(k, shape, jnp.float32)).astype(dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------
def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    # As HF: normalise in fp32, cast back, then scale.
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * xf.astype(x.dtype)


def rope_frequencies(config: ModelConfig) -> np.ndarray:
    """RoPE's inverse frequencies (head_dim/2,) in fp32, as transformers computes them (modeling_rope_utils):
    theta^(-2i/d), divided by `factor` for "linear" scaling; for "llama3" scaling (Llama 3.1+) wavelengths longer
    than original_max_position_embeddings / low_freq_factor are divided by `factor`, shorter than
    .../high_freq_factor kept, and those between interpolated. Fixed per model: no sequence-length dependence."""
    hd = config.dim_per_head
    inv_freq = 1.0 / (np.float32(config.rope_theta) ** (np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd)))
    scaling = dict(config.rope_scaling or ())
    kind = scaling.get("rope_type")
    if kind == "linear":
        inv_freq = inv_freq / np.float32(scaling["factor"])
    elif kind == "llama3":
        factor = np.float32(scaling["factor"])
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        # scalar / tensor in torch is reciprocal(tensor) * scalar: written the same way for the same rounding
        wavelen = (1 / inv_freq) * np.float32(2 * np.pi)
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = ((1 / wavelen) * np.float32(old_len) - np.float32(low)) / np.float32(high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
        inv_freq = np.where(medium, smoothed, scaled)
    elif kind is not None:
        raise ValueError(f"rope_scaling type {kind!r} is not supported")
    return inv_freq.astype(np.float32)


def rope_tables(positions: jax.Array, inv_freq: np.ndarray, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """cos/sin (B, T, head_dim) for `positions` (B, T) and `rope_frequencies(config)`."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, T, hd/2)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    # x: (B, T, heads, hd); HF's rotate_half convention (no interleaving, no permutation).
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def attention_mask(q_pos, q_seg, k_pos, k_seg, sliding_window: int | None) -> jax.Array:
    """(B, T, S) boolean: which keys each query may attend to."""
    qp, qs = q_pos[:, :, None], q_seg[:, :, None]
    kp, ks = k_pos[:, None, :], k_seg[:, None, :]
    mask = (ks == qs) & (ks > 0) & (kp <= qp)
    if sliding_window is not None:
        mask = mask & (qp - kp < sliding_window)
    return mask


def attend(q, k, v, mask) -> jax.Array:
    """Grouped-query attention on projected keys/values, as one full masked product (the reference the blocked
    and cuDNN paths are tested against). q: (B,T,H,hd); k,v: (B,S,KVH,hd); mask: (B,T,S)."""
    return attend_cache(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask)


def attend_causal_blocks(q, k, v, mask, sliding_window: int | None = None, max_blocks: int = 16) -> jax.Array:
    """attend() for cache-free calls, one block of queries at a time against only the keys it can see.

    A key at a later index than its query is never visible, and with a sliding window neither is one `window` or
    more indices earlier, whenever positions rise along each segment (packed, left- or right-padded rows: every
    cache-free call; the cuDNN path assumes the same). So queries [s, e) need keys [s - window + 1, e) only: about
    half the score work for causal rows, and score blocks small enough to stay in cache. Same numbers as the full
    product (the skipped keys would get exactly zero weight), except on rows with no visible key at all (padding,
    which carries no loss and is seen by no real token). On 2 CPU cores, attention forward + backward for
    8 x 256 tokens, 8 query / 2 key-value heads: 70 -> 35 ms; 2 x 1024 tokens: 364 -> 127 ms."""
    t = q.shape[1]
    block = max(32, -(-t // max_blocks))
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    outs = []
    for start in range(0, t, block):
        end = min(start + block, t)
        first = 0 if sliding_window is None else max(0, start - sliding_window + 1)
        outs.append(attend_cache(q[:, start:end], k[:, :, first:end], v[:, :, first:end], mask[:, start:end, first:end]))
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


def segment_runs(segment_ids: jax.Array, max_runs: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The maximal runs of equal segment id in each row, in cuDNN's packed layout: run lengths (B, max_runs),
    run start offsets (B, max_runs + 1), both -1 past a row's last run, and each row's number of runs (B,).

    Every token lies in one run (padding, segment 0, is a run of its own), so no output is left unwritten; a row
    with more than `max_runs` runs is reported by the count and must not take the packed path."""
    b, t = segment_ids.shape
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
                             axis=1)
    count = starts.sum(axis=1, dtype=jnp.int32)
    offsets = jax.vmap(lambda s: jnp.nonzero(s, size=max_runs + 1, fill_value=t)[0])(starts).astype(jnp.int32)
    lengths = offsets[:, 1:] - offsets[:, :-1]
    index = jnp.arange(max_runs + 1, dtype=jnp.int32)[None, :]
    offsets = jnp.where(index < count[:, None], offsets, -1)
    lengths = jnp.where(index[:, :-1] < count[:, None], lengths, -1)
    return lengths, offsets, count


def max_runs_per_row(segment_ids: np.ndarray) -> int:
    """`segment_runs`' count on the host: the most runs of equal segment ids (packed documents, and padding) in
    any row of a (B, T) batch, what cuDNN's packed layout must hold (model.packed_attention_runs)."""
    return int((1 + np.sum(segment_ids[:, 1:] != segment_ids[:, :-1], axis=1)).max()) if segment_ids.size else 0


def on_nvidia_gpu() -> bool:
    """Whether JAX's default backend is CUDA (cuDNN's home), not ROCm, a TPU or the CPU."""
    return jax.default_backend() == "gpu" and "cuda" in jax.devices()[0].client.platform_version.lower()


def cudnn_packed_attention_api():
    """JAX's cuDNN attention entry point with packed-layout support (private API), or None where unavailable:
    a JAX without it, or a GPU older than Hopper (cuDNN packs sequences on compute capability 9.0+ only)."""
    try:
        from jax._src.cudnn.fused_attention_stablehlo import MaskType, dot_product_attention
    except ImportError:
        return None
    if not on_nvidia_gpu() or float(jax.devices()[0].compute_capability) < 9.0:
        return None
    return dot_product_attention, MaskType.PADDING_CAUSAL


def attend_flash(q, k, v, q_seg, k_seg, sliding_window: int | None, implementation: str = "cudnn",
                 packed_runs: int = 16) -> jax.Array:
    """cuDNN flash attention for cache-free calls (training batches: packed or right-padded rows).

    Causality is by index, which equals causality by position when positions increase within each segment
    (true for packed and right-padded rows; left-padded decoding goes through the cache path instead).
    Padding tokens (segment 0) attend among themselves so that no softmax row is empty (an empty row would
    give NaN, and 0 * NaN poisons the loss); their outputs carry zero loss weight and real tokens never see them.

    On Hopper GPUs, self-attention over one set of segments runs in cuDNN's packed layout when every row has at
    most `packed_runs` runs of equal segment ids (each run attends causally within itself: the same visibility as
    the mask, given contiguous segments as the packer writes them), else with the segment mask: a lax.cond on the
    device. The packed kernel skips the key blocks of other documents; its cost grows with the static run slots.
    On an H100 (benchmarks/attention_packed.py), forward + backward for 8 x 2048 tokens, 16 query / 4 key-value
    heads of 128, documents averaging 400 tokens (≤ 11 runs a row): 2.60 ms masked, 1.43 / 1.94 / 2.87 ms with
    16 / 32 / 64 slots; averaging 100 tokens (29 runs): 2.69 ms masked, 1.81 / 2.97 ms with 32 / 64 slots."""
    b, t, h, hd = q.shape
    window = (sliding_window - 1, 0) if sliding_window is not None and sliding_window < k.shape[1] else None

    def masked(q, k, v):
        mask = (q_seg[:, :, None] == k_seg[:, None, :])[:, None]  # (B, 1, T, S), broadcast over heads
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, local_window_size=window,
                                            implementation=implementation)

    packed_api = cudnn_packed_attention_api() if implementation == "cudnn" and q_seg is k_seg and packed_runs else None
    if packed_api is None:
        return masked(q, k, v).reshape(b, t, h * hd)
    sdpa, mask_type = packed_api

    lengths, offsets, count = segment_runs(q_seg, packed_runs)

    def packed(q, k, v):
        return sdpa(q, k, v, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=offsets, kv_offsets=offsets,
                    scale=1.0 / np.sqrt(hd), mask_type=mask_type,
                    sliding_window_length=None if window is None else sliding_window)

    out = jax.lax.cond(jnp.max(count) <= packed_runs, packed, masked, q, k, v)
    return out.reshape(b, t, h * hd)


ATTENTION_IMPLS = ("xla", "cudnn", "auto")


def resolve_attention_impl(config: ModelConfig) -> str:
    """"auto": cuDNN flash attention where it runs (an NVIDIA GPU, bf16 or fp16 compute), else XLA's, so one
    config serves GPU clusters, TPU pods and CPUs."""
    if config.attention_impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl {config.attention_impl!r}: expected one of {ATTENTION_IMPLS}")
    if config.attention_impl != "auto":
        return config.attention_impl
    return "cudnn" if on_nvidia_gpu() and config.compute_dtype in ("bfloat16", "float16") else "xla"


def unstack_layers(params: Params, fuse: bool = True) -> Params:
    """Stacked layers (L, ...) -> a list of L per-layer pytrees, for an unrolled layer loop (decoding).

    At small batch a decode step reads every weight once per token, so it is bound by memory bandwidth: with
    per-layer buffers each matmul reads its weight in place (slicing a stacked array inside a loop may copy the
    slice first), and with `fuse` Q/K/V become one (embed, q+2kv) matrix and gate/up one (embed, 2*mlp) matrix,
    so a layer runs four weight-streaming matmuls instead of seven, each long enough to reach full bandwidth.
    The split outputs are the same numbers (each output column is its own dot product)."""
    layers = params["model"]["layers"]
    if isinstance(layers, (list, tuple)):
        return params
    n = jax.tree_util.tree_leaves(layers)[0].shape[0]
    per_layer = []
    for i in range(n):
        lp = jax.tree_util.tree_map(lambda x: x[i], layers)
        if fuse:
            a, mp = lp["self_attn"], lp["mlp"]
            qkv = jnp.concatenate([a["q_proj"]["kernel"], a["k_proj"]["kernel"], a["v_proj"]["kernel"]], axis=-1)
            gate_up = jnp.concatenate([mp["gate_proj"]["kernel"], mp["up_proj"]["kernel"]], axis=-1)
            lp = {**lp, "self_attn": {"qkv_proj": {"kernel": qkv}, "o_proj": a["o_proj"]},
                  "mlp": {"gate_up_proj": {"kernel": gate_up}, "down_proj": mp["down_proj"]}}
        per_layer.append(lp)
    return {**params, "model": {**params["model"], "layers": per_layer}}


def unstack_for_loop(layers: Params, n: int) -> list[Params]:
    """Stacked layers (n, ...) -> n per-layer pytrees for a traced Python loop, by `lax.split`, whose transpose is
    a concatenation (see forward's loop)."""
    leaves, treedef = jax.tree_util.tree_flatten(layers)
    pieces = [[p[0] for p in jax.lax.split(x, (1,) * n, axis=0)] for x in leaves]
    return [jax.tree_util.tree_unflatten(treedef, [p[i] for p in pieces]) for i in range(n)]


def transposed_matmul(a: jax.Array, b: jax.Array, preferred_element_type: Any = None) -> jax.Array:
    """a^T @ b for a: (tokens, m), b: (tokens, n): the weight-gradient product, a sum over tokens.

    Written as a dot over the leading axes of both operands, XLA:CPU runs it 1.3-2.3x slower than the same
    product with `a` explicitly transposed first (2-core CPU, 2048 tokens: 256 x 768 10.8 -> 8.3 ms,
    256 x 8192 169 -> 73 ms). XLA folds a plain transpose back into the dot's dimension numbers, so the
    transposed operand goes through an optimization barrier. The transpose is a real copy (≈ 40 ms of a
    ≈ 0.9 s step in the CPU train benchmark's profile), paid back by the faster products. Same products; the
    summation order, and so the last bits, may differ.

    On GPUs and TPUs the plain contraction is kept: cuBLAS and the TPU compiler take either operand transposed at
    full speed, and the barrier would only force a copy."""
    if jax.default_backend() != "cpu":
        return jnp.einsum("tm,tn->mn", a, b, preferred_element_type=preferred_element_type)
    return jnp.matmul(jax.lax.optimization_barrier(a.T), b, preferred_element_type=preferred_element_type)


@jax.custom_vjp
def dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x @ kernel (x: (..., in), kernel: (in, out)), with the weight gradient contracted as x^T @ dy.

    Autodiff of `x @ kernel` writes the weight gradient as a product whose output XLA:CPU then transposes, which
    puts a transposed copy of the (tokens x out) output gradient in front of the matmul, fused with whatever
    elementwise backward produced it (SiLU's, for the MLP) and slow in that access order. Asking for x^T @ dy
    directly leaves XLA only the (tokens x in) input to lay out. Same products, same numbers; 2-core CPU, MLP
    forward + backward for 2048 tokens x 256 -> 768: no transposed copies left, 108-113 -> 81-95 ms."""
    return x @ kernel


def _dense_fwd(x, kernel):
    return x @ kernel, (x, kernel)


def _dense_bwd(residuals, grad_out):
    x, kernel = residuals
    grad_kernel = transposed_matmul(x.reshape(-1, x.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1]))
    grad_x = jnp.einsum("...f,df->...d", grad_out, kernel)
    return grad_x, grad_kernel


dense.defvjp(_dense_fwd, _dense_bwd)


def _save_dots_and_fused_attention(prim, *args, **params) -> bool:
    """save_dots' policy: keep the weight matmuls' outputs, and cuDNN's fused attention forward (output and softmax
    statistics). That attention is a custom call, not a dot: under the plain dots policy its forward ran a second
    time in the backward pass (36 forward kernels for 18 layers in a 1B-parameter step's H100 profile)."""
    return (prim.name == "dot_product_attention_fwd_wrapper"
            or jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims(prim, *args, **params))


REMAT_POLICIES = ("none", "full", "save_dots")


def _remat(fn, policy: str):
    if policy == "none":
        return fn
    if policy == "full":
        return jax.checkpoint(fn)
    if policy == "save_dots":
        return jax.checkpoint(fn, policy=_save_dots_and_fused_attention)
    raise ValueError(f"remat_policy {policy!r}: expected one of {REMAT_POLICIES}")


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------
def init_cache(config: ModelConfig, batch: int, length: int, dtype: Any = None, per_layer: bool = False) -> Params:
    """An empty KV cache: keys/values per layer plus each slot's position and segment (0 = empty).

    Keys/values are laid out (layers, batch, kv_heads, length, head_dim): attention contracts over head_dim
    (scores) and length (values) with batch and kv_heads as batch dimensions, so this layout feeds both
    matmuls as stored, without transposing the cache at every step. With `per_layer` (for unrolled layers,
    see unstack_layers) "k" and "v" are lists of per-layer (batch, kv_heads, length, head_dim) buffers, which
    attention reads in place instead of slicing them out of a stacked array."""
    dtype = to_dtype(dtype or config.compute_dtype)
    shape = (batch, config.kv_heads, length, config.dim_per_head)
    if per_layer:
        kv = {n: [jnp.zeros(shape, dtype) for _ in range(config.num_hidden_layers)] for n in ("k", "v")}
    else:
        kv = {n: jnp.zeros((config.num_hidden_layers,) + shape, dtype) for n in ("k", "v")}
    return {
        **kv,
        "pos": jnp.zeros((batch, length), jnp.int32),
        "seg": jnp.zeros((batch, length), jnp.int32),
    }


def _write(buf: jax.Array, new: jax.Array, index: jax.Array | int) -> jax.Array:
    """Write `new` (B, T, ...) into `buf` (B, S, ...) at slot `index`: one int for all rows, or one per row."""
    index = jnp.asarray(index, jnp.int32)
    zeros = (0,) * (buf.ndim - 2)
    if index.ndim == 0:
        return jax.lax.dynamic_update_slice(buf, new, (jnp.int32(0), index) + zeros)
    return jax.vmap(lambda b, n, i: jax.lax.dynamic_update_slice(b, n, (i,) + zeros))(buf, new, index)


def _write_layer(buf: jax.Array, new: jax.Array, layer: jax.Array | int | None, index: jax.Array | int) -> jax.Array:
    """Write `new` (B, T, KVH, hd) into layer `layer` of `buf` (L, B, KVH, S, hd) at slot `index` (int or per row);
    with `layer` None, `buf` is one layer's (B, KVH, S, hd) buffer.

    Only the new tokens are written (a scatter into the loop-carried buffer, done in place by XLA), never the
    whole layer slice: decoding costs O(new tokens), not O(cache), in cache writes."""
    index = jnp.asarray(index, jnp.int32)
    b, t, kvh = new.shape[:3]
    slots = (index[:, None] if index.ndim == 1 else index) + jnp.arange(t, dtype=jnp.int32)[None, :]
    slots = jnp.broadcast_to(slots, (b, t))[:, None, :]                      # (B, 1, T)
    rows = jnp.arange(b, dtype=jnp.int32)[:, None, None]                      # (B, 1, 1)
    heads = jnp.arange(kvh, dtype=jnp.int32)[None, :, None]                   # (1, KVH, 1)
    idx = (rows, heads, slots) if layer is None else (layer, rows, heads, slots)
    return buf.at[idx].set(new.transpose(0, 2, 1, 3), mode="drop")


def attend_cache(q, k, v, mask) -> jax.Array:
    """Grouped-query attention with keys/values in the cache's layout. q: (B,T,H,hd); k,v: (B,KVH,S,hd);
    mask: (B,T,S)."""
    b, t, h, hd = q.shape
    kvh = k.shape[1]
    if t == 1:
        return _attend_one_query(q, k, v, mask)
    q = q.reshape(b, t, kvh, h // kvh, hd)
    scores = jnp.einsum("btkgd,bksd->bkgts", q, k, preferred_element_type=jnp.float32) / np.sqrt(hd)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bksd->btkgd", probs, v)
    return out.reshape(b, t, h * hd)


def _attend_one_query(q, k, v, mask) -> jax.Array:
    """attend_cache for one new token per row (a decode step), as broadcast multiplies and reductions.

    With one query the two attention contractions are (batch x kv_heads) independent (group x head_dim) @
    (head_dim x length) products, too small for a matmul kernel. As broadcast products with reductions XLA
    fuses them into loops that stream each cached key and value once: on 2 CPU cores a SmolLM2 decode step at
    batch 32 takes 121 instead of 129 ms with a 112-slot cache, 176 instead of 260 ms with 512 slots. Same
    math; only the summation order of the head_dim and length reductions differs."""
    b, _, h, hd = q.shape
    kvh = k.shape[1]
    q = q.reshape(b, kvh, h // kvh, 1, hd).astype(jnp.float32)
    scores = jnp.sum(q * k[:, :, None].astype(jnp.float32), axis=-1) / np.sqrt(hd)      # (B, KVH, G, S)
    scores = jnp.where(mask[:, 0][:, None, None, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.sum(probs[..., None] * v[:, :, None].astype(jnp.float32), axis=-2)            # (B, KVH, G, hd)
    return out.reshape(b, 1, h * hd).astype(v.dtype)


def forward(
    params: Params,
    config: ModelConfig,
    input_ids: jax.Array,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    cache: Params | None = None,
    cache_index: jax.Array | int = 0,
    return_hidden: bool = False,
    last_only: bool = False,
) -> tuple[jax.Array, Params | None]:
    """Logits (B, T, vocab) in fp32 (B, 1, vocab with `last_only`), and the updated cache when one is given.

    With a cache, the T new tokens are written at slots [cache_index, cache_index + T) of every row (or of
    row b at [cache_index[b], …) when `cache_index` has shape (B,), as continuous batching needs) and
    the queries attend over the whole cache (empty slots have segment 0 and are masked out).
    """
    b, t = input_ids.shape
    dtype = to_dtype(config.compute_dtype)
    attention_impl = resolve_attention_impl(config)
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if segment_ids is None:
        segment_ids = jnp.ones((b, t), jnp.int32)
    positions = positions.astype(jnp.int32)
    segment_ids = segment_ids.astype(jnp.int32)
    m = params["model"]
    h = jnp.take(m["embed_tokens"]["weight"], input_ids, axis=0).astype(dtype)
    cos, sin = rope_tables(positions, rope_frequencies(config), dtype)
    nh, kvh, hd = config.num_attention_heads, config.kv_heads, config.dim_per_head

    if cache is not None:
        k_pos = _write(cache["pos"], positions, cache_index)
        k_seg = _write(cache["seg"], segment_ids, cache_index)
    else:
        k_pos, k_seg = positions, segment_ids
    # The cuDNN path builds its own (segment-only) mask; XLA never materialises an unused one.
    mask = attention_mask(positions, segment_ids, k_pos, k_seg, config.sliding_window)

    def layer(carry, xs):
        h, ck_all, cv_all = carry
        lp, i = xs
        a = lp["self_attn"]
        x = rms_norm(h, lp["input_layernorm"]["weight"], config.rms_norm_eps)
        if "qkv_proj" in a:  # fused for decoding (unstack_layers)
            qkv = x @ a["qkv_proj"]["kernel"].astype(dtype)
            q, k, v = jnp.split(qkv, [nh * hd, (nh + kvh) * hd], axis=-1)
            q, k, v = q.reshape(b, t, nh, hd), k.reshape(b, t, kvh, hd), v.reshape(b, t, kvh, hd)
        else:
            q = dense(x, a["q_proj"]["kernel"].astype(dtype)).reshape(b, t, nh, hd)
            k = dense(x, a["k_proj"]["kernel"].astype(dtype)).reshape(b, t, kvh, hd)
            v = dense(x, a["v_proj"]["kernel"].astype(dtype)).reshape(b, t, kvh, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if ck_all is not None:
            ck_all = _write_layer(ck_all, k.astype(ck_all.dtype), i, cache_index)
            cv_all = _write_layer(cv_all, v.astype(cv_all.dtype), i, cache_index)
            ck, cv = (ck_all, cv_all) if i is None else (ck_all[i], cv_all[i])  # None: per-layer buffers
            o = attend_cache(q, ck.astype(dtype), cv.astype(dtype), mask)
        elif attention_impl == "cudnn":
            o = attend_flash(q, k, v, segment_ids, segment_ids, config.sliding_window,
                             packed_runs=config.packed_attention_runs)
        else:
            o = attend_causal_blocks(q, k, v, mask, config.sliding_window)
        o = dense(o, a["o_proj"]["kernel"].astype(dtype))
        h = h + o
        x = rms_norm(h, lp["post_attention_layernorm"]["weight"], config.rms_norm_eps)
        mp = lp["mlp"]
        if "gate_up_proj" in mp:
            gate, up = jnp.split(x @ mp["gate_up_proj"]["kernel"].astype(dtype), 2, axis=-1)
        else:
            gate, up = dense(x, mp["gate_proj"]["kernel"].astype(dtype)), dense(x, mp["up_proj"]["kernel"].astype(dtype))
        h = h + dense(jax.nn.silu(gate) * up, mp["down_proj"]["kernel"].astype(dtype))
        return (h, ck_all, cv_all), None

    layer = _remat(layer, config.remat_policy)
    layers = m["layers"]
    if cache is not None and isinstance(cache["k"], (list, tuple)) and not isinstance(layers, (list, tuple)):
        raise ValueError("a per-layer KV cache needs per-layer weights (unstack_layers); got stacked layers")
    carry = (h, cache["k"] if cache is not None else None, cache["v"] if cache is not None else None)
    if isinstance(layers, (list, tuple)) and cache is not None and isinstance(cache["k"], (list, tuple)):
        h, ks, vs = carry[0], list(carry[1]), list(carry[2])  # per-layer weights and per-layer cache buffers
        for i, lp in enumerate(layers):
            (h, ks[i], vs[i]), _ = layer((h, ks[i], vs[i]), (lp, None))
        carry = (h, ks, vs)
    elif isinstance(layers, (list, tuple)):  # unstacked (see unstack_layers): unrolled, each weight its own buffer
        for i, lp in enumerate(layers):
            carry, _ = layer(carry, (lp, i))
    elif config.scan_layers:
        carry, _ = jax.lax.scan(layer, carry, (layers, jnp.arange(config.num_hidden_layers, dtype=jnp.int32)))
    else:
        # One split of each stacked weight, not a slice per layer: the gradient of L slices is L zero-padded
        # full-size arrays summed (SmolLM2's 30 layers: 12 GiB of XLA scratch and 18 s a step on 2 CPU cores),
        # the gradient of a split is one concatenation (4 GiB, 10 s).
        per_layer = unstack_for_loop(layers, config.num_hidden_layers)
        for i in range(config.num_hidden_layers):
            carry, _ = layer(carry, (per_layer[i], i))
    h, ck_all, cv_all = carry

    if last_only:
        h = h[:, -1:]
    h = rms_norm(h, m["norm"]["weight"], config.rms_norm_eps)
    if return_hidden:
        logits = h
    elif config.tie_word_embeddings:
        logits = (h @ m["embed_tokens"]["weight"].astype(dtype).T).astype(jnp.float32)
    else:
        logits = (h @ params["lm_head"]["kernel"].astype(dtype)).astype(jnp.float32)
    new_cache = None
    if cache is not None:
        new_cache = {"k": ck_all, "v": cv_all, "pos": k_pos, "seg": k_seg}
    return logits, new_cache
