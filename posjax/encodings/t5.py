"""T5 relative position buckets (the `bias` hook).

Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer" (JMLR), section 2.1: each head learns one scalar per bucket of relative position,
added to the logits. With relative_position = k_pos - q_pos, the bucket of a distance n is n itself
for small n (exact buckets) and log-spaced up to max_distance beyond, where all distances share the
last bucket. In bidirectional (encoder) mode half the buckets are for keys after the query.

  bias_h(i, j) = table[bucket(j - i), h]

The bucketing follows Mesh TensorFlow's `_relative_position_bucket` (the released T5 code), as
ported to HF transformers' `T5Attention._relative_position_bucket`, including its float32 log.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from posjax.encodings import bias
from posjax.encodings.scheme import Scheme

DEFAULT_NUM_BUCKETS = 32
DEFAULT_MAX_DISTANCE = 128


def _check_buckets(bidirectional: bool, num_buckets: int, max_distance: int) -> int:
  """Validates the options; returns the number of buckets per direction.

  Bidirectional buckets split `num_buckets` in two halves (past, future) rounded down, as Mesh
  TensorFlow and HF transformers do (`num_buckets //= 2`): with an odd count the table's last row
  is never read.
  """
  per_side = num_buckets // 2 if bidirectional else num_buckets
  if per_side < 2:
    raise ValueError(f"num_buckets={num_buckets} is too small: each direction needs >= 2 buckets "
                     f"(num_buckets >= {4 if bidirectional else 2})")
  if max_distance <= per_side // 2:
    raise ValueError(f"max_distance ({max_distance}) must exceed the exact range "
                     f"{per_side // 2} (= buckets per direction / 2)")
  return per_side


def t5_relative_bucket(relative_position: jax.Array, *, bidirectional: bool,
                       num_buckets: int = DEFAULT_NUM_BUCKETS,
                       max_distance: int = DEFAULT_MAX_DISTANCE) -> jax.Array:
  """T5's bucket of each relative position `k_pos - q_pos` (Raffel et al. 2020), int32 in
  `[0, num_buckets)`.

  With B buckets per direction (num_buckets, or floor(num_buckets / 2) when `bidirectional`; then
  keys after the query, relative_position > 0, use buckets B..2B-1), E = floor(B / 2) exact
  buckets and distance n (|relative_position| when `bidirectional`, else
  max(-relative_position, 0), so future keys fall in bucket 0):

    bucket(n) = n                                                                if n < E
              = min(B - 1, E + floor(log(n / E) / log(max_distance / E) * (B - E)))   otherwise

  computed in float32 like the reference code, whose values it matches bit for bit.
  """
  per_side = _check_buckets(bidirectional, num_buckets, max_distance)
  relative_position = jnp.asarray(relative_position, jnp.int32)
  if bidirectional:
    offset = jnp.where(relative_position > 0, per_side, 0).astype(jnp.int32)
    distance = jnp.abs(relative_position)
  else:
    offset = 0  # not zeros_like: an array of constants would become a tile-sized kernel input
    distance = jnp.maximum(-relative_position, 0)
  max_exact = per_side // 2
  # log(0) would be -inf; those distances take the exact branch anyway.
  scaled = jnp.maximum(distance, 1).astype(jnp.float32) / max_exact
  log_bucket = (jnp.log(scaled) / math.log(max_distance / max_exact) * (per_side - max_exact))
  large = jnp.minimum(max_exact + log_bucket.astype(jnp.int32), per_side - 1)
  return offset + jnp.where(distance < max_exact, distance, large)


def t5_init(rng: jax.Array, *, num_heads: int, dim: int, dtype=jnp.float32,
            num_buckets: int = DEFAULT_NUM_BUCKETS, **_) -> dict[str, jax.Array]:
  """`{"table": [num_buckets, num_heads]}` from N(0, dim^-1), dim the model width.

  The paper does not state this initialization; this is HF transformers' `T5PreTrainedModel`
  (std = factor * d_model^-0.5 with factor 1).
  """
  if num_heads <= 0:
    raise ValueError(f"num_heads must be positive; got {num_heads}")
  if num_buckets <= 0:
    raise ValueError(f"num_buckets must be positive; got {num_buckets}")
  std = float(dim) ** -0.5
  table = std * jax.random.normal(rng, (num_buckets, num_heads), jnp.float32)
  return {"table": table.astype(dtype)}


def t5_score_mod(params, head: jax.Array, q_pos: jax.Array, k_pos: jax.Array, *,
                 bidirectional: bool = False, num_buckets: int = DEFAULT_NUM_BUCKETS,
                 max_distance: int = DEFAULT_MAX_DISTANCE, **_) -> jax.Array:
  """T5 bias (Raffel et al. 2020): `table[t5_relative_bucket(k_pos - q_pos), head]`.

  Elementwise per-element table lookup; result in the table's dtype, with the broadcast shape of
  `head`, `q_pos`, `k_pos`. For one head (a scalar `head`, as the fused kernel calls it) the head's
  column is selected first, so that the kernel computes it once per head and looks buckets up in a
  vector (see `posjax.kernels.hoist`).
  """
  table = _checked_table(params, num_buckets)
  relative = jnp.asarray(k_pos, jnp.int32) - jnp.asarray(q_pos, jnp.int32)
  bucket = t5_relative_bucket(relative, bidirectional=bidirectional, num_buckets=num_buckets,
                              max_distance=max_distance)
  head = jnp.asarray(head, jnp.int32)
  if head.ndim == 0:
    return table[:, head][bucket]
  return table[bucket, head]


def t5_bias_all_heads(params, num_heads: int, q_pos_BQ: jax.Array, k_pos_BK: jax.Array, *,
                      bidirectional: bool = False, num_buckets: int = DEFAULT_NUM_BUCKETS,
                      max_distance: int = DEFAULT_MAX_DISTANCE, **_) -> jax.Array:
  """`t5_score_mod` for heads 0..num_heads-1 at once: `bias_BHQK`, the same values.

  Each (query, key) looks up its bucket's whole table row (all heads), instead of one scalar per
  head: a gather of B·Q·K rows rather than B·H·Q·K scalars, and a row scatter-add in the
  backward pass. `posjax.encodings.materialize_bias` uses it.
  """
  table = _checked_table(params, num_buckets)
  relative_BQK = (jnp.asarray(k_pos_BK, jnp.int32)[:, None, :]
                  - jnp.asarray(q_pos_BQ, jnp.int32)[:, :, None])
  bucket_BQK = t5_relative_bucket(relative_BQK, bidirectional=bidirectional,
                                  num_buckets=num_buckets, max_distance=max_distance)
  bias_BQKH = jnp.take(table[:, :num_heads], bucket_BQK, axis=0, mode="clip")
  return jnp.moveaxis(bias_BQKH, -1, 1)


def t5_check(*, bidirectional: bool = False, num_buckets: int = DEFAULT_NUM_BUCKETS,
             max_distance: int = DEFAULT_MAX_DISTANCE, **_) -> None:
  """Raises ValueError for bucket options that cannot work, before anything is traced."""
  _check_buckets(bidirectional, num_buckets, max_distance)


def _checked_table(params, num_buckets: int) -> jax.Array:
  table = params["table"]
  if table.ndim != 2 or table.shape[0] != num_buckets:
    raise ValueError(f"T5 table has shape {table.shape}; num_buckets={num_buckets} needs "
                     f"[{num_buckets}, num_heads]")
  return table


bias.ALL_HEADS_FORMS[t5_score_mod] = t5_bias_all_heads

SCHEMES = (
    Scheme(
        name="t5",
        citation="Raffel et al. 2020, Exploring the Limits of Transfer Learning with a Unified "
                 "Text-to-Text Transformer (JMLR)",
        summary="a learned scalar per head and relative-position bucket (exact for short "
                "distances, log-spaced up to max_distance) added to the logits",
        params=("table",),
        defaults={"bidirectional": False, "num_buckets": DEFAULT_NUM_BUCKETS,
                  "max_distance": DEFAULT_MAX_DISTANCE},
        init=t5_init,
        score_mod=t5_score_mod,
        check=t5_check,
    ),
)
