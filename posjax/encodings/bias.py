"""Materializing an elementwise `score_mod` into a dense bias (the reference path)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


# Faster forms of some `score_mod`s for all heads at once, by score_mod: the same values, but
# e.g. one table row per (query, key) instead of one scalar per (head, query, key). Each takes
# `(params, num_heads, q_pos_BQ, k_pos_BK, **options)` and returns `bias_BHQK`.
ALL_HEADS_FORMS: dict[Callable[..., jax.Array], Callable[..., jax.Array]] = {}


def materialize_bias(score_mod: Callable[..., jax.Array], params: Any, num_heads: int,
                     q_pos_BQ: jax.Array, k_pos_BK: jax.Array, /, **options) -> jax.Array:
  """`bias_BHQK[b, h, i, j] = score_mod(params, h, q_pos[b, i], k_pos[b, j])`.

  This is what the XLA and cuDNN attention paths consume; the fused kernel evaluates the same
  `score_mod` per tile instead. A score_mod with an entry in `ALL_HEADS_FORMS` is computed by
  that form.
  """
  all_heads = ALL_HEADS_FORMS.get(score_mod)
  if all_heads is not None:
    return all_heads(params, num_heads, q_pos_BQ, k_pos_BK, **options)
  head = jnp.arange(num_heads, dtype=jnp.int32)[None, :, None, None]
  q_pos = jnp.asarray(q_pos_BQ, jnp.int32)[:, None, :, None]
  k_pos = jnp.asarray(k_pos_BK, jnp.int32)[:, None, None, :]
  bias = score_mod(params, head, q_pos, k_pos, **options)
  shape = (q_pos.shape[0], num_heads, q_pos.shape[2], k_pos.shape[3])
  return jnp.broadcast_to(bias, shape)
