"""Splitting a `score_mod` into a per-head part (plain XLA) and a per-tile part (in the kernel).

  score_mod(θ, h, q_pos, k_pos) = per_tile(r_h, q_pos, k_pos),      r_h = per_head(θ, h)

JAX's partial evaluation does the split, with θ and h known and the positions unknown: every
operation that depends only on θ and h (selecting head h's slope, kernel parameters or MLP column,
clamping them, constants such as Sandwich's frequencies) lands in `per_head`, the rest in
`per_tile`. Why: inside a GPU (Triton) kernel, indexing a parameter by the traced head
(`r1[head]`) is a `dynamic_slice` that the Pallas Triton lowering does not implement; after the
split the kernel receives head h's residuals `r_h` through its BlockSpec instead, and the tile
computation is elementwise arithmetic and reductions.

Gradients follow the same split: the backward kernel takes the VJP of `per_tile` with respect to
r_h on each tile (no scatter into θ inside the kernel), and JAX differentiates `per_head` outside.

This uses `jax._src.interpreters.partial_eval` (not public API); the split is checked by the
kernel tests against the unsplit reference.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax._src.interpreters import partial_eval as pe


@dataclasses.dataclass(frozen=True)
class SplitScoreMod:
  """`per_tile` as a jaxpr traced at one tile shape, and the residuals' per-head shapes."""

  per_tile: Any                        # ClosedJaxpr: (*residuals, q_pos [bq,1], k_pos [1,bk])
  shapes: tuple[tuple[int, ...], ...]  # per-head residual shapes
  floating: tuple[bool, ...]           # which residuals carry gradients

  def bias(self, residuals, q_pos_Q, k_pos_K) -> jax.Array:
    """`[bq, bk]` float32 bias of one head's tile, from that head's residuals (each loaded in
    its kernel layout: at least 1-d)."""
    values = [r.reshape(s) for r, s in zip(residuals, self.shapes)]
    (out,) = jax.core.eval_jaxpr(self.per_tile.jaxpr, self.per_tile.consts, *values,
                                 q_pos_Q[:, None], k_pos_K[None, :])
    return jnp.broadcast_to(out, (q_pos_Q.shape[0], k_pos_K.shape[0]))


def split(score_mod: Callable, params, *, num_heads: int, block_q: int,
          block_k: int) -> tuple[SplitScoreMod, list[jax.Array]]:
  """The split of `score_mod` at tiles of `block_q × block_k`, and the residuals of every head,
  each `[H, *shape]` (a scalar residual as `[H, 1]`), computed from `params` by differentiable
  XLA ops."""
  leaves, treedef = jax.tree.flatten(params)
  leaves = [jnp.asarray(x) for x in leaves]

  def flat(*args):
    theta = jax.tree.unflatten(treedef, args[:len(leaves)])
    head, q_pos, k_pos = args[len(leaves):]
    return jnp.asarray(score_mod(theta, head, q_pos, k_pos), jnp.float32)

  avals = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves] + [
      jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((block_q, 1), jnp.int32),
      jax.ShapeDtypeStruct((1, block_k), jnp.int32)]
  closed = jax.make_jaxpr(flat)(*avals)
  per_head, per_tile, _, residual_avals = pe.partial_eval_jaxpr_nounits(
      closed, [False] * (len(leaves) + 1) + [True, True], instantiate=True)

  def residuals_of(head):
    return jax.core.eval_jaxpr(per_head.jaxpr, per_head.consts, *leaves, head)

  heads = jnp.arange(num_heads, dtype=jnp.int32)
  residuals = jax.vmap(residuals_of)(heads) if residual_avals else []
  shapes = tuple(a.shape for a in residual_avals)
  floating = tuple(jnp.issubdtype(a.dtype, jnp.floating) for a in residual_avals)
  residuals = [r.reshape((num_heads,) + (s or (1,))) for r, s in zip(residuals, shapes)]
  return SplitScoreMod(per_tile, shapes, floating), residuals
