"""Encoder-decoder (original Transformer / T5-like) with cross-attention."""

from __future__ import annotations


import jax
from flax import nnx

from posjax.models.config import TransformerConfig
from posjax.models.stack import Stack, default_positions, input_embedding
from posjax.nn.heads import LMHead


class EncoderDecoderLM(nnx.Module):
  """`logits = model(inputs, targets_in)`; the two stacks share one token table and each has its
  own positional modules (a T5 encoder's buckets are bidirectional, its decoder's causal)."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.encoder = Stack(cfg, num_layers=cfg.num_layers, causal=False, rngs=rngs)
    self.decoder = Stack(cfg, num_layers=cfg.num_decoder_layers or cfg.num_layers, causal=True,
                         cross_attention=True, rngs=rngs)
    self.encoder_embedding = input_embedding(cfg, self.encoder, rngs=rngs)
    self.decoder_embedding = input_embedding(cfg, self.decoder, rngs=rngs,
                                             tokens=self.encoder_embedding.tokens)
    self.head = LMHead(cfg.dim, cfg.vocab_size,
                       embedding=self.decoder_embedding if cfg.tie_embeddings else None,
                       tied_scale=cfg.tied_output_scale, dtype=cfg.compute_dtype,
                       param_dtype=cfg.params_dtype, rngs=rngs)

  def init_cache(self, batch: int, max_len: int, dtype=None) -> None:
    self.decoder.init_cache(batch, max_len, dtype)

  def encode(self, tokens_BK, positions_BK=None, segment_ids_BK=None) -> jax.Array:
    if positions_BK is None:
      positions_BK = default_positions(tokens_BK, segment_ids_BK, self.config.positions)
    x = self.encoder_embedding(tokens_BK, positions_BK)
    return self.encoder(x, positions_BL=positions_BK, segment_ids_BL=segment_ids_BK)

  def decode(self, encoded_BKD, tokens_BL, positions_BL=None, segment_ids_BL=None, *,
             encoder_segment_ids_BK=None, decode: bool = False) -> jax.Array:
    if positions_BL is None:
      positions_BL = default_positions(tokens_BL, segment_ids_BL, self.config.positions)
      if decode:
        positions_BL = positions_BL + self.decoder.cache_index()
    x = self.decoder_embedding(tokens_BL, positions_BL)
    encoded_positions = default_positions(encoded_BKD[..., 0], encoder_segment_ids_BK,
                                          self.config.positions)
    x = self.decoder(x, positions_BL=positions_BL, segment_ids_BL=segment_ids_BL,
                     encoded_BKD=encoded_BKD, encoded_positions_BK=encoded_positions,
                     encoded_segment_ids_BK=encoder_segment_ids_BK, decode=decode)
    return self.head(x)

  def __call__(self, inputs_BK, targets_in_BL, *, input_segment_ids_BK=None,
               target_segment_ids_BL=None) -> jax.Array:
    encoded = self.encode(inputs_BK, segment_ids_BK=input_segment_ids_BK)
    return self.decode(encoded, targets_in_BL, segment_ids_BL=target_segment_ids_BL,
                       encoder_segment_ids_BK=input_segment_ids_BK)
