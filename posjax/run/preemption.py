"""Stopping cleanly on SIGTERM: the preemption notice of clusters and schedulers.

During training, the loop polls a flag once per step and, when it is set, saves a checkpoint and
exits with status 0 (the conventional status of a clean preemption save). Outside the loop (the
final report), `exit_on_signal` turns the signal into a `Preempted` exception that the entry
point reports and exits 0 on: the last checkpoint is already saved.

With several processes (`jax.distributed`), JAX's preemption service owns SIGTERM: it notices
the signal in any process, and `reached_preemption_sync_point(step)` then turns True in every
process at the same step, so all save that step (a collective save) and exit 0. posjax installs
no Python handler then (Python's would replace the service's), and `exit_on_signal` does nothing:
processes that left the final report at different points would wait for each other in its
collectives, so the report runs to its end (the checkpoint is saved already).
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


def synchronized() -> bool:
  """Whether JAX's preemption service decides when to stop (several processes, initialized)."""
  if jax.process_count() == 1:
    return False
  from jax._src import distributed  # pylint: disable=g-import-not-at-top  (no public query)
  return getattr(distributed.global_state, "preemption_sync_manager", None) is not None


@contextlib.contextmanager
def exit_on_signal(signals=(signal.SIGTERM,)) -> Iterator[None]:
  """Within the block, a signal in `signals` raises `Preempted` (in the main thread); nothing
  with several processes (see the module docstring)."""
  if synchronized():
    yield
    return

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
  `jax.distributed.initialize`), so all hosts save the same step; no signal handler is installed
  then (the service has its own). Without that service each host has its own flag. Install it
  from the main thread (Python's rule for signal handlers).
  """
  if synchronized():
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    def is_synchronized_stop(step: Optional[int] = None) -> bool:
      if step is None:
        raise ValueError("with several processes, is_requested needs the step (every process "
                         "must ask at every step for them to agree on one)")
      return bool(multihost_utils.reached_preemption_sync_point(int(step)))

    is_synchronized_stop.uninstall = lambda: None
    return is_synchronized_stop

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
    del step  # one process: its own flag decides
    return requested.is_set()

  def uninstall() -> None:
    for sig, old in previous.items():
      if signal.getsignal(sig) is handler:
        signal.signal(sig, old)

  is_requested.uninstall = uninstall
  return is_requested
