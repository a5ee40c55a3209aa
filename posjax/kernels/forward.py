"""Forward kernel: one program per (batch, query head, query tile), online softmax over key tiles.

For query tile I against key tiles J = 0, 1, ... (FlashAttention, Dao et al. 2022):

  m ← max(m_old, rowmax S_J)    P_J = e^(S_J - m) ∘ visible    l ← e^(m_old - m) l + rowsum P_J
  acc ← e^(m_old - m) acc + P_J V_J                  out = acc / l,   lse = m + log l

with S_J the tile logits of `tiles`: the bias is evaluated per tile from the score_mod's per-tile
part and the program's head residuals (see `hoist`). Tiles with no visible pair (causal upper
triangle, other packed segments, padding) are skipped. Only `lse` (float32 `[B, H, Q]`, in the layout's row form) is saved
for the backward pass; a query with no visible key gets out = 0 and lse = 0 (its probabilities
are all zero, like the reference).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from posjax.kernels import tiles
from posjax.kernels.spec import KernelSpec, head_specs


def _kernel(spec: KernelSpec, q_ref, k_ref, v_ref, q_pos_ref, k_pos_ref, q_seg_ref, k_seg_ref,
            *refs):
  layout = spec.layout
  residual_refs, (o_ref, lse_ref) = refs[:-2], refs[-2:]
  residuals = tiles.load(residual_refs)
  q_QD = q_ref[...]
  q_pos_Q, q_seg_Q = layout.read(q_pos_ref), layout.read(q_seg_ref)
  block_q, head_dim = q_QD.shape
  num_k_tiles = k_ref.shape[0] // spec.block_k

  def tile(j, carry):
    keys = layout.slice(j, spec.block_k)
    k_pos_K = layout.read_tile(k_pos_ref, j, spec.block_k)
    k_seg_K = layout.read_tile(k_seg_ref, j, spec.block_k)
    mask = tiles.visible(q_pos_Q, k_pos_K, q_seg_Q, k_seg_K, causal=spec.causal)

    def update(carry):
      m_Q, l_Q, acc_QD = carry
      v_KD = v_ref[keys, :]
      s = tiles.dot_qk(q_QD, k_ref[keys, :]) * spec.scale
      s = s + tiles.bias(spec.split, residuals, q_pos_Q, k_pos_K,
                         layout.lookup_refs(residual_refs))
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
  layout.write(lse_ref, jnp.where(seen, m_Q + jnp.log(jnp.where(seen, l_Q, 1.0)), 0.0))


def forward(spec: KernelSpec, q, k, v, q_pos, k_pos, q_seg, k_seg, residuals):
  """`(out, lse)` in `spec.layout`'s form (q `[B, Q, H, D]` or `[B, H, Q, D]`, k/v with G heads,
  rows as `layout.rows`, residuals `[H, ...]` as `layout.residual`; lse float32 as
  `layout.head_rows` of `[B, H, Q]`). Q and K must be multiples of the tile sizes."""
  layout = spec.layout
  batch, heads, head_dim = q.shape[0], q.shape[layout.head_axis], q.shape[-1]
  q_len, k_len = q.shape[layout.length_axis], k.shape[layout.length_axis]
  bq, bk, r = spec.block_q, spec.block_k, spec.repeats
  grid = (batch, heads, q_len // bq)
  in_specs = [
      layout.heads_block(bq, head_dim, lambda b, h, i: (b, i, h)),
      layout.heads_block(k_len, head_dim, lambda b, h, i: (b, 0, h // r)),
      layout.heads_block(k_len, head_dim, lambda b, h, i: (b, 0, h // r)),
      layout.row_tile(bq, 1, lambda b, h, i: (b, i)),
      layout.row_all(k_len, bk, 1, lambda b, h, i: (b,)),
      layout.row_tile(bq, 1, lambda b, h, i: (b, i)),
      layout.row_all(k_len, bk, 1, lambda b, h, i: (b,)),
  ] + head_specs(residuals)
  out_specs = [
      layout.heads_block(bq, head_dim, lambda b, h, i: (b, i, h)),
      layout.row_tile(bq, 2, lambda b, h, i: (b, h, i)),
  ]
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype),
               jax.ShapeDtypeStruct(layout.head_rows_shape(batch, heads, q_len, bq), jnp.float32)]
  kernel = lambda *refs: _kernel(spec, *refs)
  return spec.call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                   out_shape=out_shape, head_dim=head_dim)(
                       q, k, v, q_pos, k_pos, q_seg, k_seg, *residuals)
