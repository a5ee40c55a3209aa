"""`fused_attention`: flash attention with a positional `score_mod` evaluated per tile.

Computes exactly what `posjax.nn.attention_core.xla_attention` computes with
`extra = materialize_bias(score_mod, params, H, q_pos, k_pos)`,

  logits[b, h, i, j] = scale · q[b, i, h] · k[b, j, h // R] + score_mod(θ, h, q_pos_i, k_pos_j)
  out[b, i, h] = Σ_j softmax_j(logits[b, h, i, :] | visible) · v[b, j, h // R]

but never holds a `[H, Q, K]` array: the forward pass keeps one `[bq, bk]` tile of logits per
program and saves only the float32 logsumexp `[B, H, Q]`; the backward pass recomputes tiles and
returns gradients for q, k, v and every floating leaf of θ (see `backward`). The score_mod is
split first (`hoist`): what depends only on θ and the head is computed per head outside the
kernel, the rest per tile inside. Memory beyond the inputs: O(B·H·Q) for lse/delta plus
O(B·H·Q / bq · |r_h|) for the per-program partial gradients of the per-head residuals r_h.

Q and K are padded up to the tile sizes with segment id 0, which no query can see; padded query
rows come out as zeros and are sliced off.

One set of kernels serves GPU and TPU: `layout` says how their blocks cut the arrays (Triton on
GPU: `[B, L, H, D]` with the head squeezed; Mosaic on TPU: `[B, H, L, D]`, transposed here).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from posjax.kernels import backward
from posjax.kernels import forward
from posjax.kernels import hoist
from posjax.kernels import layout as layouts
from posjax.kernels.spec import KernelSpec

DEFAULT_BLOCK = 64
MIN_BLOCK = 16  # the smallest tile a GPU dot accepts


class ScoreMod(NamedTuple):
  """A bias hook ready for the kernel: `fn(params, head, q_pos, k_pos) -> bias`, options bound."""

  fn: Callable[..., jax.Array]
  params: Any


def _block(requested: Optional[int], length: int, default: int = DEFAULT_BLOCK) -> int:
  """A power of two ≥ 16: `requested`, or `default` (64 on GPU, 128 on TPU) shrunk to the
  smallest that covers `length`."""
  block = requested or min(default, max(MIN_BLOCK, 1 << max(length - 1, 0).bit_length()))
  if block < MIN_BLOCK or block & (block - 1):
    raise ValueError(f"tile sizes must be powers of two >= {MIN_BLOCK}; got {block}")
  return block


def _pad_to(x, multiple: int):
  """Zeros appended along axis 1 up to a multiple (segment id 0 marks them as padding)."""
  pad = -x.shape[1] % multiple
  if not pad:
    return x
  return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))


def _attend(spec: KernelSpec):
  """The custom-VJP attention for one static `spec`, on tile-aligned inputs.

  The score_mod's residuals come in two lists, floating (differentiated) and integer (not), and
  go to the kernels in their original order.
  """
  floating = () if spec.split is None else spec.split.floating

  def merge(float_res, int_res):
    floats, ints = iter(float_res), iter(int_res)
    return [next(floats) if f else next(ints) for f in floating]

  def run_forward(q, k, v, q_pos, k_pos, q_seg, k_seg, float_res, int_res):
    return forward.forward(spec, q, k, v, q_pos, k_pos, q_seg, k_seg, merge(float_res, int_res))

  @jax.custom_vjp
  def attend(*args):
    return run_forward(*args)[0]

  def attend_fwd(*args):
    out, lse = run_forward(*args)
    return out, (args, out, lse)

  def attend_bwd(saved, do):
    (q, k, v, q_pos, k_pos, q_seg, k_seg, float_res, int_res), out, lse = saved
    layout = spec.layout
    delta = layout.head_rows(layout.delta(out, do), spec.block_q)
    args = (spec, q, k, v, do.astype(q.dtype), lse, delta, q_pos, k_pos, q_seg, k_seg,
            merge(float_res, int_res))
    dq, partials = backward.dq_and_bias(*args)
    dk, dv = backward.dk_dv(*args)
    group = lambda x: layout.group(x, spec.repeats)
    # Per-program partials [B, H, Q / bq, ...] -> per-head gradients [H, ...].
    dfloat = [g.sum((0, 2)).astype(x.dtype) for g, x in zip(partials, float_res)]
    return (dq.astype(q.dtype), group(dk).astype(k.dtype), group(dv).astype(v.dtype),
            None, None, None, None, dfloat, None)

  attend.defvjp(attend_fwd, attend_bwd)
  return attend


def fused_attention(q_BQHD, k_BKGD, v_BKGD, *, q_pos_BQ, k_pos_BK, q_seg_BQ=None, k_seg_BK=None,
                    causal: bool, scale: Optional[float] = None,
                    score_mod: Optional[ScoreMod] = None, block_q: Optional[int] = None,
                    block_k: Optional[int] = None, interpret: Optional[bool] = None,
                    platform: Optional[str] = None) -> jax.Array:
  """Attention `[B, Q, H, D]` with the bias `score_mod` fused into the kernel.

  Shapes and masking follow `attention_core.dot_product_attention` (q `[B, Q, H, D]`, k/v
  `[B, K, G, D]` with G dividing H; segment 0 is padding; a query that sees no key gives zeros).
  `platform` picks the kernels' block layout: "gpu" (Pallas Triton, blocks of `[B, L, H, D]`)
  or "tpu" (Pallas Mosaic, blocks of `[B, H, L, D]`, transposed at the boundary); None: "tpu"
  on a TPU, else "gpu". `interpret` defaults to True unless running on that platform, so the
  kernels run (slowly) on CPU: through Pallas' TPU interpreter for "tpu".
  """
  batch, q_len, heads, dim = q_BQHD.shape
  k_len, groups = k_BKGD.shape[1], k_BKGD.shape[2]
  if heads % groups:
    raise ValueError(f"{heads} query heads cannot share {groups} key/value heads evenly")
  layout = layouts.for_platform(platform)
  if interpret is None:
    interpret = jax.default_backend() != layout.platform
  if q_seg_BQ is None:
    q_seg_BQ = jnp.ones((batch, q_len), jnp.int32)
  if k_seg_BK is None:
    k_seg_BK = jnp.ones((batch, k_len), jnp.int32)
  bq = _block(block_q, q_len, layout.default_block)
  bk = _block(block_k, k_len, layout.default_block)
  split, residuals = None, []
  if score_mod is not None:
    split, residuals = hoist.split(score_mod.fn, score_mod.params, num_heads=heads, block_q=bq,
                                   block_k=bk)
  spec = KernelSpec(split=split, causal=causal,
                    scale=1.0 / math.sqrt(dim) if scale is None else float(scale),
                    block_q=bq, block_k=bk, repeats=heads // groups, interpret=interpret,
                    layout=layout)
  floating = () if split is None else split.floating
  residuals = [layout.residual(r) for r in residuals]
  float_res = [r for r, f in zip(residuals, floating) if f]
  int_res = [r for r, f in zip(residuals, floating) if not f]
  rows = lambda x, tile: layout.rows(_pad_to(jnp.asarray(x, jnp.int32), tile), tile)
  heads_of = lambda x, tile: layout.heads(_pad_to(x, tile))
  out = _attend(spec)(
      heads_of(q_BQHD, bq), heads_of(k_BKGD, bk), heads_of(v_BKGD, bk),
      rows(q_pos_BQ, bq), rows(k_pos_BK, bk), rows(q_seg_BQ, bq), rows(k_seg_BK, bk),
      float_res, int_res)
  return layout.unheads(out)[:, :q_len]
