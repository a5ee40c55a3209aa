"""A Transformer block: self-attention, optional cross-attention, MLP; pre- or post-norm."""

from __future__ import annotations

from typing import Optional

import jax
from flax import nnx

from posjax.nn.attention import Attention
from posjax.nn.mlp import MLP
from posjax.nn.positional import PositionalEncoding


def make_norm(cfg, rngs: nnx.Rngs) -> nnx.Module:
  """LayerNorm or RMSNorm (Zhang & Sennrich 2019) over the model width, as `cfg.norm` says."""
  kw = dict(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs,
            scale_metadata={"out_sharding": ("embed",)})
  if cfg.norm == "rmsnorm":
    return nnx.RMSNorm(cfg.dim, **kw)
  return nnx.LayerNorm(cfg.dim, use_bias=True, bias_metadata={"out_sharding": ("embed",)}, **kw)


class Block(nnx.Module):
  """`x + Attn(N(x))`, `x + Cross(N(x), enc)`, `x + MLP(N(x))` (pre-norm) or
  `N(x + Attn(x))` ... (post-norm, Vaswani et al. 2017)."""

  def __init__(self, cfg, *, causal: bool, cross_attention: bool = False,
               positional: Optional[PositionalEncoding] = None, layer: int = 0,
               rngs: nnx.Rngs):
    attn_kw = dict(dim=cfg.dim, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                   head_dim=cfg.head_dim, use_bias=cfg.resolved_qkv_bias,
                   out_bias=cfg.resolved_out_bias, scale=cfg.layer_attention_scale(layer),
                   backend=cfg.attention_backend, chunk_size=cfg.chunk_size,
                   dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
    self.pre_norm = cfg.norm_position == "pre"
    self.attention_norm = make_norm(cfg, rngs)
    self.attention = Attention(causal=causal, positional=positional, **attn_kw)
    if cross_attention:
      self.cross_norm = make_norm(cfg, rngs)
      self.cross_attention = Attention(causal=False, positional=None, **attn_kw)
    else:
      self.cross_norm = self.cross_attention = None
    self.mlp_norm = make_norm(cfg, rngs)
    self.mlp = MLP(cfg.dim, cfg.resolved_mlp_dim, activation=cfg.activation,
                   use_bias=cfg.resolved_mlp_bias, dtype=cfg.compute_dtype,
                   param_dtype=cfg.params_dtype,
                   rngs=rngs)
    self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
    # Bottleneck adapters after the attention and MLP sublayers (set by posjax.nn.peft).
    self.attention_adapter = nnx.data(None)
    self.mlp_adapter = nnx.data(None)

  def _residual(self, x, norm, sublayer, adapter=None):
    if adapter is not None:
      sublayer = lambda h, inner=sublayer: adapter(inner(h))
    if self.pre_norm:
      return x + self.dropout(sublayer(norm(x)))
    return norm(x + self.dropout(sublayer(x)))

  def __call__(self, x_BLD: jax.Array, *, positions_BL, segment_ids_BL=None, encoded_BKD=None,
               encoded_positions_BK=None, encoded_segment_ids_BK=None,
               decode: bool = False) -> jax.Array:
    x = self._residual(x_BLD, self.attention_norm, lambda h: self.attention(
        h, positions_BQ=positions_BL, segment_ids_BQ=segment_ids_BL, decode=decode),
        self.attention_adapter)
    if self.cross_attention is not None:
      x = self._residual(x, self.cross_norm, lambda h: self.cross_attention(
          h, positions_BQ=positions_BL, segment_ids_BQ=segment_ids_BL, kv_BKD=encoded_BKD,
          kv_positions_BK=encoded_positions_BK, kv_segment_ids_BK=encoded_segment_ids_BK))
    return self._residual(x, self.mlp_norm, self.mlp, self.mlp_adapter)
