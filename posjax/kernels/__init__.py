"""Pallas kernels: flash attention with a positional bias evaluated per tile (`fused_attention`)."""

from posjax.kernels.fused_attention import ScoreMod, fused_attention

__all__ = ["ScoreMod", "fused_attention"]
