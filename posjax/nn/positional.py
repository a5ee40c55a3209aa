"""`PositionalEncoding`: owns one scheme's learnable parameters and applies its hooks.

The formulas live in `posjax.encodings`; this module only holds their parameters as `nnx.Param`s
(so optimizers, checkpoints and sharding see them) and adapts the hooks to attention's shapes.
One instance may be shared by every layer (e.g. T5's shared bucket table) or made per layer.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from posjax import encodings
from posjax.encodings import shaw
from posjax.nn import attention_core

# Terms a scheme adds to the attention output Σ_j α_ij v_j given the probabilities α, by scheme
# name, used when the scheme's option `values` is on. Same calling convention as the hooks of
# `posjax.encodings.scheme`:  fn(params, probs_BHQK, q_pos_BQ, k_pos_BK, **options) -> [B, Q, H, D].
# Shaw et al. 2018's a^V is the only one so far; a second would make this a field of `Scheme`.
VALUE_TERMS = {"shaw": shaw.shaw_value_term}


def value_term(name: str, options: Mapping[str, Any]) -> Optional[Callable[..., jax.Array]]:
  """The value term of scheme `name` under these options, or None (see `VALUE_TERMS`)."""
  return VALUE_TERMS.get(name) if options.get("values") else None


def _freeze(value):
  """Options as a hashable value, so the module's static structure can be hashed by `jit`."""
  if isinstance(value, Mapping):
    return ("__dict__",) + tuple(sorted((k, _freeze(v)) for k, v in value.items()))
  if isinstance(value, list):
    return ("__list__",) + tuple(_freeze(v) for v in value)
  return value


def _thaw(value):
  if isinstance(value, tuple) and value[:1] == ("__dict__",):
    return {k: _thaw(v) for k, v in value[1:]}
  if isinstance(value, tuple) and value[:1] == ("__list__",):
    return [_thaw(v) for v in value[1:]]
  return value


class PositionalEncoding(nnx.Module):
  """One positional scheme, by name, with its parameters.

  `context` gives options the model knows (`num_heads`, `bidirectional`, ...); they fill the
  scheme's options of the same name unless `options` sets them explicitly.
  """

  def __init__(self, name: str, *, num_heads: int, head_dim: int, dim: int,
               options: Optional[Mapping[str, Any]] = None,
               context: Optional[Mapping[str, Any]] = None, rngs: nnx.Rngs,
               param_dtype=jnp.float32):
    scheme = encodings.get(name)
    options = dict(options or {})
    for key, value in (context or {}).items():
      if key in scheme.defaults and key not in options:
        options[key] = value
    self.name = name
    self.num_heads = num_heads
    self.dim = dim
    self._options = _freeze(scheme.options(**options))
    values = {}
    if scheme.init is not None:
      values = scheme.init(rngs.params(), num_heads=num_heads, head_dim=head_dim, dim=dim,
                           dtype=param_dtype, **self.options)
    # Positional parameters are tiny: they stay replicated (no logical axis names).
    self.params = nnx.Dict({k: nnx.Param(v) for k, v in values.items()})

  @property
  def scheme(self) -> encodings.Scheme:
    return encodings.get(self.name)

  @property
  def options(self) -> dict[str, Any]:
    return _thaw(self._options)

  @property
  def hooks(self) -> frozenset[str]:
    return self.scheme.hooks

  def _values(self) -> dict[str, jax.Array]:
    return {k: v[...] for k, v in self.params.items()}

  def embed(self, positions_BL: jax.Array) -> Optional[jax.Array]:
    """The additive `[B, L, dim]` term of absolute schemes, or None."""
    if self.scheme.embed is None:
      return None
    return self.scheme.embed(self._values(), positions_BL, dim=self.dim, **self.options)

  def rotate(self, x_BLHD: jax.Array, positions_BL: jax.Array, *, is_key: bool) -> jax.Array:
    if self.scheme.rotate is None:
      return x_BLHD
    return self.scheme.rotate(x_BLHD, positions_BL, is_key=is_key, **self.options)

  def extra_logits_fn(self, k_BKGD: jax.Array, k_pos_BK: jax.Array, *,
                      scale: float) -> Optional[attention_core.ExtraFn]:
    """The bias and content terms as a function of a block of queries (and, optionally, of a
    block of these keys; see attention_core)."""
    scheme, options = self.scheme, self.options
    if scheme.score_mod is None and scheme.content is None:
      return None
    params = self._values()
    num_heads = self.num_heads

    def extra_fn(q_BQHD, q_pos_BQ, keys: Optional[attention_core.Keys] = None):
      k, k_pos = (k_BKGD, k_pos_BK) if keys is None else keys
      extra = None
      if scheme.score_mod is not None:
        extra = encodings.materialize_bias(scheme.score_mod, params, num_heads, q_pos_BQ,
                                           k_pos, **options).astype(jnp.float32)
      if scheme.content is not None:
        repeats = num_heads // k.shape[2]
        k_BKHD = jnp.repeat(k, repeats, axis=2) if repeats > 1 else k
        content = scheme.content(params, q_BQHD, k_BKHD, q_pos_BQ, k_pos, **options)
        content = content.astype(jnp.float32) * scale
        extra = content if extra is None else extra + content
      return extra

    return extra_fn

  def value_fn(self, k_pos_BK: jax.Array) -> Optional[attention_core.ValueFn]:
    """The scheme's value term as a function of a block of probabilities (see attention_core)."""
    term, options = value_term(self.name, self.options), self.options
    if term is None:
      return None
    params = self._values()

    def value_fn(probs_BHQK, q_pos_BQ, keys: Optional[attention_core.Keys] = None):
      k_pos = k_pos_BK if keys is None else keys.pos_BK
      return term(params, probs_BHQK, q_pos_BQ, k_pos, **options)

    return value_fn
