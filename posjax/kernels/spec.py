"""`KernelSpec`: the static choices shared by the forward and backward kernels, and how to call
`pallas_call` with them on this device."""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

from jax.experimental import pallas as pl

from posjax.kernels.hoist import SplitScoreMod
from posjax.kernels.layout import BHLD, BLHD


@dataclasses.dataclass(frozen=True)
class KernelSpec:
  """Static kernel configuration (nothing here is traced).

  `split` is the score_mod split at this spec's tiles (None: no bias); its residuals arrive as
  `[H, *shape]` arrays (in `layout`'s form), one head per program. `repeats` = query heads per
  key/value head (grouped-query attention: query head h reads key/value head h // repeats).
  `layout` is the platform's block layout (`BLHD`: GPU / Triton, `BHLD`: TPU / Mosaic).
  `interpret` runs the kernels through Pallas' interpreter on CPU (for `BHLD`, the TPU
  interpreter, which simulates Mosaic's memory semantics).
  """

  split: Optional[SplitScoreMod]
  causal: bool
  scale: float
  block_q: int
  block_k: int
  repeats: int
  interpret: bool
  layout: Union[BLHD, BHLD] = BLHD()

  def call(self, kernel, *, grid, in_specs, out_specs, out_shape, head_dim: int):
    """`pl.pallas_call` through the interpreter, or compiled for the layout's platform.

    On GPU, Triton is chosen explicitly by its compiler parameters: without them, this JAX
    version lowers `pallas_call` on GPU with Mosaic GPU, which this kernel's layouts do not
    target. On TPU, every grid axis is parallel (each program writes its own blocks).
    """
    compiler_params = None if self.interpret else self.layout.compiler_params(head_dim)
    interpret = self.layout.interpret_params() if self.interpret else False
    return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                          out_shape=out_shape, compiler_params=compiler_params,
                          interpret=interpret)


def head_specs(residuals) -> list[pl.BlockSpec]:
  """BlockSpecs giving program (b, h, ·) head h's slice of each `[H, *shape]` residual."""
  def spec(x):
    zeros = (0,) * (x.ndim - 1)
    return pl.BlockSpec((None,) + x.shape[1:], lambda b, h, i: (h,) + zeros)
  return [spec(x) for x in residuals]
