"""Decoder-only language model (GPT-like)."""

from __future__ import annotations

from typing import Optional

import jax
from flax import nnx

from posjax.models.config import TransformerConfig
from posjax.models.stack import Stack, default_positions, input_embedding
from posjax.nn.heads import LMHead


class DecoderLM(nnx.Module):
  """Causal LM: `logits_BLV = model(tokens_BL, positions_BL, segment_ids_BL)`.

  For generation: `init_cache(batch, max_len)`, then call with `decode=True` on the prompt and on
  each new token; positions continue from what the caller passes (default: the cache fill level).
  """

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.decoder = Stack(cfg, num_layers=cfg.num_layers, causal=True, rngs=rngs)
    self.embedding = input_embedding(cfg, self.decoder, rngs=rngs)
    self.head = LMHead(cfg.dim, cfg.vocab_size,
                       embedding=self.embedding if cfg.tie_embeddings else None,
                       tied_scale=cfg.tied_output_scale, dtype=cfg.compute_dtype,
                       param_dtype=cfg.params_dtype, rngs=rngs)

  def init_cache(self, batch: int, max_len: int, dtype=None) -> None:
    self.decoder.init_cache(batch, max_len, dtype)

  def __call__(self, tokens_BL: jax.Array, positions_BL: Optional[jax.Array] = None,
               segment_ids_BL: Optional[jax.Array] = None, *, decode: bool = False) -> jax.Array:
    if positions_BL is None:
      positions_BL = default_positions(tokens_BL, segment_ids_BL, self.config.positions)
      if decode:
        positions_BL = positions_BL + self.decoder.cache_index()
    x = self.embedding(tokens_BL, positions_BL)
    x = self.decoder(x, positions_BL=positions_BL, segment_ids_BL=segment_ids_BL, decode=decode)
    return self.head(x)
