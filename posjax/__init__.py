"""posjax: positional encodings and length extrapolation for Transformer language models."""

__version__ = "0.1.0"

from posjax import _xla_cpu

_xla_cpu.disable_ynn_fusion()
