"""Block layouts: how the kernels' arrays are shaped in memory and cut into per-program blocks.

The forward and backward kernels compute on the same per-program views whatever the platform:
`[rows, D]` blocks of q, k, v (one head), 1-d position / segment / logsumexp vectors, and each
head's score_mod residuals. A layout (`BLHD` or `BHLD`) says how the arrays are laid out around the kernels and
how a kernel reads and writes those views:

- `BLHD` (GPU, Pallas Triton): q, k, v stay `[B, L, H, D]` and the blocks squeeze the head axis;
  row vectors are `[B, L]` (`[B, H, L]` per head), residuals `[H, *shape]`.
- `BHLD` (TPU, Pallas Mosaic): Mosaic needs the last two dimensions of every block to be
  multiples of (8, 128) or whole, so the head axis cannot sit between L and D. q, k, v are
  transposed to `[B, H, L, D]` at the boundary; row vectors are cut into tiles, `[B, L / t, 1,
  t]` (`[B, H, L / t, 1, t]` per head), so that a block is one whole `[1, t]` tile (any t) and
  the kernels reach tile j by a leading index, never a dynamic offset along the lanes;
  residuals are flattened to `[H, 1, n]`. Table lookups (T5) are selects, not loads from a
  ref: Mosaic has no vector gather from memory.

Everything here is static; the kernels never see which layout they run on beyond these methods.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

Index = Callable[..., tuple]


@dataclasses.dataclass(frozen=True)
class BLHD:
  """GPU layout: the head axis of `[B, L, H, D]` squeezed out of each block (Triton)."""

  platform = "gpu"
  default_block = 64
  length_axis, head_axis = 1, 2  # of q, k, v and their gradients

  # Outside the kernels (plain XLA, differentiated by JAX).
  def heads(self, x_BLHD):
    return x_BLHD

  def unheads(self, x):
    return x

  def group(self, x, repeats: int):
    """Per-query-head `[B, K, H, D]` summed over each group of `repeats` heads (GQA)."""
    batch, length, heads, dim = x.shape
    return x.reshape(batch, length, heads // repeats, repeats, dim).sum(3)

  def delta(self, out, do):
    """`[B, H, L]` float32 Σ_d out · do, from layout-shaped out and do."""
    return jnp.einsum("bqhd,bqhd->bhq", out.astype(jnp.float32), do.astype(jnp.float32))

  def rows(self, x_BL, tile: int):
    del tile
    return x_BL

  def head_rows(self, x_BHL, tile: int):
    del tile
    return x_BHL

  def head_rows_shape(self, batch: int, heads: int, length: int, tile: int):
    del tile
    return (batch, heads, length)

  def residual(self, x_H):
    return x_H

  # BlockSpecs. Index maps take the program id (b, h, i); `lead` is the number of leading axes of
  # a row array: 1 for `[B, L]`, 2 for `[B, H, L]`.
  def heads_block(self, rows: int, dim: int, index: Index) -> pl.BlockSpec:
    """`rows` × D of one head; `index(b, h, i) -> (batch, row block, head)`."""
    def at(b, h, i):
      batch, block, head = index(b, h, i)
      return batch, block, head, 0
    return pl.BlockSpec((None, rows, None, dim), at)

  def row_tile(self, tile: int, lead: int, index: Index) -> pl.BlockSpec:
    """One tile of a row array; `index -> (*leading indices, tile index)`."""
    return pl.BlockSpec((None,) * lead + (tile,), index)

  def row_all(self, length: int, tile: int, lead: int, index: Index) -> pl.BlockSpec:
    """A whole row (every tile); `index -> leading indices`."""
    del tile
    return pl.BlockSpec((None,) * lead + (length,), lambda *ids: (*index(*ids), 0))

  # Inside the kernels.
  def read(self, ref):
    """A per-program row block as a 1-d vector."""
    return ref[...]

  def read_tile(self, ref, j, tile: int):
    """Tile j (traced) of a whole-row block, 1-d."""
    return ref[pl.ds(j * tile, tile)]

  def write(self, ref, x):
    ref[...] = x

  def slice(self, j, tile: int):
    """Rows of tile j (traced) of a q, k or v block."""
    return pl.ds(j * tile, tile)

  def lookup_refs(self, refs):
    """Residual refs for table lookups as loads (`hoist`): Triton loads `table + index`."""
    return refs

  def compiler_params(self, head_dim: int):
    from jax.experimental.pallas import triton as plgpu  # imported only when compiling
    return plgpu.CompilerParams(**triton_options(head_dim))

  def interpret_params(self):
    return True


@dataclasses.dataclass(frozen=True)
class BHLD(BLHD):
  """TPU layout: `[B, H, L, D]` blocks and tiled row vectors (Mosaic)."""

  platform = "tpu"
  default_block = 128
  length_axis, head_axis = 2, 1

  def heads(self, x_BLHD):
    return jnp.swapaxes(x_BLHD, 1, 2)

  def unheads(self, x_BHLD):
    return jnp.swapaxes(x_BHLD, 1, 2)

  def group(self, x, repeats: int):
    batch, heads, length, dim = x.shape
    return x.reshape(batch, heads // repeats, repeats, length, dim).sum(2)

  def delta(self, out, do):
    return jnp.einsum("bhqd,bhqd->bhq", out.astype(jnp.float32), do.astype(jnp.float32))

  def rows(self, x_BL, tile: int):
    batch, length = x_BL.shape
    return x_BL.reshape(batch, length // tile, 1, tile)

  def head_rows(self, x_BHL, tile: int):
    batch, heads, length = x_BHL.shape
    return x_BHL.reshape(batch, heads, length // tile, 1, tile)

  def head_rows_shape(self, batch: int, heads: int, length: int, tile: int):
    return (batch, heads, length // tile, 1, tile)

  def residual(self, x_H):
    return x_H.reshape(x_H.shape[0], 1, math.prod(x_H.shape[1:]))

  def heads_block(self, rows: int, dim: int, index: Index) -> pl.BlockSpec:
    def at(b, h, i):
      batch, block, head = index(b, h, i)
      return batch, head, block, 0
    return pl.BlockSpec((None, None, rows, dim), at)

  def row_tile(self, tile: int, lead: int, index: Index) -> pl.BlockSpec:
    return pl.BlockSpec((None,) * (lead + 1) + (1, tile), lambda *ids: (*index(*ids), 0, 0))

  def row_all(self, length: int, tile: int, lead: int, index: Index) -> pl.BlockSpec:
    return pl.BlockSpec((None,) * lead + (length // tile, 1, tile),
                        lambda *ids: (*index(*ids), 0, 0, 0))

  def read(self, ref):
    return ref[0, :]

  def read_tile(self, ref, j, tile: int):
    del tile
    return ref[j, 0, :]

  def write(self, ref, x):
    ref[0, :] = x

  def slice(self, j, tile: int):
    return pl.ds(pl.multiple_of(j * tile, tile), tile)

  def lookup_refs(self, refs):
    """None: Mosaic has no vector gather from a ref, so table lookups become selects."""
    del refs
    return None

  def compiler_params(self, head_dim: int):
    del head_dim
    from jax.experimental.pallas import tpu as pltpu  # imported only when compiling
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel"))

  def interpret_params(self):
    """Pallas' TPU interpret mode: simulates Mosaic's memory semantics on CPU."""
    from jax.experimental.pallas import tpu as pltpu
    return pltpu.InterpretParams()


LAYOUTS = {"gpu": BLHD(), "tpu": BHLD()}


def for_platform(platform: Optional[str]):
  """The layout of `platform` ("gpu" or "tpu"); None: TPU on a TPU, else GPU."""
  if platform is None:
    platform = "tpu" if jax.default_backend() == "tpu" else "gpu"
  if platform not in LAYOUTS:
    raise ValueError(f"fused attention targets 'gpu' (Triton) or 'tpu' (Mosaic); got {platform!r}")
  return LAYOUTS[platform]


def fused_by_default() -> bool:
  """Whether `attention_backend="auto"` should take the fused kernel on this device: on a TPU,
  whose kernels are the Mosaic (`BHLD`) variant and where no cuDNN exists, so the alternative
  materializes the `[H, L, L]` bias in XLA. Not on GPU until the bench has timed it there."""
  return jax.default_backend() == "tpu"


def triton_options(head_dim: int) -> dict[str, int]:
  """Triton's launch options for a head dimension: 4 warps (128 threads) per program for D <= 64,
  8 above; two pipeline stages."""
  return {"num_warps": 4 if head_dim <= 64 else 8, "num_stages": 2}
