"""The input layer: token embedding, the `embed` positional hook, optional token types, norm, dropout."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from posjax.data.tokenizers import check_token_ids
from posjax.nn.positional import PositionalEncoding


class InputEmbedding(nnx.Module):
  """`E = s · E_word[tokens] + E_pos(positions) [+ E_type[token_types]]`, then norm and dropout.

  The positional term comes from an absolute scheme's `embed` hook (learned table, sinusoidal,
  scaled sinusoidal with its α); relative schemes leave it out. `attend` is the tied output layer.
  """

  def __init__(self, vocab_size: int, dim: int, *,
               positional: Optional[PositionalEncoding] = None, num_token_types: int = 0,
               norm: Optional[nnx.Module] = None, dropout: float = 0.0,
               tokens: Optional[nnx.Embed] = None, scale: float = 1.0, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    init = nnx.initializers.normal(stddev=0.02)
    self.vocab_size = vocab_size
    # `tokens` lets an encoder-decoder share one token table between its two input layers.
    self.tokens = tokens if tokens is not None else nnx.Embed(
        vocab_size, dim, dtype=dtype, param_dtype=param_dtype, embedding_init=init, rngs=rngs,
        embedding_metadata={"out_sharding": ("vocab", "embed")})
    self.token_types = (nnx.Embed(num_token_types, dim, dtype=dtype, param_dtype=param_dtype,
                                  embedding_init=init, rngs=rngs) if num_token_types else None)
    self.positional = positional if positional is not None and positional.scheme.embed else None
    self.norm = norm
    self.scale = scale
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.dtype = dtype

  def load_word_vectors(self, matrix: jax.Array, covered: jax.Array) -> None:
    """Overwrite the rows of `covered` tokens with `matrix` rows (see `word_vectors`)."""
    table = self.tokens.embedding[...]
    if matrix.shape != table.shape:
      raise ValueError(f"word vectors have shape {matrix.shape}, the embedding {table.shape}")
    self.tokens.embedding[...] = jnp.where(covered[:, None], matrix.astype(table.dtype), table)

  def __call__(self, tokens_BL: jax.Array, positions_BL: jax.Array,
               token_types_BL: Optional[jax.Array] = None) -> jax.Array:
    if not isinstance(tokens_BL, jax.core.Tracer):
      # A gather clamps an out-of-range id to a real row (or gives NaN) without a word. Called
      # eagerly, the ids are checked here; jitted callers check them where the data enters
      # (`posjax.run.experiment.Run.global_batch`), since a traced value cannot be inspected.
      check_token_ids(tokens_BL, self.vocab_size, what="token ids")
    x = self.tokens(tokens_BL)
    if self.scale != 1.0:
      x = x * jnp.asarray(self.scale, x.dtype)
    if self.positional is not None:
      x = x + self.positional.embed(positions_BL).astype(x.dtype)
    if self.token_types is not None:
      types = jnp.zeros_like(tokens_BL) if token_types_BL is None else token_types_BL
      x = x + self.token_types(types)
    if self.norm is not None:
      x = self.norm(x)
    return self.dropout(x)

  def attend(self, x_BLD: jax.Array) -> jax.Array:
    """Logits against the token embedding (tied output layer)."""
    return self.tokens.attend(x_BLD)
