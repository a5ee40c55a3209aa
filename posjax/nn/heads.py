"""Output heads: language modelling (tied or not), masked LM, next-sentence prediction, sequence and
token classification."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from posjax.nn.embedding import InputEmbedding
from posjax.nn.mlp import ACTIVATIONS


def _linear(d_in, d_out, names, *, use_bias=True, dtype, param_dtype, rngs):
  return nnx.Linear(d_in, d_out, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                    rngs=rngs, kernel_metadata={"out_sharding": names},
                    bias_metadata={"out_sharding": names[-1:]})


class LMHead(nnx.Module):
  """Next-token logits: against the token embedding (tied, times `tied_scale`) or a projection."""

  def __init__(self, dim: int, vocab_size: int, *, embedding: Optional[InputEmbedding],
               tied_scale: float = 1.0, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.embedding = embedding
    self.tied_scale = tied_scale
    self.proj = None if embedding is not None else _linear(
        dim, vocab_size, ("embed", "vocab"), use_bias=False, dtype=dtype,
        param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    if self.proj is not None:
      return self.proj(x_BLD).astype(jnp.float32)
    return self.embedding.attend(x_BLD * self.tied_scale).astype(jnp.float32)


class MaskedLMHead(nnx.Module):
  """BERT's MLM head: dense, activation, norm, then tied output logits plus a bias."""

  def __init__(self, dim: int, vocab_size: int, *, embedding: InputEmbedding, norm: nnx.Module,
               activation: str = "gelu", dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.transform = _linear(dim, dim, ("embed", "embed_out"), dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs)
    self.activation = activation
    self.norm = norm
    self.embedding = embedding
    self.bias = nnx.Param(jnp.zeros((vocab_size,), param_dtype), out_sharding=("vocab",))

  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    h = self.norm(ACTIVATIONS[self.activation](self.transform(x_BLD)))
    return (self.embedding.attend(h) + self.bias[...]).astype(jnp.float32)


class NextSentenceHead(nnx.Module):
  """BERT's next-sentence prediction head (Devlin et al. 2019, "BERT: Pre-training of Deep
  Bidirectional Transformers for Language Understanding", NAACL, section 3.1, task #2).

  The pooler, `tanh(W_p h_[CLS] + b_p)` on the first token's final state, then a 2-way linear
  layer: `[B, 2]` logits, class 0 = IsNext (the second segment follows the first in the text),
  1 = NotNext (a random segment), the labels of the paper's and HF's `BertForPreTraining`. As
  there, no dropout between the pooler and the classifier.
  """

  def __init__(self, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.pooler = _linear(dim, dim, ("embed", "embed_out"), **kw)
    self.classifier = _linear(dim, 2, ("embed", "classes"), **kw)

  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    pooled_BD = jnp.tanh(self.pooler(pool(x_BLD, None, "cls")))
    return self.classifier(pooled_BD).astype(jnp.float32)


def pool(x_BLD: jax.Array, segment_ids_BL: Optional[jax.Array], how: str) -> jax.Array:
  """`[B, D]`: the first token's state (`cls`) or the mean over non-padding tokens (`mean`)."""
  if how == "cls":
    return x_BLD[:, 0]
  if how == "mean":
    weights = (jnp.ones(x_BLD.shape[:2]) if segment_ids_BL is None
               else (segment_ids_BL != 0).astype(jnp.float32))
    total = jnp.einsum("bld,bl->bd", x_BLD.astype(jnp.float32), weights)
    return (total / jnp.maximum(weights.sum(-1, keepdims=True), 1.0)).astype(x_BLD.dtype)
  raise ValueError(f"unknown pooling {how!r}: choose cls or mean")


class SequenceClassificationHead(nnx.Module):
  """Pool, an optional representation layer (dense + tanh, BERT's pooler), dropout, classes."""

  def __init__(self, dim: int, num_classes: int, *, pooling: str = "cls",
               representation_layer: bool = True, dropout: float = 0.1, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    pool(jnp.zeros((1, 1, 1)), None, pooling)  # validates the name early
    self.pooling = pooling
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.representation = (_linear(dim, dim, ("embed", "embed_out"), **kw)
                           if representation_layer else None)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.classifier = _linear(dim, num_classes, ("embed", "classes"), **kw)

  def __call__(self, x_BLD: jax.Array, segment_ids_BL: Optional[jax.Array] = None) -> jax.Array:
    h = pool(x_BLD, segment_ids_BL, self.pooling)
    if self.representation is not None:
      h = jnp.tanh(self.representation(h))
    return self.classifier(self.dropout(h)).astype(jnp.float32)


class TokenClassificationHead(nnx.Module):
  """Per-token labels (e.g. BIO tags for NER): an optional representation layer (dense + tanh),
  dropout, then a projection to the labels."""

  def __init__(self, dim: int, num_labels: int, *, representation_layer: bool = False,
               dropout: float = 0.1, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.representation = (_linear(dim, dim, ("embed", "embed_out"), **kw)
                           if representation_layer else None)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.classifier = _linear(dim, num_labels, ("embed", "classes"), **kw)

  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    if self.representation is not None:
      x_BLD = jnp.tanh(self.representation(x_BLD))
    return self.classifier(self.dropout(x_BLD)).astype(jnp.float32)
