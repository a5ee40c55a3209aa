"""Choosing the next token from logits: greedy, temperature, top-k and nucleus (top-p) sampling.

Pure, jit-able functions of `[B, V]` logits; `posjax.evaluate.generate` decodes with them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_NEG_INF = -jnp.inf



def filter_logits(logits_BV: jax.Array, *, top_k=0, top_p=1.0) -> jax.Array:
  """Logits with everything outside the top-k and the top-p nucleus set to -inf.

  top-k keeps the `top_k` largest logits (0: all). Nucleus sampling (Holtzman et al. 2020, "The
  Curious Case of Neural Text Degeneration", ICLR) then keeps the smallest set of most likely
  tokens whose probability (after top-k) sums to at least `top_p` (1: all); the most likely token is
  always kept. Ties at the cut are kept together. `top_k` and `top_p` may be traced.
  """
  logits_BV = logits_BV.astype(jnp.float32)
  vocab = logits_BV.shape[-1]
  sorted_BV = -jnp.sort(-logits_BV, axis=-1)  # descending
  rank_V = jnp.arange(vocab)
  top_k = jnp.asarray(top_k, jnp.int32)
  keep_BV = jnp.broadcast_to(rank_V < jnp.where(top_k > 0, top_k, vocab), sorted_BV.shape)
  probs_BV = jax.nn.softmax(jnp.where(keep_BV, sorted_BV, _NEG_INF), axis=-1)
  mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
  keep_BV &= (mass_before_BV < jnp.asarray(top_p, jnp.float32)) | (rank_V == 0)
  num_kept_B = jnp.sum(keep_BV, axis=-1)
  threshold_B1 = jnp.take_along_axis(sorted_BV, num_kept_B[:, None] - 1, axis=-1)
  return jnp.where(logits_BV >= threshold_B1, logits_BV, _NEG_INF)


def _is_static(value) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating))


def sample_next(logits_BV: jax.Array, rng: jax.Array, *, temperature=1.0, top_k=0,
                top_p=1.0) -> jax.Array:
  """The next token of each row, int32 `[B]`, from its logits `[B, V]`.

  `temperature == 0` is greedy (argmax). Otherwise the logits are divided by the temperature,
  filtered by `filter_logits(top_k, top_p)`, and a token is drawn with `rng`. Pure and jit-able;
  the options may be Python numbers (a greedy or unfiltered choice then skips the unneeded work)
  or traced scalars.
  """
  logits_BV = logits_BV.astype(jnp.float32)
  greedy_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  if _is_static(temperature) and temperature == 0:
    return greedy_B
  temperature = jnp.asarray(temperature, jnp.float32)
  scaled_BV = logits_BV / jnp.where(temperature > 0, temperature, 1.0)
  if not (_is_static(top_k) and top_k == 0 and _is_static(top_p) and top_p >= 1):
    scaled_BV = filter_logits(scaled_BV, top_k=top_k, top_p=top_p)
  sampled_B = jax.random.categorical(rng, scaled_BV, axis=-1).astype(jnp.int32)
  return jnp.where(temperature > 0, sampled_B, greedy_B)


def check_sampling(*, temperature, top_k, top_p) -> None:
  """Raise ValueError for sampling options that mean nothing."""
  if not temperature >= 0:
    raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
  if int(top_k) != top_k or top_k < 0:
    raise ValueError(f"top_k must be a non-negative integer (0: no top-k), got {top_k}")
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1] (1: no nucleus filtering), got {top_p}")
