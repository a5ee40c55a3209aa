"""A guard against a known XLA:CPU miscompile in the jaxlib versions posjax allows.

jaxlib 0.10.2 and 0.11 hand multiply-reduce fusions on the CPU to YNNPACK ("YNN fusion"), which
returns wrong values for some shapes (jax-ml/jax#39103; in posjax, FIRE's jitted bias was off by
as much as the bias itself with 8 heads and 128 positions) and crashes for others (jax-ml/jax
#39257, #40412). Importing posjax turns that fusion off, by adding the flag below to XLA_FLAGS,
unless XLA_FLAGS already sets it. XLA reads its flags when JAX starts its first backend, so
posjax must be imported before any JAX computation runs; if it is imported later, it warns. The
flag concerns the CPU only.
"""

from __future__ import annotations

import os
import re
import warnings

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
AFFECTED = ((0, 10, 2), (0, 12))  # jaxlib versions [from, to) with YNN fusion on by default


def _jaxlib_version() -> tuple[int, ...]:
  import jaxlib.version
  return tuple(int(part) for part in re.findall(r"\d+", jaxlib.version.__version__)[:3])


def disable_ynn_fusion() -> None:
  """Adds `FLAG=` (an empty list of fusion types) to XLA_FLAGS, once, for affected jaxlibs."""
  flags = os.environ.get("XLA_FLAGS", "")
  if FLAG in flags or not AFFECTED[0] <= _jaxlib_version() < AFFECTED[1]:
    return
  from jax._src import xla_bridge  # private: whether XLA has read its flags already
  if xla_bridge.backends_are_initialized():
    import jax
    if jax.default_backend() != "cpu":
      return
    warnings.warn(f"posjax was imported after JAX started: set XLA_FLAGS={FLAG}= before JAX "
                  f"starts, or jitted multiply-reduce code on the CPU (e.g. FIRE's bias) can be "
                  f"wrong with this jaxlib (jax-ml/jax#39103)", RuntimeWarning, stacklevel=3)
    return
  os.environ["XLA_FLAGS"] = f"{flags} {FLAG}=".strip()
