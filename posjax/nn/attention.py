"""Multi-head and grouped-query attention with every positional hook and a KV cache."""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from posjax.kernels import ScoreMod
from posjax.nn import attention_core
from posjax.nn.positional import PositionalEncoding


def _dense(in_features, out_features, axis, names, *, use_bias, dtype, param_dtype, rngs,
           kernel_init=nnx.initializers.lecun_normal()):
  out_rank = 1 if isinstance(out_features, int) else len(out_features)
  return nnx.LinearGeneral(
      in_features, out_features, axis=axis, use_bias=use_bias, dtype=dtype,
      param_dtype=param_dtype, kernel_init=kernel_init, rngs=rngs,
      kernel_metadata={"out_sharding": names},
      bias_metadata={"out_sharding": names[-out_rank:]})


def _score_mod(pe: Optional[PositionalEncoding]) -> Optional[ScoreMod]:
  """The bias hook for the fused backend, or None (no scheme, no bias, or content terms too)."""
  if pe is None or pe.scheme.score_mod is None or pe.scheme.content is not None:
    return None
  params = {name: param[...] for name, param in pe.params.items()}
  return ScoreMod(functools.partial(pe.scheme.score_mod, **pe.options), params)


class Attention(nnx.Module):
  """Self- or cross-attention.

  Positional hooks (from `positional`, shared or owned): `rotate` on q and k before the dot
  product, `bias` and `content` as extra logits, and a value term (Shaw's a^V) added to
  Σ_j α_ij v_j before the output projection. Cross-attention takes no positional encoding.
  `weights` returns the attention probabilities.
  With a cache (`init_cache`) and `decode=True`, new keys and values are written at the cache's
  fill level and queries attend to everything cached, with positions carried in the cache.
  """

  def __init__(self, *, dim: int, num_heads: int, num_kv_heads: Optional[int] = None,
               head_dim: Optional[int] = None, causal: bool, use_bias: bool = False,
               out_bias: Optional[bool] = None,
               positional: Optional[PositionalEncoding] = None, scale: Optional[float] = None,
               backend: str = "auto", chunk_size: int = 512, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    num_kv_heads = num_kv_heads or num_heads
    head_dim = head_dim or dim // num_heads
    self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
    self.causal, self.scale, self.backend, self.chunk_size = causal, scale, backend, chunk_size
    self.dtype = dtype
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.query = _dense(dim, (num_heads, head_dim), -1, ("embed", "heads", "head_dim"), **kw)
    self.key = _dense(dim, (num_kv_heads, head_dim), -1, ("embed", "kv_heads", "head_dim"), **kw)
    self.value = _dense(dim, (num_kv_heads, head_dim), -1, ("embed", "kv_heads", "head_dim"), **kw)
    # `use_bias` covers q, k, v and, unless `out_bias` says otherwise, the output (Qwen2: q, k,
    # v only).
    kw_out = dict(kw, use_bias=use_bias if out_bias is None else out_bias)
    self.out = _dense((num_heads, head_dim), dim, (-2, -1), ("heads", "head_dim", "embed"),
                      **kw_out)
    self.positional = positional
    self.cache = nnx.data(None)  # filled by init_cache

  def init_cache(self, batch: int, max_len: int, dtype=None):
    """Empty cache slots: segment id 0 marks a slot that holds nothing yet."""
    dtype = dtype or self.dtype
    shape = (batch, max_len, self.num_kv_heads, self.head_dim)
    self.cache = nnx.Dict(
        k=nnx.Cache(jnp.zeros(shape, dtype)), v=nnx.Cache(jnp.zeros(shape, dtype)),
        positions=nnx.Cache(jnp.zeros((batch, max_len), jnp.int32)),
        segment_ids=nnx.Cache(jnp.zeros((batch, max_len), jnp.int32)),
        index=nnx.Cache(jnp.zeros((), jnp.int32)))

  def _append_to_cache(self, k, v, positions, segment_ids):
    cache = self.cache
    index = cache["index"][...]
    if k.shape[1] > cache["k"].shape[1]:
      raise ValueError(f"{k.shape[1]} new tokens do not fit a cache of {cache['k'].shape[1]}")
    update = lambda buf, new: jax.lax.dynamic_update_slice_in_dim(buf, new.astype(buf.dtype),
                                                                   index, axis=1)
    cache["k"][...] = update(cache["k"][...], k)
    cache["v"][...] = update(cache["v"][...], v)
    cache["positions"][...] = update(cache["positions"][...], positions)
    cache["segment_ids"][...] = update(cache["segment_ids"][...], segment_ids)
    cache["index"][...] = index + k.shape[1]
    return (cache["k"][...], cache["v"][...], cache["positions"][...],
            cache["segment_ids"][...])

  def _prepare(self, x_BQD, positions_BQ, segment_ids_BQ, kv_BKD, kv_positions_BK,
               kv_segment_ids_BK, decode):
    """q, k, v and the positional scheme (None for cross-attention), with `attention_core`'s
    other arguments: positions, segments, causal, scale, and the positional extra logits."""
    is_cross = kv_BKD is not None
    if segment_ids_BQ is None:
      segment_ids_BQ = jnp.ones(x_BQD.shape[:2], jnp.int32)
    if not is_cross:
      kv_BKD, kv_positions_BK, kv_segment_ids_BK = x_BQD, positions_BQ, segment_ids_BQ
    elif kv_segment_ids_BK is None:
      kv_segment_ids_BK = jnp.ones(kv_BKD.shape[:2], jnp.int32)
    q = self.query(x_BQD)
    k = self.key(kv_BKD)
    v = self.value(kv_BKD)
    pe = None if is_cross else self.positional
    if pe is not None:
      q = pe.rotate(q, positions_BQ, is_key=False)
      k = pe.rotate(k, kv_positions_BK, is_key=True)
    if decode and not is_cross:
      if self.cache is None:
        raise ValueError("decode=True needs a cache: call init_cache(batch, max_len) first")
      k, v, kv_positions_BK, kv_segment_ids_BK = self._append_to_cache(
          k, v, kv_positions_BK, kv_segment_ids_BK)
    scale = self.scale if self.scale is not None else self.head_dim**-0.5
    extra_fn = None if pe is None else pe.extra_logits_fn(k, kv_positions_BK, scale=scale)
    kwargs = dict(q_pos_BQ=positions_BQ, k_pos_BK=kv_positions_BK, q_seg_BQ=segment_ids_BQ,
                  k_seg_BK=kv_segment_ids_BK, causal=self.causal and not is_cross, scale=scale,
                  extra_fn=extra_fn)
    return q, k, v, pe, kwargs

  def __call__(self, x_BQD: jax.Array, *, positions_BQ: jax.Array,
               segment_ids_BQ: Optional[jax.Array] = None, kv_BKD: Optional[jax.Array] = None,
               kv_positions_BK: Optional[jax.Array] = None,
               kv_segment_ids_BK: Optional[jax.Array] = None, decode: bool = False) -> jax.Array:
    q, k, v, pe, kwargs = self._prepare(x_BQD, positions_BQ, segment_ids_BQ, kv_BKD,
                                        kv_positions_BK, kv_segment_ids_BK, decode)
    value_fn = None if pe is None else pe.value_fn(kwargs["k_pos_BK"])
    out = attention_core.dot_product_attention(
        q, k, v, value_fn=value_fn, backend=self.backend, chunk_size=self.chunk_size,
        score_mod=_score_mod(pe), **kwargs)
    return self.out(out)

  def weights(self, x_BQD: jax.Array, *, positions_BQ: jax.Array,
              segment_ids_BQ: Optional[jax.Array] = None, kv_BKD: Optional[jax.Array] = None,
              kv_positions_BK: Optional[jax.Array] = None,
              kv_segment_ids_BK: Optional[jax.Array] = None) -> jax.Array:
    """probs_BHQK: float32 `[B, H, Q, K]` attention probabilities of `__call__` with these inputs.

    Computed by `attention_core.attention_probs`, the code of the xla backend (the chunked
    backend computes the same softmax blockwise), whatever this layer's backend. `__call__` returns `out(Σ_j probs_BHQK · v_j)` (query head h
    reads value head h // (num_heads // num_kv_heads)), plus the scheme's value term (Shaw with
    `values=True`) before `out`. A query that sees no key (padding) gets zeros. No decoding: the
    cache is neither read nor written.
    """
    q, k, _, _, kwargs = self._prepare(x_BQD, positions_BQ, segment_ids_BQ, kv_BKD,
                                       kv_positions_BK, kv_segment_ids_BK, decode=False)
    return attention_core.attention_probs(q, k, **kwargs)
