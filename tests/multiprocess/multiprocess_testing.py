"""Running posjax as several real JAX processes on this machine, for the tests in this folder.

`start` launches `python -m posjax.main` as N processes of one run (with `posjax.launch`: a free
port, gloo collectives, D CPU devices each), each writing its output to its own log; `single`
runs it as one process on 8 devices, the reference the tests compare with (same mesh shape, same
global batch). Each process sets its own environment (the test process's XLA_FLAGS give it 8
devices; the children get theirs from `posjax.launch.process_environment`).

`trace_writes` makes the processes record every file they open for writing (or rename into
place) under a directory, from Python (`open`, `os.open`, `os.replace`, `os.rename`): what the
check "no file is written by two processes" reads. Array data written by tensorstore (C++) is not
seen; Orbax names it per process (`ocdbt.process_<i>`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Optional, Sequence

import numpy as np

from posjax import launch

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT = 300  # seconds a run may take before the test fails (instead of hanging)
TINY = ("--config=configs/lm.py:tiny", "--config.train.log_every=1")
_DISTRIBUTED_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                          "POSJAX_DISTRIBUTED")

_SITECUSTOMIZE = '''"""Records the files this process opens for writing under POSJAX_TRACE_ROOT."""
import builtins, io, os
_log_dir = os.environ.get("POSJAX_TRACE_WRITES")
if _log_dir:
  _root = os.path.realpath(os.environ["POSJAX_TRACE_ROOT"])
  _log = os.path.join(_log_dir, os.environ.get("JAX_PROCESS_ID", "single") + f"-{os.getpid()}")
  _open, _os_open, _replace, _rename = io.open, os.open, os.replace, os.rename

  def _note(path):
    try:
      path = os.path.realpath(os.fsdecode(path))
    except TypeError:  # a file descriptor
      return
    if path.startswith(_root + os.sep):
      fd = _os_open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
      os.write(fd, (path + "\\n").encode())
      os.close(fd)

  def _traced_open(file, mode="r", *args, **kwargs):
    if not isinstance(file, int) and any(c in mode for c in "wax+"):
      _note(file)
    return _open(file, mode, *args, **kwargs)

  def _traced_os_open(path, flags, *args, **kwargs):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
      _note(path)
    return _os_open(path, flags, *args, **kwargs)

  def _traced_replace(src, dst, *args, **kwargs):
    _note(dst)
    return _replace(src, dst, *args, **kwargs)

  def _traced_rename(src, dst, *args, **kwargs):
    _note(dst)
    return _rename(src, dst, *args, **kwargs)

  builtins.open = io.open = _traced_open
  os.open, os.replace, os.rename = _traced_os_open, _traced_replace, _traced_rename
'''


def environment(**extra: str) -> dict[str, str]:
  """This environment without any multi-process settings or device count, plus `extra`."""
  env = {k: v for k, v in os.environ.items() if k not in _DISTRIBUTED_VARIABLES}
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if not f.startswith(launch.DEVICE_COUNT_FLAG))
  env["JAX_PLATFORMS"] = "cpu"
  env.update(extra)
  return env


def trace_writes(root: pathlib.Path, logs: pathlib.Path) -> dict[str, str]:
  """Environment variables that make processes record the files they write under `root`."""
  hook = logs / "hook"
  hook.mkdir(parents=True, exist_ok=True)
  (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE)
  path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
  return {"PYTHONPATH": path, "POSJAX_TRACE_WRITES": str(logs), "POSJAX_TRACE_ROOT": str(root)}


def written_files(logs: pathlib.Path) -> dict[str, set[str]]:
  """{process id ("0", "1", ... or "single"): the files it wrote}, from `trace_writes` logs."""
  found: dict[str, set[str]] = {}
  for log in logs.glob("*-*"):
    found.setdefault(log.name.split("-")[0], set()).update(log.read_text().split())
  return found


@dataclasses.dataclass
class Processes:
  """The processes of one run and their logs (stdout and stderr together)."""
  popens: list[subprocess.Popen]
  logs: list[pathlib.Path]

  def output(self, i: int = 0) -> str:
    return self.logs[i].read_text(errors="replace")

  def tails(self, chars: int = 3000) -> str:
    return "\n".join(f"--- process {i}:\n{self.output(i)[-chars:]}" for i in range(len(self.logs)))

  def wait(self, timeout: float = TIMEOUT) -> list[int]:
    """Every process's exit status; all killed and an AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    codes = []
    for p in self.popens:
      try:
        codes.append(p.wait(timeout=max(deadline - time.monotonic(), 0.1)))
      except subprocess.TimeoutExpired:
        launch.kill(self.popens)
        raise AssertionError(f"the run took over {timeout} s:\n{self.tails()}") from None
    return codes

  def check(self, timeout: float = TIMEOUT) -> "Processes":
    """Wait, and fail with the logs unless every process exited with status 0."""
    codes = self.wait(timeout)
    assert codes == [0] * len(codes), f"exit statuses {codes}:\n{self.tails()}"
    return self

  def wait_for(self, text: str, timeout: float = TIMEOUT) -> None:
    """Until every process has printed `text` (an AssertionError if one ends or time runs out)."""
    deadline = time.monotonic() + timeout
    while not all(text in self.output(i) for i in range(len(self.logs))):
      if time.monotonic() > deadline or any(p.poll() is not None for p in self.popens):
        launch.kill(self.popens)
        raise AssertionError(f"not every process printed {text!r}:\n{self.tails()}")
      time.sleep(0.05)

  def send(self, signum: int, which: Optional[Sequence[int]] = None) -> None:
    for i in range(len(self.popens)) if which is None else which:
      self.popens[i].send_signal(signum)


