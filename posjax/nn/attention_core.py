"""Masked softmax attention with positional logits, computed by interchangeable backends.

All backends compute, for query i and key j (grouped-query: query head h reads key head h // R),

    logits[b, h, i, j] = scale · q[b, i, h] · k[b, j, h // R] + extra[b, h, i, j]
    out[b, i, h] = Σ_j softmax_j(masked logits) · v[b, j, h // R]

where `extra` is what the positional hooks add (bias and content terms) and the mask keeps key j
for query i when both are in the same non-padding segment and, if causal, k_pos ≤ q_pos. Masks use
the explicit positions, not array indices, so a KV cache, packing and randomized positions all work.

`extra_fn(q_BcHD, q_pos_BQc) -> [B, H, Qc, K] | None` evaluates the positional terms for a block of
queries against all keys; the chunked backend calls it per block, so evaluating at 32× the training
length never builds a full `[B, H, L, L]` array.

`value_fn(probs_BHQcK, q_pos_BQc) -> [B, Qc, H, D]` is a positional term on the output side (Shaw
et al.'s relative values): it is added to Σ_j probs · v_j, per block of queries like `extra_fn`.
It needs the probabilities themselves, so only the backends that form them (xla, chunked) take it.
`attention_probs` is the one implementation of logits, mask and softmax; those backends and
`Attention.weights` all use it.

The `fused` backend (`posjax.kernels`) takes the bias hook itself instead, as a `ScoreMod`, and
evaluates it per tile inside a Pallas flash-attention kernel; it serves schemes whose only extra
logits are a bias (ALiBi, T5, KERPLE, Sandwich, FIRE) and schemes with none (NoPE, RoPE).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from posjax.kernels import ScoreMod, fused_attention

ExtraFn = Callable[[jax.Array, jax.Array], Optional[jax.Array]]
ValueFn = Callable[[jax.Array, jax.Array], jax.Array]
BACKENDS = ("auto", "xla", "chunked", "cudnn", "fused")
BACKENDS_WITHOUT_PROBS = ("cudnn", "fused")  # they never form the probabilities: no `value_fn`


def attention_mask(q_pos_BQ, k_pos_BK, q_seg_BQ, k_seg_BK, *, causal: bool) -> jax.Array:
  """`[B, 1, Q, K]` bool: key j is visible to query i. Segment 0 is padding and never visible."""
  mask = (k_seg_BK[:, None, :] != 0) & (q_seg_BQ[:, :, None] == k_seg_BK[:, None, :])
  if causal:
    mask &= k_pos_BK[:, None, :] <= q_pos_BQ[:, :, None]
  return mask[:, None]


def _grouped_logits(q_BQHD, k_BKGD):
  batch, q_len, heads, dim = q_BQHD.shape
  groups = k_BKGD.shape[2]
  q = q_BQHD.reshape(batch, q_len, groups, heads // groups, dim)
  logits = jnp.einsum("bqgrd,bkgd->bgrqk", q, k_BKGD, preferred_element_type=jnp.float32)
  return logits.reshape(batch, heads, q_len, k_BKGD.shape[1])


def _grouped_values(probs_BHQK, v_BKGD):
  batch, heads, q_len, k_len = probs_BHQK.shape
  groups = v_BKGD.shape[2]
  probs = probs_BHQK.reshape(batch, groups, heads // groups, q_len, k_len)
  out = jnp.einsum("bgrqk,bkgd->bqgrd", probs.astype(v_BKGD.dtype), v_BKGD)
  return out.reshape(batch, q_len, heads, v_BKGD.shape[-1])


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
  """`xla_attention` over blocks of `chunk_size` queries in sequence: memory O(chunk · K)."""
  batch, q_len = q_BQHD.shape[:2]
  if q_len <= chunk_size:
    return xla_attention(q_BQHD, k_BKGD, v_BKGD, q_pos_BQ=q_pos_BQ, k_pos_BK=k_pos_BK,
                         q_seg_BQ=q_seg_BQ, k_seg_BK=k_seg_BK, causal=causal, scale=scale,
                         extra_fn=extra_fn, value_fn=value_fn)
  num_chunks = -(-q_len // chunk_size)
  pad = num_chunks * chunk_size - q_len

  def blocks(x):
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape((batch, num_chunks, chunk_size) + x.shape[2:])
    return jnp.moveaxis(x, 1, 0)

  def one_block(args):
    q, q_pos, q_seg = args
    return xla_attention(q, k_BKGD, v_BKGD, q_pos_BQ=q_pos, k_pos_BK=k_pos_BK, q_seg_BQ=q_seg,
                         k_seg_BK=k_seg_BK, causal=causal, scale=scale, extra_fn=extra_fn,
                         value_fn=value_fn)

  out = jax.lax.map(one_block, (blocks(q_BQHD), blocks(q_pos_BQ), blocks(q_seg_BQ)))
  out = jnp.moveaxis(out, 0, 1).reshape((batch, num_chunks * chunk_size) + out.shape[3:])
  return out[:, :q_len]


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
                    needs_probs: bool = False) -> str:
  """`auto`: cuDNN on a GPU for half precision, query blocks for long inputs, else XLA.

  `needs_probs` (a `value_fn`) keeps `auto` on the backends that form the probabilities.

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
  if (jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
      and not needs_probs):
    return "cudnn"
  return "chunked" if q_len * k_len > 2048 * 2048 else "xla"


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
                            needs_probs=value_fn is not None)
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
