"""Bidirectional encoder (BERT-like) and its heads: masked LM, masked LM with next-sentence
prediction (BERT pretraining), sequence and token classification."""

from __future__ import annotations


import jax
from flax import nnx

from posjax.models.config import TransformerConfig
from posjax.models.stack import Stack, default_positions, input_embedding
from posjax.nn.block import make_norm
from posjax.nn.heads import MaskedLMHead, NextSentenceHead, SequenceClassificationHead
from posjax.nn.heads import TokenClassificationHead


class Encoder(nnx.Module):
  """Token ids to contextual states `[B, L, D]`; every token sees its whole segment."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.stack = Stack(cfg, num_layers=cfg.num_layers, causal=False, rngs=rngs)
    self.embedding = input_embedding(cfg, self.stack, rngs=rngs)
    self.prompt = nnx.data(None)  # a soft prompt prepended to the input (posjax.nn.peft, prompt tuning)

  def __call__(self, tokens_BL, positions_BL=None, segment_ids_BL=None,
               token_types_BL=None) -> jax.Array:
    if positions_BL is None:
      positions_BL = default_positions(tokens_BL, segment_ids_BL, self.config.positions)
    if self.prompt is None:
      x = self.embedding(tokens_BL, positions_BL, token_types_BL)
      return self.stack(x, positions_BL=positions_BL, segment_ids_BL=segment_ids_BL)
    # The text follows the prompt: its positions start after it; its states alone are returned.
    x = self.embedding(tokens_BL, positions_BL + self.prompt.length, token_types_BL)
    x, positions, segment_ids = self.prompt.prepend(x, positions_BL + self.prompt.length,
                                                    segment_ids_BL)
    x = self.stack(x, positions_BL=positions, segment_ids_BL=segment_ids)
    return x[:, self.prompt.length:]


class EncoderForMaskedLM(nnx.Module):
  """Encoder + BERT's masked-LM head (tied to the token embedding)."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.encoder = Encoder(cfg, rngs=rngs)
    self.head = MaskedLMHead(cfg.dim, cfg.vocab_size, embedding=self.encoder.embedding,
                             norm=make_norm(cfg, rngs), activation="gelu",
                             dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)

  def __call__(self, tokens_BL, positions_BL=None, segment_ids_BL=None, token_types_BL=None):
    return self.head(self.encoder(tokens_BL, positions_BL, segment_ids_BL, token_types_BL))


class EncoderForPreTraining(EncoderForMaskedLM):
  """Encoder + BERT's two pretraining heads (Devlin et al. 2019, section 3.1): the masked-LM head
  on every token and the next-sentence head on the pooled first token ([CLS]).

  `mlm_logits_BLV, nsp_logits_B2 = model(tokens_BL, positions_BL, segment_ids_BL,
  token_types_BL)`; the parameters are EncoderForMaskedLM's (`encoder`, `head`) plus `nsp`.
  """

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    self.nsp = NextSentenceHead(cfg.dim, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                                rngs=rngs)

  def __call__(self, tokens_BL, positions_BL=None, segment_ids_BL=None, token_types_BL=None):
    x = self.encoder(tokens_BL, positions_BL, segment_ids_BL, token_types_BL)
    return self.head(x), self.nsp(x)


class EncoderForSequenceClassification(nnx.Module):
  """Encoder + pooled classification head (`[B, num_classes]` logits)."""

  def __init__(self, cfg: TransformerConfig, *, num_classes: int, pooling: str = "cls",
               representation_layer: bool = True, rngs: nnx.Rngs):
    self.config = cfg
    self.encoder = Encoder(cfg, rngs=rngs)
    self.head = SequenceClassificationHead(
        cfg.dim, num_classes, pooling=pooling, representation_layer=representation_layer,
        dropout=cfg.dropout, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)

  def __call__(self, tokens_BL, positions_BL=None, segment_ids_BL=None, token_types_BL=None):
    x = self.encoder(tokens_BL, positions_BL, segment_ids_BL, token_types_BL)
    return self.head(x, segment_ids_BL)


class EncoderForTokenClassification(nnx.Module):
  """Encoder + per-token classification head (`[B, L, num_labels]` logits)."""

  def __init__(self, cfg: TransformerConfig, *, num_labels: int,
               representation_layer: bool = False, rngs: nnx.Rngs):
    self.config = cfg
    self.encoder = Encoder(cfg, rngs=rngs)
    self.head = TokenClassificationHead(cfg.dim, num_labels, dropout=cfg.dropout,
                                        representation_layer=representation_layer,
                                        dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                                        rngs=rngs)

  def __call__(self, tokens_BL, positions_BL=None, segment_ids_BL=None, token_types_BL=None):
    return self.head(self.encoder(tokens_BL, positions_BL, segment_ids_BL, token_types_BL))
