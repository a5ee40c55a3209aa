"""Backward kernels: recompute each tile's probabilities from the saved logsumexp.

With P = e^(S - lse) ∘ visible, dO the output cotangent and delta_i = Σ_d dO[i, d] · O[i, d]:

  dP = dO V^T        dS = P ∘ (dP - delta)        dQ = scale · dS K
  dV = P^T dO        dK = scale · dS^T Q          dr_h = Σ_ij dS[i, j] · ∂bias(i, j)/∂r_h

with r_h head h's residuals of the score_mod (see `hoist`). Two kernels, neither holding more
than one `[bq, bk]` tile of S:

- `dq_and_bias`: one program per (batch, query head, query tile), looping over key tiles. It
  accumulates dQ and, for the floating residuals, the VJP of the tile's bias (`jax.vjp` of the
  per-tile part, traced inside the kernel) on that tile's dS. Each program writes its own partial
  dr_h (`[B, H, Q / bq, *shape]`, O(L) in total); the caller sums them and JAX carries them back
  to the parameters θ through the per-head part, outside the kernel. This covers any score_mod,
  including FIRE, whose bias depends on the query position itself and not only on i - j.
- `dk_dv`: one program per (batch, query head, key tile), looping over query tiles. It writes dK
  and dV per query head; the caller sums the heads that share a key/value head (GQA).

Arrays are in the spec's block layout (`layout`): `[B, L, H, D]` on GPU, `[B, H, L, D]` on TPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from posjax.kernels import tiles
from posjax.kernels.spec import KernelSpec, head_specs


def _probabilities(spec, q_QD, k_KD, lse_Q, bias_QK, mask_QK):
  s = tiles.dot_qk(q_QD, k_KD) * spec.scale + bias_QK
  return jnp.where(mask_QK, jnp.exp(s - lse_Q[:, None]), 0.0)


def _floating(spec: KernelSpec) -> tuple[bool, ...]:
  return () if spec.split is None else spec.split.floating


def _dq_kernel(spec: KernelSpec, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_pos_ref,
               k_pos_ref, q_seg_ref, k_seg_ref, *refs):
  layout = spec.layout
  floating = _floating(spec)
  n = len(floating)
  residual_refs = refs[:n]
  residuals = tiles.load(residual_refs)
  dq_ref, dresidual_refs = refs[n], refs[n + 1:]
  q_QD, do_QD = q_ref[...], do_ref[...]
  lse_Q, delta_Q = layout.read(lse_ref), layout.read(delta_ref)
  q_pos_Q, q_seg_Q = layout.read(q_pos_ref), layout.read(q_seg_ref)
  num_k_tiles = k_ref.shape[0] // spec.block_k

  def bias_of(differentiable, k_pos_K):
    # Integer residuals (e.g. a broadcast head index) are constants of the VJP.
    it = iter(differentiable)
    values = [next(it) if f else r for r, f in zip(residuals, floating)]
    return tiles.bias(spec.split, values, q_pos_Q, k_pos_K)

  def tile(j, carry):
    keys = layout.slice(j, spec.block_k)
    k_pos_K = layout.read_tile(k_pos_ref, j, spec.block_k)
    k_seg_K = layout.read_tile(k_seg_ref, j, spec.block_k)
    mask = tiles.visible(q_pos_Q, k_pos_K, q_seg_Q, k_seg_K, causal=spec.causal)

    def update(carry):
      dq_QD, dresiduals = carry
      k_KD, v_KD = k_ref[keys, :], v_ref[keys, :]
      differentiable = [r for r, f in zip(residuals, floating) if f]
      # The bias itself from the refs (table lookups as loads); the VJP's own forward pass
      # (lookups as selects) is then dead code but for what the gradient needs.
      bias_QK = tiles.bias(spec.split, residuals, q_pos_Q, k_pos_K,
                           layout.lookup_refs(residual_refs))
      _, bias_vjp = jax.vjp(lambda rs: bias_of(rs, k_pos_K), differentiable)
      p = _probabilities(spec, q_QD, k_KD, lse_Q, bias_QK, mask)
      ds = p * (tiles.dot_qk(do_QD, v_KD) - delta_Q[:, None])
      dq_QD = dq_QD + tiles.dot(ds.astype(k_KD.dtype), k_KD) * spec.scale
      if dresiduals:
        (tile_grads,) = bias_vjp(ds)
        dresiduals = [a + g.astype(jnp.float32) for a, g in zip(dresiduals, tile_grads)]
      return dq_QD, dresiduals

    return jax.lax.cond(tiles.any_visible(mask), update, lambda c: c, carry)

  init = (jnp.zeros(q_QD.shape, jnp.float32),
          [jnp.zeros(r.shape, jnp.float32) for r, f in zip(residuals, floating) if f])
  dq_QD, dresiduals = jax.lax.fori_loop(0, num_k_tiles, tile, init)
  dq_ref[...] = dq_QD
  for ref, g in zip(dresidual_refs, dresiduals):
    ref[...] = g


def _dkdv_kernel(spec: KernelSpec, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_pos_ref,
                 k_pos_ref, q_seg_ref, k_seg_ref, *refs):
  layout = spec.layout
  n = len(_floating(spec))
  residual_refs, (dk_ref, dv_ref) = refs[:n], refs[n:]
  residuals = tiles.load(residual_refs)
  k_KD, v_KD = k_ref[...], v_ref[...]
  k_pos_K, k_seg_K = layout.read(k_pos_ref), layout.read(k_seg_ref)
  num_q_tiles = q_ref.shape[0] // spec.block_q

  def tile(i, carry):
    queries = layout.slice(i, spec.block_q)
    row = lambda ref: layout.read_tile(ref, i, spec.block_q)
    q_pos_Q = row(q_pos_ref)
    mask = tiles.visible(q_pos_Q, k_pos_K, row(q_seg_ref), k_seg_K, causal=spec.causal)

    def update(carry):
      dk_KD, dv_KD = carry
      q_QD, do_QD = q_ref[queries, :], do_ref[queries, :]
      bias_QK = tiles.bias(spec.split, residuals, q_pos_Q, k_pos_K,
                           layout.lookup_refs(residual_refs))
      p = _probabilities(spec, q_QD, k_KD, row(lse_ref), bias_QK, mask)
      dv_KD = dv_KD + tiles.dot_tn(p.astype(do_QD.dtype), do_QD)
      ds = p * (tiles.dot_qk(do_QD, v_KD) - row(delta_ref)[:, None])
      dk_KD = dk_KD + tiles.dot_tn(ds.astype(q_QD.dtype), q_QD) * spec.scale
      return dk_KD, dv_KD

    return jax.lax.cond(tiles.any_visible(mask), update, lambda c: c, carry)

  init = (jnp.zeros(k_KD.shape, jnp.float32), jnp.zeros(v_KD.shape, jnp.float32))
  dk_KD, dv_KD = jax.lax.fori_loop(0, num_q_tiles, tile, init)
  dk_ref[...] = dk_KD
  dv_ref[...] = dv_KD


def _shape(spec: KernelSpec, q, k):
  """`(batch, heads, head_dim, q_len, k_len)` of layout-shaped q and k."""
  layout = spec.layout
  return (q.shape[0], q.shape[layout.head_axis], q.shape[-1], q.shape[layout.length_axis],
          k.shape[layout.length_axis])


def _row_specs(spec: KernelSpec, q_len: int, k_len: int, q_tiled: bool):
  """BlockSpecs of lse, delta, q_pos, k_pos, q_seg, k_seg: one query tile per program and every
  key (`q_tiled`, the dq kernel) or one key tile and every query (the dk/dv kernel)."""
  layout, bq, bk = spec.layout, spec.block_q, spec.block_k
  if q_tiled:
    per_head = layout.row_tile(bq, 2, lambda b, h, i: (b, h, i))
    q_rows = layout.row_tile(bq, 1, lambda b, h, i: (b, i))
    k_rows = layout.row_all(k_len, bk, 1, lambda b, h, i: (b,))
  else:
    per_head = layout.row_all(q_len, bq, 2, lambda b, h, j: (b, h))
    q_rows = layout.row_all(q_len, bq, 1, lambda b, h, j: (b,))
    k_rows = layout.row_tile(bk, 1, lambda b, h, j: (b, j))
  return [per_head, per_head, q_rows, k_rows, q_rows, k_rows]


def dq_and_bias(spec: KernelSpec, q, k, v, do, lse, delta, q_pos, k_pos, q_seg, k_seg,
                residuals):
  """`(dq float32, partial dr per floating residual, each [B, H, Q / bq, *shape] float32)`, all
  in `spec.layout`'s form (see `forward.forward`; lse and delta as `layout.head_rows`)."""
  layout = spec.layout
  batch, heads, head_dim, q_len, k_len = _shape(spec, q, k)
  bq, r = spec.block_q, spec.repeats
  grid = (batch, heads, q_len // bq)
  q_tile = layout.heads_block(bq, head_dim, lambda b, h, i: (b, i, h))
  kv_all = layout.heads_block(k_len, head_dim, lambda b, h, i: (b, 0, h // r))
  in_specs = ([q_tile, kv_all, kv_all, q_tile] + _row_specs(spec, q_len, k_len, q_tiled=True)
              + head_specs(residuals))
  grads_of = [x for x, f in zip(residuals, _floating(spec)) if f]

  def partial_spec(x):
    zeros = (0,) * (x.ndim - 1)
    return pl.BlockSpec((None, None, None) + x.shape[1:], lambda b, h, i: (b, h, i) + zeros)

  out_specs = [q_tile] + [partial_spec(x) for x in grads_of]
  out_shape = [jax.ShapeDtypeStruct(q.shape, jnp.float32)] + [
      jax.ShapeDtypeStruct(grid + x.shape[1:], jnp.float32) for x in grads_of]
  kernel = lambda *refs: _dq_kernel(spec, *refs)
  outs = spec.call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                   out_shape=out_shape, head_dim=head_dim)(
                       q, k, v, do, lse, delta, q_pos, k_pos, q_seg, k_seg, *residuals)
  return outs[0], list(outs[1:])


def dk_dv(spec: KernelSpec, q, k, v, do, lse, delta, q_pos, k_pos, q_seg, k_seg, residuals):
  """`(dk, dv)` float32 per query head, in `spec.layout`'s form (sum each group for GQA)."""
  layout = spec.layout
  batch, heads, head_dim, q_len, k_len = _shape(spec, q, k)
  bk, r = spec.block_k, spec.repeats
  grid = (batch, heads, k_len // bk)
  q_all = layout.heads_block(q_len, head_dim, lambda b, h, j: (b, 0, h))
  kv_tile = layout.heads_block(bk, head_dim, lambda b, h, j: (b, j, h // r))
  in_specs = ([q_all, kv_tile, kv_tile, q_all] + _row_specs(spec, q_len, k_len, q_tiled=False)
              + head_specs(residuals))
  out_tile = layout.heads_block(bk, head_dim, lambda b, h, j: (b, j, h))
  dkv_shape = list(q.shape)
  dkv_shape[layout.length_axis] = k_len
  out_shape = [jax.ShapeDtypeStruct(tuple(dkv_shape), jnp.float32)] * 2
  kernel = lambda *refs: _dkdv_kernel(spec, *refs)
  return spec.call(kernel, grid=grid, in_specs=in_specs, out_specs=[out_tile, out_tile],
                   out_shape=out_shape, head_dim=head_dim)(
                       q, k, v, do, lse, delta, q_pos, k_pos, q_seg, k_seg, *residuals)
