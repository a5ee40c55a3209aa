"""Forward kernel: one program per (batch, query head, query tile), online softmax over key tiles.

For query tile I against key tiles J = 0, 1, ... (FlashAttention, Dao et al. 2022):

  m ← max(m_old, rowmax S_J)    P_J = e^(S_J - m) ∘ visible    l ← e^(m_old - m) l + rowsum P_J
  acc ← e^(m_old - m) acc + P_J V_J                  out = acc / l,   lse = m + log l

with S_J the tile logits of `tiles`: the bias is evaluated per tile from the score_mod's per-tile
part and the program's head residuals (see `hoist`). Tiles with no visible pair (causal upper
triangle, other packed segments, padding) are skipped. Only `lse` (float32 `[B, H, Q]`) is saved
for the backward pass; a query with no visible key gets out = 0 and lse = 0 (its probabilities
are all zero, like the reference).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from posjax.kernels import tiles
from posjax.kernels.spec import KernelSpec, head_specs


def _kernel(spec: KernelSpec, q_ref, k_ref, v_ref, q_pos_ref, k_pos_ref, q_seg_ref, k_seg_ref,
            *refs):
  residual_refs, (o_ref, lse_ref) = refs[:-2], refs[-2:]
  residuals = tiles.load(residual_refs)
  q_QD = q_ref[...]
  q_pos_Q, q_seg_Q = q_pos_ref[...], q_seg_ref[...]
  block_q, head_dim = q_QD.shape
  num_k_tiles = k_ref.shape[0] // spec.block_k

  def tile(j, carry):
    keys = pl.ds(j * spec.block_k, spec.block_k)
    k_pos_K = k_pos_ref[keys]
    mask = tiles.visible(q_pos_Q, k_pos_K, q_seg_Q, k_seg_ref[keys], causal=spec.causal)

    def update(carry):
      m_Q, l_Q, acc_QD = carry
      v_KD = v_ref[keys, :]
      s = tiles.dot_qk(q_QD, k_ref[keys, :]) * spec.scale
      s = s + tiles.bias(spec.split, residuals, q_pos_Q, k_pos_K, residual_refs)
      s = jnp.where(mask, s, tiles.NEG)
      m_new = jnp.maximum(m_Q, jnp.max(s, axis=1))
      p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
      alpha = jnp.exp(m_Q - m_new)
      l_new = alpha * l_Q + jnp.sum(p, axis=1)
      acc_new = alpha[:, None] * acc_QD + tiles.dot(p.astype(v_KD.dtype), v_KD)
      return m_new, l_new, acc_new

    return jax.lax.cond(tiles.any_visible(mask), update, lambda c: c, carry)

  init = (jnp.full((block_q,), tiles.NEG, jnp.float32), jnp.zeros((block_q,), jnp.float32),
          jnp.zeros((block_q, head_dim), jnp.float32))
  m_Q, l_Q, acc_QD = jax.lax.fori_loop(0, num_k_tiles, tile, init)
  seen = l_Q > 0
  o_ref[...] = jnp.where(seen[:, None], acc_QD / jnp.where(seen, l_Q, 1.0)[:, None],
                         0.0).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen, m_Q + jnp.log(jnp.where(seen, l_Q, 1.0)), 0.0)


def forward(spec: KernelSpec, q_BQHD, k_BKGD, v_BKGD, q_pos_BQ, k_pos_BK, q_seg_BQ, k_seg_BK,
            residuals):
  """`(out_BQHD, lse_BHQ)`; Q and K must be multiples of the tile sizes; `residuals` are the
  score_mod's per-head residuals `[H, ...]` (see `hoist`)."""
  batch, q_len, heads, head_dim = q_BQHD.shape
  k_len = k_BKGD.shape[1]
  bq, r = spec.block_q, spec.repeats
  grid = (batch, heads, q_len // bq)
  in_specs = [
      pl.BlockSpec((None, bq, None, head_dim), lambda b, h, i: (b, i, h, 0)),
      pl.BlockSpec((None, k_len, None, head_dim), lambda b, h, i: (b, 0, h // r, 0)),
      pl.BlockSpec((None, k_len, None, head_dim), lambda b, h, i: (b, 0, h // r, 0)),
      pl.BlockSpec((None, bq), lambda b, h, i: (b, i)),
      pl.BlockSpec((None, k_len), lambda b, h, i: (b, 0)),
      pl.BlockSpec((None, bq), lambda b, h, i: (b, i)),
      pl.BlockSpec((None, k_len), lambda b, h, i: (b, 0)),
  ] + head_specs(residuals)
  out_specs = [
      pl.BlockSpec((None, bq, None, head_dim), lambda b, h, i: (b, i, h, 0)),
      pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i)),
  ]
  out_shape = [jax.ShapeDtypeStruct(q_BQHD.shape, q_BQHD.dtype),
               jax.ShapeDtypeStruct((batch, heads, q_len), jnp.float32)]
  kernel = lambda *refs: _kernel(spec, *refs)
  return spec.call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                   out_shape=out_shape, head_dim=head_dim)(
                       q_BQHD, k_BKGD, v_BKGD, q_pos_BQ, k_pos_BK, q_seg_BQ, k_seg_BK, *residuals)
