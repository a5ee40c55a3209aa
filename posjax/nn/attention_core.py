"""Masked softmax attention with positional logits, computed by interchangeable backends.

All backends compute, for query i and key j (grouped-query: query head h reads key head h // R),

    logits[b, h, i, j] = scale · q[b, i, h] · k[b, j, h // R] + extra[b, h, i, j]
    out[b, i, h] = Σ_j softmax_j(masked logits) · v[b, j, h // R]

where `extra` is what the positional hooks add (bias and content terms) and the mask keeps key j
for query i when both are in the same non-padding segment and, if causal, k_pos ≤ q_pos. Masks use
the explicit positions, not array indices, so a KV cache, packing and randomized positions all work.

`extra_fn(q_BcHD, q_pos_BQc, keys=None) -> [B, H, Qc, Kc] | None` evaluates the positional terms
for a block of queries against the keys it was made for (`keys=None`) or against a block of them
(`keys`: a `Keys` of the block's keys and positions). The chunked backend calls it per block of
queries and keys, so evaluating at 32× the training length never builds a full `[B, H, L, L]`
array. A two-argument `extra_fn` (all keys only) serves the xla and cudnn backends.

`value_fn(probs_BHQcKc, q_pos_BQc, keys=None) -> [B, Qc, H, D]` is a positional term on the output
side (Shaw et al.'s relative values): it is added to Σ_j probs · v_j, per block like `extra_fn`.
It must be linear in `probs` (the chunked backend hands it unnormalized blocks and rescales the
sum). It needs the probabilities themselves, so only the backends that form them (xla, chunked)
take it. `attention_probs` is the one implementation of logits, mask and softmax of the xla
backend and `Attention.weights`; the chunked backend computes the same softmax blockwise.

The `fused` backend (`posjax.kernels`) takes the bias hook itself instead, as a `ScoreMod`, and
evaluates it per tile inside a Pallas flash-attention kernel; it serves schemes whose only extra
logits are a bias (ALiBi, T5, KERPLE, Sandwich, FIRE) and schemes with none (NoPE, RoPE).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from posjax.kernels import ScoreMod, fused_attention, fused_by_default


class Keys(NamedTuple):
  """A block of keys, in the form the positional hooks take them: `k_BKGD` as attention sees
  them (after any rotation) and their positions."""
  k_BKGD: jax.Array
  pos_BK: jax.Array


ExtraFn = Callable[..., Optional[jax.Array]]  # (q_BQHD, q_pos_BQ, keys=None) -> [B, H, Q, K]
ValueFn = Callable[..., jax.Array]  # (probs_BHQK, q_pos_BQ, keys=None) -> [B, Q, H, D]
BACKENDS = ("auto", "xla", "chunked", "cudnn", "fused")
BACKENDS_WITHOUT_PROBS = ("cudnn", "fused")  # they never form the probabilities: no `value_fn`
# `auto` takes the chunked backend from Q·K of this many elements: on CPU it is faster than xla
# from L = 1024 (experiments/bench/RESULTS.md, "CPU"); elsewhere from beyond 2048².
CHUNKED_FROM_ELEMENTS = {"cpu": 1024 * 1024}
CHUNKED_FROM_ELEMENTS_DEFAULT = 2048 * 2048 + 1


def attention_mask(q_pos_BQ, k_pos_BK, q_seg_BQ, k_seg_BK, *, causal: bool) -> jax.Array:
  """`[B, 1, Q, K]` bool: key j is visible to query i. Segment 0 is padding and never visible."""
  mask = (k_seg_BK[:, None, :] != 0) & (q_seg_BQ[:, :, None] == k_seg_BK[:, None, :])
  if causal:
    mask &= k_pos_BK[:, None, :] <= q_pos_BQ[:, :, None]
  return mask[:, None]


def _grouped_logits(q_BQHD, k_BKGD):
  """float32 `[B, H, Q, K]` q · k; query head h reads key head h // R (R = H // G).

  The R query heads of a group are folded into the query axis, so that this is one batched
  matmul per (batch, key head) whose output already has the `[B, H, Q, K]` layout: written as a
  5-D grouped einsum instead, XLA:CPU transposes the whole logits array (and materializes extra
  `[B, H, Q, K]` buffers in the backward pass).
  """
  batch, q_len, heads, _ = q_BQHD.shape
  k_len, groups = k_BKGD.shape[1], k_BKGD.shape[2]
  logits = jnp.einsum("bgmd,bkgd->bgmk", _fold_heads(q_BQHD, groups), k_BKGD,
                      preferred_element_type=jnp.float32)
  return logits.reshape(batch, heads, q_len, k_len)


def _grouped_values(probs_BHQK, v_BKGD, dtype=None):
  """`[B, Q, H, D]` Σ_k probs · v (probs cast to v's dtype), in `dtype` (default v's); query
  head h reads value head h // R, folded as in `_grouped_logits`."""
  batch, heads, q_len, k_len = probs_BHQK.shape
  groups = v_BKGD.shape[2]
  probs_BGMK = probs_BHQK.astype(v_BKGD.dtype).reshape(batch, groups, -1, k_len)
  out_BGMD = jnp.einsum("bgmk,bkgd->bgmd", probs_BGMK, v_BKGD, preferred_element_type=dtype)
  return _unfold_heads(out_BGMD, heads, q_len)


