"""Timing and memory of jitted functions, the same way for every backend."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import jax


def median_seconds(fn: Callable, *args, warmup: int = 2, iters: int = 10) -> float:
  """Median wall time of `fn(*args)` (already compiled by the warm-up calls), to the last result
  being ready on the device."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def median_step_seconds(step: Callable, state, *args, warmup: int = 2, iters: int = 10) -> float:
  """Median wall time of `state = step(state, *args)`, the state threaded through (and donated,
  if `step` donates it), as in a training loop."""
  for _ in range(warmup):
    state = step(state, *args)
  jax.block_until_ready(state)
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    state = jax.block_until_ready(step(state, *args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def compiled_bytes(jitted, *args) -> Optional[int]:
  """Temporaries plus outputs of the compiled program (what it allocates beyond its inputs), as
  XLA's memory analysis reports it; None where the backend gives no analysis."""
  analysis = jitted.lower(*args).compile().memory_analysis()
  if analysis is None:
    return None
  return int(analysis.temp_size_in_bytes + analysis.output_size_in_bytes)


def device_name() -> str:
  device = jax.devices()[0]
  return f"{device.platform}: {device.device_kind} (jax {jax.__version__})"
