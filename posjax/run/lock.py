"""One run at a time in a workdir: an exclusive lock held for as long as the run writes there.

The lock is `fcntl.flock` on `<workdir>/run.lock`, so the operating system releases it when the
holder exits, however it exits (a `kill -9` leaves no stale lock). The file names the holder
(host, process id, command, start time), which the refusal quotes. With several JAX processes,
only the primary one (process 0) takes the lock: the others belong to the same run. They learn
from it whether it got the lock (a broadcast from process 0, so every process of the run must
call `hold` alike), and all fail with WorkdirBusy if it did not, rather than wait for it in a
collective. Holding is reentrant within a process (`posjax.main` holds the workdir across
training and the final report, and the training loop holds it too when called from Python).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from typing import Iterator

LOCK_FILE = "run.lock"
_held: dict[str, int] = {}  # realpath of each workdir this process holds -> nesting depth


class WorkdirBusy(RuntimeError):
  """Another run holds the workdir."""


@contextlib.contextmanager
def hold(workdir: str | os.PathLike, *, primary: bool = True) -> Iterator[None]:
  """Hold `workdir`'s lock for the duration of the block; WorkdirBusy at once if it is taken."""
  key = os.path.realpath(workdir)
  if not primary:
    if not _primary_holds(True):
      raise WorkdirBusy(f"{os.path.abspath(workdir)} is in use by another run: process 0 of this "
                        "run could not take its lock (its error names the holder)")
    yield
    return
  if key in _held:
    _primary_holds(True)
    _held[key] += 1
    try:
      yield
    finally:
      _held[key] -= 1
    return
  try:
    fd = _take(workdir)
  except BaseException:
    _primary_holds(False)  # the other processes fail too, rather than wait for this one
    raise
  try:
    _primary_holds(True)
    _held[key] = 1
    try:
      yield
    finally:
      del _held[key]
  finally:
    os.close(fd)  # releases the lock


def _take(workdir: str | os.PathLike) -> int:
  """A file descriptor of the workdir's lock file, locked, the file naming this process."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    raise WorkdirBusy(f"{os.path.abspath(workdir)} is in use by another run "
                      f"({_holder(path)}): wait for it to finish, stop it, or use another "
                      "--workdir") from None
  holder = {"host": socket.gethostname(), "pid": os.getpid(), "command": sys.argv,
            "since": datetime.datetime.now().isoformat(timespec="seconds")}
  os.ftruncate(fd, 0)
  os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
  return fd


def _primary_holds(held: bool) -> bool:
  """Process 0's `held`, in every process of a run of several (JAX's broadcast); `held` alone."""
  if "jax" not in sys.modules:  # JAX never started here: one process
    return held
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return held
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(multihost_utils.broadcast_one_to_all(np.int32(held)))


def _holder(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      h = json.loads(f.read() or "{}")
  except (OSError, json.JSONDecodeError):
    return "holder unknown"
  return (f"process {h.get('pid')} on {h.get('host')} since {h.get('since')}: "
          f"{' '.join(h.get('command') or [])}")