def _fold_heads(x_BQHD, groups: int):
  """`[B, G, R·Q, D]`: the R = H / G heads of each group stacked along the query axis."""
  batch, q_len, heads, dim = x_BQHD.shape
  x = x_BQHD.reshape(batch, q_len, groups, heads // groups, dim)
  return jnp.transpose(x, (0, 2, 3, 1, 4)).reshape(batch, groups, -1, dim)


def _unfold_heads(x_BGMD, heads: int, q_len: int):
  """The inverse of `_fold_heads`: `[B, Q, H, D]`."""
  batch, groups, _, dim = x_BGMD.shape
  x = x_BGMD.reshape(batch, groups, heads // groups, q_len, dim)
  return jnp.transpose(x, (0, 3, 1, 2, 4)).reshape(batch, q_len, heads, dim)


def attention_probs(q_BQHD, k_BKGD, *, q_pos_BQ, k_pos_BK, q_seg_BQ, k_seg_BK, causal, scale,
                    extra_fn: Optional[ExtraFn] = None) -> jax.Array:
  """float32 `[B, H, Q, K]` probabilities: softmax over the visible keys of the logits above.

  A query that sees no key at all (padding) gets zeros, not a uniform average.
  """
  logits = _grouped_logits(q_BQHD, k_BKGD) * scale
  if extra_fn is not None:
    extra = extra_fn(q_BQHD, q_pos_BQ)
    if extra is not None:
      logits = logits + extra.astype(jnp.float32)
  mask = attention_mask(q_pos_BQ, k_pos_BK, q_seg_BQ, k_seg_BK, causal=causal)
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  return jnp.where(jnp.any(mask, axis=-1, keepdims=True), probs, 0.0)


def xla_attention(q_BQHD, k_BKGD, v_BKGD, *, q_pos_BQ, k_pos_BK, q_seg_BQ, k_seg_BK, causal,
                  scale, extra_fn: Optional[ExtraFn] = None,
                  value_fn: Optional[ValueFn] = None) -> jax.Array:
  """The reference: materializes `[B, H, Q, K]` logits in float32."""
  probs_BHQK = attention_probs(q_BQHD, k_BKGD, q_pos_BQ=q_pos_BQ, k_pos_BK=k_pos_BK,
                               q_seg_BQ=q_seg_BQ, k_seg_BK=k_seg_BK, causal=causal, scale=scale,
                               extra_fn=extra_fn)
  out_BQHD = _grouped_values(probs_BHQK, v_BKGD)
  if value_fn is not None:
    out_BQHD = out_BQHD + value_fn(probs_BHQK, q_pos_BQ).astype(out_BQHD.dtype)
  return out_BQHD


def chunked_attention(q_BQHD, k_BKGD, v_BKGD, *, q_pos_BQ, k_pos_BK, q_seg_BQ, k_seg_BK, causal,
                      scale, extra_fn: Optional[ExtraFn] = None,
                      value_fn: Optional[ValueFn] = None, chunk_size: int = 512):
  """The softmax of `xla_attention` over blocks of `chunk_size` queries × `chunk_size` keys.

  Memory O(chunk · (Q + K)) instead of O(Q · K). Each block of queries runs an online softmax
  (Milakov & Gimelshein 2018) over the blocks of keys, and skips every key block that none of its
  queries can see: for a causal model the blocks past the diagonal, about half the work. Skipping
  is decided from the actual positions and segments (`_visible_blocks`), so KV-cache offsets,
  packing, padding and randomized positions skip exactly what their mask hides. Results equal
  `xla_attention`'s to float rounding. Up to `chunk_size` queries (a decode step, say) go to
  `xla_attention` whole.
  """
  q_len, k_len = q_BQHD.shape[1], k_BKGD.shape[1]
  if q_len <= chunk_size:
    return xla_attention(q_BQHD, k_BKGD, v_BKGD, q_pos_BQ=q_pos_BQ, k_pos_BK=k_pos_BK,
                         q_seg_BQ=q_seg_BQ, k_seg_BK=k_seg_BK, causal=causal, scale=scale,
                         extra_fn=extra_fn, value_fn=value_fn)
  q_chunk, k_chunk = chunk_size, min(chunk_size, k_len)
  q_blocks = [_blocks(x, q_chunk) for x in (q_BQHD, q_pos_BQ, q_seg_BQ)]
  k_blocks = [_blocks(x, k_chunk) for x in (k_BKGD, v_BKGD, k_pos_BK, k_seg_BK)]
  visible_NqNk = _visible_blocks(*q_blocks[1:], *k_blocks[2:], causal=causal)

  def one_query_block(args):
    q, q_pos, q_seg, visible_Nk = args
    return _attend_key_blocks(q, q_pos, q_seg, k_blocks, visible_Nk, causal=causal, scale=scale,
                              extra_fn=extra_fn, value_fn=value_fn).astype(v_BKGD.dtype)

  out_NBCHD = jax.lax.map(one_query_block, (*q_blocks, visible_NqNk))
  out_BQHD = jnp.moveaxis(out_NBCHD, 0, 1).reshape((q_BQHD.shape[0], -1) + out_NBCHD.shape[3:])
  return out_BQHD[:, :q_len]


def _blocks(x_BL, size: int):
  """`[N, B, size, ...]`: x split along axis 1 into blocks, the last one padded with zeros (for
  segment ids: padding, never visible)."""
  pad = -x_BL.shape[1] % size
  x_BL = jnp.pad(x_BL, [(0, 0), (0, pad)] + [(0, 0)] * (x_BL.ndim - 2))
  x = x_BL.reshape((x_BL.shape[0], -1, size) + x_BL.shape[2:])
  return jnp.moveaxis(x, 1, 0)


def _visible_blocks(q_pos_NBC, q_seg_NBC, k_pos_NBC, k_seg_NBC, *, causal: bool) -> jax.Array:
  """`[Nq, Nk]` bool: False only where no query of block i can see any key of block j.

  Conservative bounds per batch row: a key block is hidden from a query block if either holds
  only padding, if their segment-id ranges do not overlap (packed sequences), or, when causal,
  if its smallest key position exceeds the block's largest query position.
  """
  int_min, int_max = jnp.iinfo(jnp.int32).min, jnp.iinfo(jnp.int32).max

  def bounds(values_NBC, real_NBC):
    low = jnp.where(real_NBC, values_NBC, int_max).min(-1)
    high = jnp.where(real_NBC, values_NBC, int_min).max(-1)
    return low[..., None], high[..., None]  # [N, B, 1]: ready to pair as [Nq, B, Nk]

  q_real, k_real = q_seg_NBC != 0, k_seg_NBC != 0
  q_seg_low, q_seg_high = bounds(q_seg_NBC, q_real)
  k_seg_low, k_seg_high = bounds(k_seg_NBC, k_real)
  k_seg_low, k_seg_high = k_seg_low.T, k_seg_high.T  # [1, B, Nk]
  # Padding-only blocks have low > high, so they overlap nothing.
  visible_NqBNk = (q_seg_low <= k_seg_high) & (k_seg_low <= q_seg_high)
  visible_NqBNk &= (q_seg_low <= q_seg_high) & (k_seg_low <= k_seg_high)
  if causal:
    _, q_pos_high = bounds(q_pos_NBC.astype(jnp.int32), q_real)
    k_pos_low, _ = bounds(k_pos_NBC.astype(jnp.int32), k_real)
    visible_NqBNk &= k_pos_low.T <= q_pos_high
  return visible_NqBNk.any(axis=1)


def _attend_key_blocks(q_BCHD, q_pos_BC, q_seg_BC, k_blocks, visible_Nk, *, causal, scale,
                       extra_fn, value_fn):
  """float32 `[B, C, H, D]` attention of one block of queries, by an online softmax over the key
  blocks `k_blocks` = (k, v, positions, segments), each `[Nk, B, Ck, ...]`; a block whose
  `visible_Nk` is False is skipped."""
  batch, q_chunk, heads, _ = q_BCHD.shape
  v_dim = k_blocks[1].shape[-1]

  def add_key_block(carry, key_block):
    max_BHC1, sum_BHC1, acc_BCHD = carry
    k, v, k_pos, k_seg = key_block
    logits = _grouped_logits(q_BCHD, k) * scale
    if extra_fn is not None:
      extra = extra_fn(q_BCHD, q_pos_BC, Keys(k, k_pos))
      if extra is not None:
        logits = logits + extra.astype(jnp.float32)
    mask = attention_mask(q_pos_BC, k_pos, q_seg_BC, k_seg, causal=causal)
    logits = jnp.where(mask, logits, -jnp.inf)
    # The softmax does not depend on the shift, so the running maximum carries no gradient.
    new_max = jax.lax.stop_gradient(jnp.maximum(max_BHC1, logits.max(-1, keepdims=True)))
    shift = jnp.where(new_max == -jnp.inf, 0.0, new_max)  # rows with nothing visible yet
    probs = jnp.exp(logits - shift)
    rescale_BHC1 = jnp.exp(max_BHC1 - shift)
    out = _grouped_values(probs, v, jnp.float32)
    if value_fn is not None:
      out = out + value_fn(probs, q_pos_BC, Keys(k, k_pos)).astype(jnp.float32)
    acc_BCHD = acc_BCHD * _to_BCH1(rescale_BHC1) + out
    sum_BHC1 = sum_BHC1 * rescale_BHC1 + probs.sum(-1, keepdims=True)
    return new_max, sum_BHC1, acc_BCHD

  def step(carry, xs):
    *key_block, visible = xs
    carry = jax.lax.cond(visible, add_key_block, lambda carry, _: carry, carry, key_block)
    return carry, None

  init = (jnp.full((batch, heads, q_chunk, 1), -jnp.inf, jnp.float32),
          jnp.zeros((batch, heads, q_chunk, 1), jnp.float32),
          jnp.zeros((batch, q_chunk, heads, v_dim), jnp.float32))
  (_, sum_BHC1, acc_BCHD), _ = jax.lax.scan(step, init, (*k_blocks, visible_Nk))
  sum_BCH1 = _to_BCH1(sum_BHC1)
  # A query that sees no key at all (padding) gets zeros, as in `attention_probs`.
  return jnp.where(sum_BCH1 > 0, acc_BCHD / jnp.where(sum_BCH1 > 0, sum_BCH1, 1.0), 0.0)


def _to_BCH1(x_BHC1):
  return jnp.swapaxes(x_BHC1, 1, 2)


def cudnn_attention(q_BQHD, k_BKGD, v_BKGD, *, q_pos_BQ, k_pos_BK, q_seg_BQ, k_seg_BK, causal,
                    scale, extra_fn: Optional[ExtraFn] = None, implementation: str = "cudnn"):
  """`jax.nn.dot_product_attention` with cuDNN (GPU, bf16/fp16); the bias is materialized.

  `implementation="xla"` runs the same call through JAX's own implementation (any device), which
  is how the CPU tests check the mask, bias and grouped-query plumbing of this path.
  """
  mask = attention_mask(q_pos_BQ, k_pos_BK, q_seg_BQ, k_seg_BK, causal=causal)
  bias = None if extra_fn is None else extra_fn(q_BQHD, q_pos_BQ)
  if bias is not None:
    bias = bias.astype(q_BQHD.dtype)
  return jax.nn.dot_product_attention(q_BQHD, k_BKGD, v_BKGD, bias=bias, mask=mask, scale=scale,
                                      implementation=implementation)


def resolve_backend(backend: str, *, q_len: int, k_len: int, dtype,
                    needs_probs: bool = False, fusable: bool = True) -> str:
  """`auto`: the fused kernel on a TPU, cuDNN on a GPU for half precision, chunked for long
  inputs, else XLA.

  Long means Q·K ≥ `CHUNKED_FROM_ELEMENTS` for the platform (on CPU from 1024², where chunked is
  already faster and smaller than xla).

  `needs_probs` (a `value_fn`) keeps `auto` on the backends that form the probabilities;
  `fusable` is False for a content term the fused kernel cannot evaluate (Transformer-XL, Shaw).

  On a TPU, `auto` takes `fused` for schemes it serves (NoPE, RoPE, the bias schemes): its TPU
  variant is proven in Pallas's TPU interpret mode and lowers for TPU (experiments/bench,
  RESULTS.md), XLA's alternative materializes the `[B, H, L, L]` bias.

  `auto` never picks `fused` yet: its GPU speed is unmeasured (see experiments/bench). Once
  `python -m experiments.bench` has run on a GPU, the intended rule is: bias schemes (a
  `score_mod`, no content term) in bf16/fp16 take `fused` where the bench shows it no slower
  than cuDNN with a materialized bias, and always where that bias (H·Q·K·2 bytes, plus its
  gradient for learnable schemes) would not fit in memory; schemes without a bias keep cuDNN.
  On CPU, `fused` runs in Pallas' interpreter (correct but slow), so `auto` keeps XLA / chunked
  there.
  """
  if backend not in BACKENDS:
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
  if backend != "auto":
    return backend
  if fused_by_default() and fusable and not needs_probs:
    return "fused"
  if (jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
      and not needs_probs):
    return "cudnn"
  threshold = CHUNKED_FROM_ELEMENTS.get(jax.default_backend(), CHUNKED_FROM_ELEMENTS_DEFAULT)
  return "chunked" if q_len * k_len >= threshold else "xla"


def dot_product_attention(q_BQHD, k_BKGD, v_BKGD, *, q_pos_BQ, k_pos_BK, q_seg_BQ=None,
                          k_seg_BK=None, causal: bool, scale: Optional[float] = None,
                          extra_fn: Optional[ExtraFn] = None,
                          value_fn: Optional[ValueFn] = None, backend: str = "xla",
                          chunk_size: int = 512,
                          score_mod: Optional[ScoreMod] = None) -> jax.Array:
  """Attention by the named backend; `scale` defaults to 1/sqrt(head_dim).

  `score_mod` is the bias hook in the form the `fused` backend evaluates per tile; the other
  backends ignore it and use `extra_fn`, which must then compute the same bias. `value_fn` works
  on xla and chunked only (see the module docstring); other backends raise a `ValueError`.
  """
  batch, q_len, heads, dim = q_BQHD.shape
  k_len, groups = k_BKGD.shape[1], k_BKGD.shape[2]
  if heads % groups:
    raise ValueError(f"{heads} query heads cannot share {groups} key/value heads evenly")
  if q_seg_BQ is None:
    q_seg_BQ = jnp.ones((batch, q_len), jnp.int32)
  if k_seg_BK is None:
    k_seg_BK = jnp.ones((batch, k_len), jnp.int32)
  scale = 1.0 / math.sqrt(dim) if scale is None else scale
  kwargs = dict(q_pos_BQ=q_pos_BQ, k_pos_BK=k_pos_BK, q_seg_BQ=q_seg_BQ, k_seg_BK=k_seg_BK,
                causal=causal, scale=scale, extra_fn=extra_fn)
  backend = resolve_backend(backend, q_len=q_len, k_len=k_len, dtype=q_BQHD.dtype,
                            needs_probs=value_fn is not None,
                            fusable=extra_fn is None or score_mod is not None)
  if backend == "xla":
    return xla_attention(q_BQHD, k_BKGD, v_BKGD, value_fn=value_fn, **kwargs)
  if backend == "chunked":
    return chunked_attention(q_BQHD, k_BKGD, v_BKGD, value_fn=value_fn, chunk_size=chunk_size,
                             **kwargs)
  if value_fn is not None:
    raise ValueError(f"the {backend} attention backend never forms the attention probabilities, "
                     "which this positional scheme's value term needs: use xla or chunked")
  if backend == "fused":
    if extra_fn is not None and score_mod is None:
      raise ValueError("the fused attention backend evaluates a bias hook (score_mod) only; this "
                       "positional scheme adds content terms: use xla, chunked or cudnn")
    del kwargs["extra_fn"]
    return fused_attention(q_BQHD, k_BKGD, v_BKGD, score_mod=score_mod, **kwargs)
  return cudnn_attention(q_BQHD, k_BKGD, v_BKGD, **kwargs)
