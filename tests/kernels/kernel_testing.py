"""What the fused-kernel tests share: a scheme's score_mod with small options, and the XLA
reference attention with that bias materialized."""

import functools

import jax

from posjax import encodings
from posjax.nn import attention_core


def scheme_score_mod(name, bidirectional, *, options, heads, head_dim):
  """`(score_mod with options bound, params)` of scheme `name` (`options` by scheme family, e.g.
  {"t5": {...}}), or `(None, {})` for no bias."""
  if name is None:
    return None, {}
  scheme = encodings.get(name)
  overrides = dict(options.get(name.split("_")[0], {}), bidirectional=bidirectional)
  if "num_heads" in scheme.defaults:
    overrides["num_heads"] = heads
  bound = scheme.options(**overrides)
  params = {}
  if scheme.init is not None:
    params = scheme.init(jax.random.key(1), num_heads=heads, head_dim=head_dim, dim=32, **bound)
  return functools.partial(scheme.score_mod, **bound), params


def reference(fn, q, k, v, params, positions, segments, causal, *, scale=0.25):
  """The `xla` backend with `fn`'s bias materialized for all `q.shape[2]` heads."""
  heads = q.shape[2]
  extra_fn = None
  if fn is not None:
    extra_fn = lambda q_blk, q_pos: encodings.materialize_bias(fn, params, heads, q_pos,
                                                               positions)
  return attention_core.xla_attention(
      q, k, v, q_pos_BQ=positions, k_pos_BK=positions, q_seg_BQ=segments, k_seg_BK=segments,
      causal=causal, scale=scale, extra_fn=extra_fn)
