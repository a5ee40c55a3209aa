"""The runs that several multi-process tests read, each made once per test session (also under
pytest-xdist, where the first worker to need one makes it and the others wait for it)."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
from typing import Callable

import pytest

import multiprocess_testing as mp


def _shared(tmp_path_factory, name: str, make: Callable[[pathlib.Path], None]) -> pathlib.Path:
  """`make(directory)` once per session (across xdist workers); the directory."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the session's directory, shared by the workers
  directory = root / "multiprocess-runs" / name
  directory.parent.mkdir(parents=True, exist_ok=True)
  with open(directory.parent / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (directory / "made").exists():
      directory.mkdir(exist_ok=True)
      make(directory)
      (directory / "made").write_text("")
  return directory


@pytest.fixture(scope="session")
def one_process(tmp_path_factory) -> pathlib.Path:
  """`configs/lm.py:tiny` (6 steps, checkpoints at 3 and 6, the report) as 1 process × 8 devices:
  the reference. Its workdir is `<dir>/work`."""
  def make(directory):
    mp.single([*mp.TINY, f"--workdir={directory / 'work'}"], directory).check()
  return _shared(tmp_path_factory, "one_process", make)


@pytest.fixture(scope="session")
def two_processes(tmp_path_factory) -> pathlib.Path:
  """The same run as 2 processes × 4 devices, with the files each process writes traced
  (`<dir>/writes`) and their process ids in `<dir>/pids.json`. Its workdir is `<dir>/work`."""
  def make(directory):
    work = directory / "work"
    run = mp.start([*mp.TINY, f"--workdir={work}"], directory,
                   **mp.trace_writes(work, directory / "writes"))
    (directory / "pids.json").write_text(json.dumps([p.pid for p in run.popens]))
    run.check()
  return _shared(tmp_path_factory, "two_processes", make)