def start(args: Sequence[str], logs: pathlib.Path, *, processes: int = 2,
          devices_per_process: int = 4, module: str = "posjax.main", **env: str) -> Processes:
  """`python -m module *args` as `processes` processes of one run (logs under `logs`)."""
  logs.mkdir(parents=True, exist_ok=True)
  files = [open(logs / f"process_{i}.log", "wb")  # pylint: disable=consider-using-with
           for i in range(processes)]
  try:
    popens = launch.start(list(args), processes=processes,
                          devices_per_process=devices_per_process, module=module,
                          env=environment(**env),
                          cwd=str(ROOT), stdout=files, stderr=subprocess.STDOUT)
  finally:
    for f in files:
      f.close()
  return Processes(popens, [logs / f"process_{i}.log" for i in range(processes)])


def single(args: Sequence[str], logs: pathlib.Path, *, devices: int = 8,
           module: str = "posjax.main", **env: str) -> Processes:
  """`python -m module *args` as one process on `devices` CPU devices."""
  logs.mkdir(parents=True, exist_ok=True)
  env = environment(**env)
  env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} {launch.DEVICE_COUNT_FLAG}={devices}".strip()
  with open(logs / "single.log", "wb") as f:
    popen = subprocess.Popen([sys.executable, "-m", module, *args], cwd=str(ROOT),
                             env=env, stdout=f, stderr=subprocess.STDOUT)
  return Processes([popen], [logs / "single.log"])


def losses(workdir: pathlib.Path) -> dict[int, float]:
  """{step: training loss} from a run's metrics.jsonl."""
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def report_rows(workdir: pathlib.Path) -> list[list[float]]:
  """The numbers of each row of a run's eval_by_length.md."""
  lines = (workdir / "eval_by_length.md").read_text().splitlines()[2:]
  return [[float(x) for x in line.strip("|").split("|")] for line in lines]


def checkpoint(workdir: pathlib.Path, step: int) -> dict[str, np.ndarray]:
  """{path: array} of the train state saved at `step` (read here, on one device)."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  from posjax.run import checkpointing  # pylint: disable=g-import-not-at-top
  directory = epath.Path(workdir / "checkpoints" / str(step) / "state")
  tree = checkpointing.read_metadata(directory, what="train state")
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree,
                          is_leaf=lambda x: hasattr(x, "shape"))
  state = ocp.PyTreeCheckpointer().restore(
      directory, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  return {checkpointing.path_name(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def copy_run(workdir: pathlib.Path, target: pathlib.Path, *, keep_steps: Sequence[int]) -> None:
  """A copy of a run's directory with only the checkpoints of `keep_steps` (to resume from)."""
  shutil.copytree(workdir, target)
  for step_dir in (target / "checkpoints").iterdir():
    if step_dir.name.isdigit() and int(step_dir.name) not in keep_steps:
      shutil.rmtree(step_dir)


def max_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64))))
             if a[k].size else 0.0 for k in a)


def send_after(processes: Processes, text: str, signum: int,
               which: Optional[Sequence[int]] = None) -> float:
  """Send `signum` once every process printed `text`; the time it was sent (monotonic)."""
  processes.wait_for(text)
  processes.send(signum, which)
  return time.monotonic()


