"""Stopping cleanly on SIGTERM: the preemption notice of clusters and schedulers.

During training, the loop polls a flag once per step and, when it is set, saves a checkpoint and
exits with status 0 (the conventional status of a clean preemption save). Outside the loop (the
final report), `exit_on_signal` turns the signal into a `Preempted` exception that the entry
point reports and exits 0 on: the last checkpoint is already saved.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator, Optional

import jax
from absl import logging


class Preempted(Exception):
  """A stop signal arrived while no training step was running."""


@contextlib.contextmanager
def exit_on_signal(signals=(signal.SIGTERM,)) -> Iterator[None]:
  """Within the block, a signal in `signals` raises `Preempted` (in the main thread)."""
  def handler(signum, frame):
    del frame
    raise Preempted(f"received signal {signum}")
  previous = {sig: signal.signal(sig, handler) for sig in signals}
  try:
    yield
  finally:
    for sig, old in previous.items():
      signal.signal(sig, old)



def install_handler(signals=(signal.SIGTERM,)) -> Callable[..., bool]:
  """Make SIGTERM (by default) set a flag instead of killing the process; returns `is_requested`.

  The training loop polls `is_requested(step)` once per step, and when it is True saves a
  checkpoint (`force=True`), waits for it and exits cleanly. A second signal is not swallowed:
  the handler that was there before is put back after the first one, so a repeated SIGTERM still
  kills; `is_requested.uninstall()` puts it back too (call it when the loop ends). Installing
  again (a second `train()` in one process) replaces the first handler rather than stacking.

  With several processes, pass the step: the answer then comes from
  `jax.experimental.multihost_utils.reached_preemption_sync_point`, which is True on every host
  at the same step once any host was told to stop (JAX's preemption service, started by
  `jax.distributed.initialize`), so all hosts save the same step; without that service each host
  falls back to its own flag. Install it from the main thread (Python's rule for signal handlers).
  """
  requested = threading.Event()
  previous = {}

  def handler(signum, frame):
    del frame
    logging.warning("received signal %d: will checkpoint and stop at the next step", signum)
    requested.set()
    signal.signal(signum, previous[signum])

  for sig in signals:
    current = signal.getsignal(sig)
    # Not stacking on an earlier handler of ours; None (set outside Python) means the default.
    current = getattr(current, "_posjax_previous", current)
    previous[sig] = signal.SIG_DFL if current is None else current
    handler._posjax_previous = previous[sig]
    signal.signal(sig, handler)

  def is_requested(step: Optional[int] = None) -> bool:
    if step is not None and jax.process_count() > 1:
      # Hosts must agree on the step at which they all save, or the collective save hangs:
      # trust the synchronized answer, and this host's own flag only without the service.
      try:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        return bool(multihost_utils.reached_preemption_sync_point(int(step)))
      except RuntimeError:  # no preemption service (jax.distributed not initialized)
        pass
    return requested.is_set()

  def uninstall() -> None:
    for sig, old in previous.items():
      if signal.getsignal(sig) is handler:
        signal.signal(sig, old)

  is_requested.uninstall = uninstall
  return is_requested
