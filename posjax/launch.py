"""Several JAX processes of one run on this machine: what a pod slice or a cluster does, locally.

  python -m posjax.launch --processes=2 --devices_per_process=4 -- \\
      --config=configs/lm.py:tiny --workdir=runs/tiny

starts `--processes` copies of `python -m posjax.main <flags after -->` on the CPU, each with
`--devices_per_process` simulated devices (`XLA_FLAGS=--xla_force_host_platform_device_count`),
joined by `jax.distributed` through a free port on 127.0.0.1 (`JAX_COORDINATOR_ADDRESS`,
`JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`; see `posjax.run.distributed`), with gloo collectives
between them. Their output is streamed with a `[process i]` prefix. The launcher exits with the
status of the first process that fails, killing the others at once (they would otherwise wait for
it in a collective), or 0 when every process succeeds. SIGTERM and SIGINT sent to the launcher are
passed on to every process (SIGTERM: they save one checkpoint, the same step, and exit 0).
`--module` runs another entry point the same way (e.g. `experiments.extrapolation`).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Mapping, Optional, Sequence

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_environment(index: int, processes: int, devices_per_process: int, port: int,
                        base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
  """The environment of process `index` of `processes` on the CPU (from `base`, default ours)."""
  env = dict(os.environ if base is None else base)
  flags = re.sub(rf"{DEVICE_COUNT_FLAG}=\S*", "", env.get("XLA_FLAGS", "")).split()
  env.update({
      "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
      "JAX_NUM_PROCESSES": str(processes),
      "JAX_PROCESS_ID": str(index),
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": " ".join(flags + [f"{DEVICE_COUNT_FLAG}={devices_per_process}"]),
      "PYTHONUNBUFFERED": "1",  # lines appear as they are printed, in order across processes
  })
  return env


def _parent_death_signal():
  """A function for `Popen(preexec_fn=...)` that has the child killed if the launcher dies
  (Linux's PR_SET_PDEATHSIG; resolved here, so the child runs no Python but the call), or None."""
  try:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
  except (OSError, AttributeError):
    return None
  return lambda: prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def start(args: Sequence[str], *, processes: int, devices_per_process: int,
          module: str = "posjax.main", port: Optional[int] = None,
          env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
          stdout=subprocess.PIPE, stderr=subprocess.PIPE) -> list[subprocess.Popen]:
  """Start `python -m module *args` as `processes` processes of one run; their `Popen`s.

  `stdout`/`stderr` are passed to `Popen` (a list gives one per process). Each process leads its
  own process group (killing the group ends its data workers too) and is killed if the launcher
  dies.
  """
  if processes < 1 or devices_per_process < 1:
    raise ValueError(f"processes={processes}, devices_per_process={devices_per_process}: both "
                     "must be at least 1")
  port = free_port() if port is None else port
  started = []
  try:
    for i in range(processes):
      started.append(subprocess.Popen(
          [sys.executable, "-m", module, *args], cwd=cwd,
          env=process_environment(i, processes, devices_per_process, port, env),
          stdout=stdout[i] if isinstance(stdout, (list, tuple)) else stdout,
          stderr=stderr[i] if isinstance(stderr, (list, tuple)) else stderr,
          start_new_session=True, preexec_fn=_parent_death_signal()))
  except BaseException:
    kill(started)
    raise
  return started


def kill(processes: Sequence[subprocess.Popen]) -> None:
  """SIGKILL each process still running, with its process group."""
  for p in processes:
    if p.poll() is None:
      try:
        if os.getpgid(p.pid) == p.pid:  # started here: it leads its group
          os.killpg(p.pid, signal.SIGKILL)
        else:
          p.kill()
      except ProcessLookupError:  # it has just ended
        pass
  for p in processes:
    p.wait()


def exit_status(returncode: int) -> int:
  """A child's status as a shell reports it: 128 + N for one killed by signal N."""
  return 128 - returncode if returncode < 0 else returncode


def wait(processes: Sequence[subprocess.Popen], *,
         poll_seconds: float = 0.05) -> tuple[int, Optional[int]]:
  """Wait for every process; at the first failure kill the rest. Returns `(status, index)`: the
  first failure's status (as `exit_status`) and its process index, or `(0, None)`."""
  while True:
    codes = [p.poll() for p in processes]
    failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
    if failed:
      kill(processes)
      return exit_status(codes[failed[0]]), failed[0]
    if all(c == 0 for c in codes):
      return 0, None
    time.sleep(poll_seconds)


def stream(source: IO[bytes], target: IO[str], prefix: str,
           lock: threading.Lock) -> threading.Thread:
  """A thread that copies `source` line by line to `target`, each line after `prefix`."""
  def copy():
    for raw in iter(source.readline, b""):
      line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
      with lock:
        target.write(f"{prefix}{line}\n")
        target.flush()
    source.close()
  thread = threading.Thread(target=copy, daemon=True)
  thread.start()
  return thread


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m posjax.launch", description=__doc__.split("\n\n")[0],
      usage="python -m posjax.launch --processes=N --devices_per_process=D -- <posjax.main flags>")
  parser.add_argument("--processes", type=int, required=True, help="JAX processes to start")
  parser.add_argument("--devices_per_process", type=int, required=True,
                      help="simulated CPU devices of each process")
  parser.add_argument("--port", type=int, default=0,
                      help="the coordinator's port on 127.0.0.1 (0: a free one)")
  parser.add_argument("--module", default="posjax.main", help="the entry point each runs")
  parser.add_argument("args", nargs=argparse.REMAINDER,
                      help="after --: the flags every process gets")
  parsed = parser.parse_args(argv)
  if parsed.args[:1] == ["--"]:
    parsed.args = parsed.args[1:]
  for name in ("processes", "devices_per_process"):
    if getattr(parsed, name) < 1:
      parser.error(f"--{name}={getattr(parsed, name)}: at least 1")
  return parsed


def main(argv: Optional[Sequence[str]] = None) -> int:
  options = parse_args(sys.argv[1:] if argv is None else argv)
  children = start(options.args, processes=options.processes,
                   devices_per_process=options.devices_per_process, module=options.module,
                   port=options.port or None)
  lock = threading.Lock()
  threads = []
  for i, child in enumerate(children):
    threads.append(stream(child.stdout, sys.stdout, f"[process {i}] ", lock))
    threads.append(stream(child.stderr, sys.stderr, f"[process {i}] ", lock))

  def forward(signum, frame):
    del frame
    for child in children:
      if child.poll() is None:
        child.send_signal(signum)

  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, forward)
  status, failed = wait(children)
  for thread in threads:
    thread.join(timeout=5)
  if failed is not None:
    print(f"posjax.launch: process {failed} failed with status {status}; the other processes "
          "were stopped", file=sys.stderr, flush=True)
  return status


if __name__ == "__main__":
  sys.exit(main())
