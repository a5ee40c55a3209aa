"""Splitting a `score_mod` into a per-head part (plain XLA) and a per-tile part (in the kernel).

  score_mod(θ, h, q_pos, k_pos) = per_tile(r_h, q_pos, k_pos),      r_h = per_head(θ, h)

JAX's partial evaluation does the split, with θ and h known and the positions unknown: every
operation that depends only on θ and h (selecting head h's slope, kernel parameters or MLP column,
clamping them) lands in `per_head`, the rest in `per_tile`. Why: inside a GPU (Triton) kernel,
indexing a parameter by the traced head (`r1[head]`) is a `dynamic_slice` that the Pallas Triton
lowering does not implement; after the split the kernel receives head h's residuals `r_h` through
its BlockSpec instead, and the tile computation is elementwise arithmetic and reductions. Values
that depend on neither θ nor h (a constant that `jnp.where` broadcasts to the tile, Sandwich's
frequencies) are computed in `per_tile`, so that no kernel input or bias gradient has the tile's
size.

Gradients follow the same split: the backward kernel takes the VJP of `per_tile` with respect to
r_h on each tile (no scatter into θ inside the kernel), and JAX differentiates `per_head` outside.

Table lookups. A per-tile `r_h[index]` into a 1-d residual (T5's bucket table, once its score_mod
has selected head h's column) is a `gather`, which the Pallas Triton lowering also lacks. `bias`
evaluates it as a load from the residual's kernel ref with an array of offsets (what a hand-written
Triton kernel does: `tl.load(table + bucket)`) when it is given the refs, and otherwise, where the
bias is differentiated, as a sum over the table's n entries of `where(index == e, r_h[e], 0)`,
whose VJP is n masked sums of dS over the tile; neither builds a `[bq, bk, n]` array.

This uses `jax._src.interpreters.partial_eval` (not public API); the split is checked by the
kernel tests against the unsplit reference.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.extend.core as jex
import jax.numpy as jnp
from jax._src.interpreters import partial_eval as pe


@dataclasses.dataclass(frozen=True)
class SplitScoreMod:
  """`per_tile` as a jaxpr traced at one tile shape, and the residuals' per-head shapes."""

  per_tile: Any                        # ClosedJaxpr: (*residuals, q_pos [bq,1], k_pos [1,bk])
  shapes: tuple[tuple[int, ...], ...]  # per-head residual shapes
  floating: tuple[bool, ...]           # which residuals carry gradients

  def bias(self, residuals, q_pos_Q, k_pos_K, refs=None) -> jax.Array:
    """`[bq, bk]` float32 bias of one head's tile, from that head's residuals (each loaded in
    its kernel layout: at least 1-d). With `refs` (the residuals' kernel refs, same order),
    table lookups load from them; without, they are select sums (differentiable)."""
    values = [r.reshape(s) for r, s in zip(residuals, self.shapes)]
    jaxpr = self.per_tile.jaxpr
    lookups = {} if refs is None else dict(zip(jaxpr.invars, refs))
    (out,) = _evaluate(jaxpr, self.per_tile.consts, [*values, q_pos_Q[:, None], k_pos_K[None, :]],
                       lookups)
    return jnp.broadcast_to(out, (q_pos_Q.shape[0], k_pos_K.shape[0]))


def _constants_into_tile(per_head, per_tile, residual_avals):
  """Moves residuals that depend on neither θ nor the head (e.g. `jnp.where(cond, 1.0, 0.0)`
  broadcasting its constants to the tile's shape) from `per_head` into `per_tile`, which then
  computes them itself: otherwise each would be a tile-sized kernel input, and a floating one a
  tile-sized gradient per program."""
  dependent = set(per_head.jaxpr.invars) | set(per_head.jaxpr.constvars)
  for eqn in per_head.jaxpr.eqns:
    if any(isinstance(v, jex.Var) and v in dependent for v in eqn.invars):
      dependent.update(eqn.outvars)
  constant = [not (isinstance(v, jex.Var) and v in dependent) for v in per_head.jaxpr.outvars]
  if not any(constant):
    return per_head, per_tile, residual_avals
  compute_constants, _ = pe.dce_jaxpr(per_head.jaxpr, constant, instantiate=False)
  kept, _ = pe.dce_jaxpr(per_head.jaxpr, [not c for c in constant], instantiate=True)
  kept_avals = [a for a, c in zip(residual_avals, constant) if not c]

  def tile(*args):
    kept_values, positions = iter(args[:len(kept_avals)]), args[len(kept_avals):]
    constants = iter(jax.core.eval_jaxpr(compute_constants, per_head.consts))
    residuals = [next(constants) if c else next(kept_values) for c in constant]
    return jax.core.eval_jaxpr(per_tile.jaxpr, per_tile.consts, *residuals, *positions)

  position_avals = [v.aval for v in per_tile.jaxpr.invars[len(residual_avals):]]
  new_tile = jax.make_jaxpr(tile)(*kept_avals, *position_avals)
  return jex.ClosedJaxpr(kept, per_head.consts), new_tile, kept_avals


