"""Per-tile math shared by the forward and backward kernels (plain jnp, traced inside Pallas).

A tile is `bq` queries against `bk` keys of one query head `h`:

  visible[i, j] = seg_k[j] != 0  and  seg_q[i] == seg_k[j]  (and k_pos[j] <= q_pos[i] if causal)
  logits[i, j]  = scale · q[i] · k[j] + score_mod(θ, h, q_pos[i], k_pos[j])

Everything is float32 from the dot product on; masked entries are never exponentiated into the
result (the kernels select with `visible`), so a query with no visible key stays exactly zero.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from posjax.kernels.hoist import SplitScoreMod

# Stand-in for -inf in running maxima: finite, so exp(NEG - NEG) is never nan.
NEG = -1e30


def visible(q_pos_Q, k_pos_K, q_seg_Q, k_seg_K, *, causal: bool) -> jax.Array:
  """`[bq, bk]` bool: key j is visible to query i (segment 0 is padding)."""
  mask = (k_seg_K[None, :] != 0) & (q_seg_Q[:, None] == k_seg_K[None, :])
  if causal:
    mask &= k_pos_K[None, :] <= q_pos_Q[:, None]
  return mask


def any_visible(mask_QK) -> jax.Array:
  """Scalar bool: the tile has work. An int max, not `jnp.any`, as the simplest reduction."""
  return jnp.max(mask_QK.astype(jnp.int32)) > 0


def bias(split: Optional[SplitScoreMod], residuals, q_pos_Q, k_pos_K, refs=None) -> jax.Array:
  """`[bq, bk]` float32 `score_mod(θ, h, q_pos[i], k_pos[j])` from head h's residuals, or 0.

  `refs`, the residuals' refs, let table lookups load from memory; pass them where the bias is
  not differentiated."""
  if split is None:
    return jnp.zeros((), jnp.float32)
  return split.bias(residuals, q_pos_Q, k_pos_K, refs)


def load(refs) -> list[jax.Array]:
  return [ref[...] for ref in refs]


def dot_qk(q_QD, k_KD) -> jax.Array:
  """`q @ k^T` accumulated in float32."""
  return jax.lax.dot_general(q_QD, k_KD, (((1,), (1,)), ((), ())),
                             preferred_element_type=jnp.float32)


def dot(a_MN, b_NP) -> jax.Array:
  """`a @ b` accumulated in float32."""
  return jnp.dot(a_MN, b_NP, preferred_element_type=jnp.float32)


def dot_tn(a_NM, b_NP) -> jax.Array:
  """`a^T @ b` accumulated in float32."""
  return jax.lax.dot_general(a_NM, b_NP, (((0,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)
