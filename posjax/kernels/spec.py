"""`KernelSpec`: the static choices shared by the forward and backward kernels, and how to call
`pallas_call` with them on this device."""

from __future__ import annotations

import dataclasses
from typing import Optional

from jax.experimental import pallas as pl

from posjax.kernels.hoist import SplitScoreMod


@dataclasses.dataclass(frozen=True)
class KernelSpec:
  """Static kernel configuration (nothing here is traced).

  `split` is the score_mod split at this spec's tiles (None: no bias); its residuals arrive as
  `[H, *shape]` arrays, one head per program. `repeats` = query heads per key/value head
  (grouped-query attention: query head h reads key/value head h // repeats). `interpret` runs
  the kernels through Pallas' interpreter (CPU).
  """

  split: Optional[SplitScoreMod]
  causal: bool
  scale: float
  block_q: int
  block_k: int
  repeats: int
  interpret: bool

  def call(self, kernel, *, grid, in_specs, out_specs, out_shape, head_dim: int):
    """`pl.pallas_call` through the interpreter, or compiled with the Triton lowering.

    Triton is chosen explicitly by its compiler parameters: without them, this JAX version
    lowers `pallas_call` on GPU with Mosaic GPU, which this kernel's layouts do not target.
    """
    compiler_params = None
    if not self.interpret:
      from jax.experimental.pallas import triton as plgpu  # imported only when compiling
      compiler_params = plgpu.CompilerParams(**triton_options(head_dim))
    return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                          out_shape=out_shape, compiler_params=compiler_params,
                          interpret=self.interpret)


def triton_options(head_dim: int) -> dict[str, int]:
  """Triton's launch options for a head dimension: 4 warps (128 threads) per program for D <= 64,
  8 above; two pipeline stages."""
  return {"num_warps": 4 if head_dim <= 64 else 8, "num_stages": 2}


def head_specs(residuals) -> list[pl.BlockSpec]:
  """BlockSpecs giving program (b, h, ·) head h's slice of each `[H, *shape]` residual."""
  def spec(x):
    zeros = (0,) * (x.ndim - 1)
    return pl.BlockSpec((None,) + x.shape[1:], lambda b, h, i: (h,) + zeros)
  return [spec(x) for x in residuals]