def _is_vector_lookup(eqn) -> bool:
  """`eqn` is `table[index]`: a gather of single elements from a 1-d operand, indices promised
  in bounds (as `jnp` indexing emits; other modes define out-of-bounds values, kept as gathers)."""
  if eqn.primitive is not jax.lax.gather_p or eqn.invars[0].aval.ndim != 1:
    return False
  if eqn.params["mode"] != jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS:
    return False
  dims = eqn.params["dimension_numbers"]
  return (tuple(eqn.params["slice_sizes"]) == (1,) and tuple(dims.offset_dims) == ()
          and tuple(dims.collapsed_slice_dims) == (0,) and tuple(dims.start_index_map) == (0,))


def _select_lookup(table_N, index):
  """`table_N[index]` as Σ_e where(index == e, table_N[e], 0): elementwise ops and reductions."""
  iota_N = jnp.arange(table_N.shape[0], dtype=jnp.int32)
  out = jnp.zeros(index.shape, table_N.dtype)
  for e in range(table_N.shape[0]):
    entry = jnp.sum(jnp.where(iota_N == e, table_N, 0))  # table_N[e] without a slice
    out = out + jnp.where(index == e, entry, 0)
  return out


def _float_iota(params):
  """A floating iota (Sandwich's `arange` of frequencies) as an integer iota converted: Mosaic
  (TPU) has integer iotas only. The same values; Triton's iota is integer anyway."""
  iota = jax.lax.broadcasted_iota(jnp.int32, params["shape"], params["dimension"])
  return iota.astype(params["dtype"])


def _evaluate(jaxpr, consts, args, lookups):
  """`jax.core.eval_jaxpr`, with vector lookups rewritten (see the module docstring): from the
  ref in `lookups` when the table is one of the jaxpr's inputs given there, else as selects;
  and floating iotas as integer ones."""
  env = dict(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  read = lambda v: v.val if isinstance(v, jex.Literal) else env[v]
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    if eqn.primitive is jax.lax.iota_p and jnp.issubdtype(eqn.params["dtype"], jnp.floating):
      outvals = [_float_iota(eqn.params)]
    elif _is_vector_lookup(eqn):
      table, index = eqn.invars[0], invals[1][..., 0]
      from_ref = isinstance(table, jex.Var) and table in lookups
      outvals = [lookups[table][index] if from_ref else _select_lookup(invals[0], index)]
    elif isinstance(eqn.params.get("jaxpr"), jex.ClosedJaxpr):  # a nested jit: look inside
      inner = eqn.params["jaxpr"]
      inner_lookups = {i: lookups[o] for o, i in zip(eqn.invars, inner.jaxpr.invars)
                       if isinstance(o, jex.Var) and o in lookups}
      outvals = _evaluate(inner.jaxpr, inner.consts, invals, inner_lookups)
    else:
      outvals = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
      outvals = outvals if eqn.primitive.multiple_results else [outvals]
    env.update(zip(eqn.outvars, outvals))
  return [read(v) for v in jaxpr.outvars]


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
  per_head, per_tile, residual_avals = _constants_into_tile(per_head, per_tile, residual_avals)

  def residuals_of(head):
    return jax.core.eval_jaxpr(per_head.jaxpr, per_head.consts, *leaves, head)

  heads = jnp.arange(num_heads, dtype=jnp.int32)
  residuals = jax.vmap(residuals_of)(heads) if residual_avals else []
  shapes = tuple(a.shape for a in residual_avals)
  floating = tuple(jnp.issubdtype(a.dtype, jnp.floating) for a in residual_avals)
  residuals = [r.reshape((num_heads,) + (s or (1,))) for r, s in zip(residuals, shapes)]
  return SplitScoreMod(per_tile, shapes, floating), residuals
