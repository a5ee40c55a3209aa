"""One run at a time in a workdir: an exclusive lock held for as long as the run writes there.

The lock is `fcntl.flock` on `<workdir>/run.lock`, so the operating system releases it when the
holder exits, however it exits (a `kill -9` leaves no stale lock). The file names the holder
(host, process id, command, start time), which the refusal quotes. With several JAX processes,
only the primary one takes the lock: the others belong to the same run. Holding is reentrant
within a process (`posjax.main` holds the workdir across training and the final report, and the
training loop holds it too when called from Python).
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
    yield
    return
  if key in _held:
    _held[key] += 1
    try:
      yield
    finally:
      _held[key] -= 1
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirBusy(f"{os.path.abspath(workdir)} is in use by another run "
                        f"({_holder(path)}): wait for it to finish, stop it, or use another "
                        "--workdir") from None
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "command": sys.argv,
              "since": datetime.datetime.now().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    _held[key] = 1
    try:
      yield
    finally:
      del _held[key]
  finally:
    os.close(fd)  # releases the lock


def _holder(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      h = json.loads(f.read() or "{}")
  except (OSError, json.JSONDecodeError):
    return "holder unknown"
  return (f"process {h.get('pid')} on {h.get('host')} since {h.get('since')}: "
          f"{' '.join(h.get('command') or [])}")
