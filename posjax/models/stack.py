"""The trunk shared by all model families: positional modules, blocks, final norm."""

from __future__ import annotations

from typing import Optional

import jax
from flax import nnx

from posjax import encodings
from posjax.models.config import TransformerConfig
from posjax.nn.block import Block, make_norm
from posjax.nn.embedding import InputEmbedding
from posjax.nn.positional import PositionalEncoding


def default_positions(tokens_BL: jax.Array, segment_ids_BL: Optional[jax.Array],
                      how: str = "from_first_token") -> jax.Array:
  """Positions when the caller gives none (`TransformerConfig.positions`).

  `from_first_token`: restart at 0 at the start of each segment if segment ids are given (packed
  rows; with left padding, the first real token is 0), else 0, 1, 2, .... `columns`: 0, 1, 2, ...
  along the row whatever the segments, as HF's BERT and a GPT-2 forward without position ids.
  """
  if segment_ids_BL is not None and how == "from_first_token":
    return encodings.positions_from_segment_ids(segment_ids_BL)
  return encodings.contiguous_positions(*tokens_BL.shape)


def _run_block(block, x, positions, segment_ids, encoded, encoded_positions,
               encoded_segment_ids, decode):
  return block(x, positions_BL=positions, segment_ids_BL=segment_ids, encoded_BKD=encoded,
               encoded_positions_BK=encoded_positions,
               encoded_segment_ids_BK=encoded_segment_ids, decode=decode)


_run_block_remat = nnx.remat(_run_block, static_argnums=(7,))


class Stack(nnx.Module):
  """N blocks and a final norm, with the positional scheme placed where its hooks act.

  An absolute scheme (`embed` hook) gets one module, `input_positional`, for the input layer.
  Other schemes get one module per layer, or one shared by all layers if `cfg.pe_shared`.
  """

  def __init__(self, cfg: TransformerConfig, *, num_layers: int, causal: bool,
               cross_attention: bool = False, rngs: nnx.Rngs):
    scheme = encodings.get(cfg.pe)

    def make_pe():
      return PositionalEncoding(
          cfg.pe, num_heads=cfg.num_heads, head_dim=cfg.resolved_head_dim, dim=cfg.dim,
          options=cfg.pe_options, context={"num_heads": cfg.num_heads, "bidirectional": not causal},
          rngs=rngs, param_dtype=cfg.params_dtype)

    self.input_positional = make_pe() if "embed" in scheme.hooks else None
    if self.input_positional is not None or not scheme.hooks:
      layer_pes = [None] * num_layers
    elif cfg.pe_shared:
      layer_pes = [make_pe()] * num_layers
    else:
      layer_pes = [make_pe() for _ in range(num_layers)]
    self.blocks = nnx.List([
        Block(cfg, causal=causal, cross_attention=cross_attention, positional=pe, layer=i,
              rngs=rngs)
        for i, pe in enumerate(layer_pes)])
    self.final_norm = make_norm(cfg, rngs) if cfg.final_norm else None
    self.remat = cfg.remat

  def init_cache(self, batch: int, max_len: int, dtype=None) -> None:
    for block in self.blocks:
      block.attention.init_cache(batch, max_len, dtype)

  def cache_index(self) -> jax.Array:
    return self.blocks[0].attention.cache["index"][...]

  def __call__(self, x_BLD, *, positions_BL, segment_ids_BL=None, encoded_BKD=None,
               encoded_positions_BK=None, encoded_segment_ids_BK=None, decode: bool = False):
    run = _run_block_remat if self.remat and not decode else _run_block
    for block in self.blocks:
      x_BLD = run(block, x_BLD, positions_BL, segment_ids_BL, encoded_BKD, encoded_positions_BK,
                  encoded_segment_ids_BK, decode)
    return x_BLD if self.final_norm is None else self.final_norm(x_BLD)


def input_embedding(cfg: TransformerConfig, stack: Stack, *, rngs: nnx.Rngs,
                    tokens: Optional[nnx.Embed] = None) -> InputEmbedding:
  """The input layer feeding `stack`, with the stack's absolute scheme if it has one."""
  return InputEmbedding(
      cfg.vocab_size, cfg.dim, positional=stack.input_positional,
      num_token_types=cfg.num_token_types,
      norm=make_norm(cfg, rngs) if cfg.embed_norm else None, dropout=cfg.dropout, tokens=tokens,
      scale=cfg.resolved_embed_scale,
      dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
