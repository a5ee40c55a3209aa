"""Relative position representations of Shaw et al. 2018 (the `content` hook).

Shaw, Uszkoreit & Vaswani 2018, "Self-Attention with Relative Position Representations" (NAACL):

  e_ij = (x_i W^Q) (x_j W^K + a^K_ij)^T / sqrt(d_z)
  z_i  = Σ_j α_ij (x_j W^V + a^V_ij),        α_ij = softmax_j(e_ij)
  a^K_ij = w^K_{clip(j - i, k)},  a^V_ij = w^V_{clip(j - i, k)},  clip(x, k) = max(-k, min(k, x))

The tables w^K, w^V have 2k + 1 rows of the head dimension and are shared across heads (one pair
per layer, as in the paper); the paper uses k = 16 for machine translation, our default.

Scaling contract: `shaw_logits` (and the `content` hook) return the *unscaled* term q_i · a^K_ij.
The attention adds it to the unscaled q_i · k_j and scales the sum by 1/sqrt(head_dim) once, which
is exactly the paper's e_ij. The value term a^V is not a logit, so it has no place in the `content`
hook: with `values=True`, `shaw_value_term` (`shaw_values` with the `rel_value` table) is the
scheme's term on the output side, which the attention adds to Σ_j α_ij v_j given the probabilities
α (`posjax.nn.positional.VALUE_TERMS`; xla and chunked attention backends only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from posjax.encodings.absolute import normal_params
from posjax.encodings.scheme import Scheme

DEFAULT_MAX_DISTANCE = 16
INIT_STD = 0.02


def shaw_relative_index(q_pos: jax.Array, k_pos: jax.Array, max_distance: int) -> jax.Array:
  """Row of the relative table for each (query, key) pair: `clip(k_pos - q_pos, -K, K) + K`.

  Shaw et al. 2018, "Self-Attention with Relative Position Representations". `q_pos` and `k_pos`
  are integer arrays that broadcast together; the result is int32 in `[0, 2K]` with `K =
  max_distance`, row `K` meaning "same position".
  """
  if max_distance < 0:
    raise ValueError(f"max_distance must be >= 0; got {max_distance}")
  relative = jnp.asarray(k_pos, jnp.int32) - jnp.asarray(q_pos, jnp.int32)
  return jnp.clip(relative, -max_distance, max_distance) + max_distance


def _check_table(table_RD: jax.Array, max_distance: int, name: str) -> None:
  rows = 2 * max_distance + 1
  if table_RD.ndim != 2 or table_RD.shape[0] != rows:
    raise ValueError(
        f"Shaw {name} table has shape {table_RD.shape}; with max_distance={max_distance} it needs "
        f"[{rows}, head_dim] (2 * max_distance + 1 rows)")


def _index_BQK(q_pos_BQ, k_pos_BK, max_distance):
  q_pos_BQ = jnp.asarray(q_pos_BQ, jnp.int32)
  k_pos_BK = jnp.asarray(k_pos_BK, jnp.int32)
  return shaw_relative_index(q_pos_BQ[:, :, None], k_pos_BK[:, None, :], max_distance)


def shaw_logits(rel_key_RD: jax.Array, q_BQHD: jax.Array, q_pos_BQ: jax.Array,
                k_pos_BK: jax.Array, *, max_distance: int = DEFAULT_MAX_DISTANCE) -> jax.Array:
  """The relative key term of Shaw et al. 2018: `logits[b, h, i, j] = q_bih · w^K_{clip(j-i, K)}`.

  Unscaled (see the module docstring): the attention scales it together with q · k by
  1/sqrt(head_dim). `rel_key_RD` is `[2K + 1, D]`, shared by all heads. Returns float32
  `[B, H, Q, K]`.

  Cost: q is multiplied with the whole table once (`[B, H, Q, 2K+1]`), then each (i, j) picks its
  column; no `[B, H, Q, K, D]` array is formed.
  """
  _check_table(rel_key_RD, max_distance, "rel_key")
  qa_BHQR = jnp.einsum("bqhd,rd->bhqr", q_BQHD, rel_key_RD, preferred_element_type=jnp.float32)
  index_B1QK = _index_BQK(q_pos_BQ, k_pos_BK, max_distance)[:, None]
  return jnp.take_along_axis(qa_BHQR, index_B1QK, axis=-1)


def shaw_values(rel_value_RD: jax.Array, probs_BHQK: jax.Array, q_pos_BQ: jax.Array,
                k_pos_BK: jax.Array, *, max_distance: int = DEFAULT_MAX_DISTANCE) -> jax.Array:
  """The relative value term of Shaw et al. 2018: `out[b, i, h] = Σ_j α_bhij w^V_{clip(j-i, K)}`.

  `probs_BHQK` are the attention weights α; `rel_value_RD` is `[2K + 1, D]`, shared by all heads.
  Returns float32 `[B, Q, H, D]`, to be added to the attention output Σ_j α_ij v_j.

  Cost: the weights are first summed into their 2K+1 relative buckets (a scatter-add,
  `[B, H, Q, 2K+1]`), then multiplied with the table; no `[Q, K, D]` (or `[Q, K, 2K+1]`) array.
  """
  _check_table(rel_value_RD, max_distance, "rel_value")
  batch, heads, queries, keys = probs_BHQK.shape
  rows = rel_value_RD.shape[0]
  index_B1QK = _index_BQK(q_pos_BQ, k_pos_BK, max_distance)[:, None]
  b_B111 = jnp.arange(batch, dtype=jnp.int32)[:, None, None, None]
  h_1H11 = jnp.arange(heads, dtype=jnp.int32)[None, :, None, None]
  q_11Q1 = jnp.arange(queries, dtype=jnp.int32)[None, None, :, None]
  buckets_BHQR = jnp.zeros((batch, heads, queries, rows), jnp.float32)
  buckets_BHQR = buckets_BHQR.at[b_B111, h_1H11, q_11Q1, index_B1QK].add(
      probs_BHQK.astype(jnp.float32))
  return jnp.einsum("bhqr,rd->bqhd", buckets_BHQR, rel_value_RD,
                    preferred_element_type=jnp.float32)


def shaw_init(rng: jax.Array, *, head_dim: int, dtype=jnp.float32,
              max_distance: int = DEFAULT_MAX_DISTANCE, values: bool = False,
              **_) -> dict[str, jax.Array]:
  """`{"rel_key": [2K+1, head_dim]}` (and `"rel_value"` when `values`), from N(0, 0.02²).

  The paper does not state an initialization; 0.02 matches the learned absolute table.
  """
  if max_distance < 0:
    raise ValueError(f"max_distance must be >= 0; got {max_distance}")
  shape = (2 * max_distance + 1, head_dim)
  names = ("rel_key", "rel_value") if values else ("rel_key",)
  return normal_params(rng, {name: shape for name in names}, INIT_STD, dtype)


def shaw_content(params, q_BQHD, k_BKHD, q_pos_BQ, k_pos_BK, *,
                 max_distance: int = DEFAULT_MAX_DISTANCE, **_) -> jax.Array:
  """The `content` hook: `shaw_logits` with `params["rel_key"]`, unscaled `[B, H, Q, K]` float32."""
  del k_BKHD
  return shaw_logits(params["rel_key"], q_BQHD, q_pos_BQ, k_pos_BK, max_distance=max_distance)


def shaw_value_term(params, probs_BHQK, q_pos_BQ, k_pos_BK, *,
                    max_distance: int = DEFAULT_MAX_DISTANCE, **_) -> jax.Array:
  """The value term: `shaw_values` with `params["rel_value"]`, float32 `[B, Q, H, D]`."""
  return shaw_values(params["rel_value"], probs_BHQK, q_pos_BQ, k_pos_BK,
                     max_distance=max_distance)


SCHEMES = (
    Scheme(
        name="shaw",
        citation="Shaw et al. 2018, Self-Attention with Relative Position Representations (NAACL)",
        summary="learned vectors for clipped relative distances j - i in [-K, K], dotted with the "
                "query and added to the logits (and optionally to the values)",
        params=("rel_key",),
        defaults={"max_distance": DEFAULT_MAX_DISTANCE, "values": False},
        init=shaw_init,
        content=shaw_content,
    ),
)
