"""Pallas kernels: flash attention with a positional bias evaluated per tile (`fused_attention`),
on GPU (Triton) and TPU (Mosaic); `fused_by_default` says whether `auto` should pick it here."""

from posjax.kernels.fused_attention import ScoreMod, fused_attention
from posjax.kernels.layout import fused_by_default

__all__ = ["ScoreMod", "fused_attention", "fused_by_default"]
