"""Joining a run of several JAX processes (one per host): `jax.distributed`, set up from the
environment, before JAX touches a device.

A process is one of many when the environment says so:
  - `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`,
    as `python -m posjax.launch` sets them (JAX reads only the first itself; posjax passes the
    other two);
  - a cluster that JAX detects on its own: a SLURM job step of several tasks, an Open MPI job of
    several ranks, a Cloud TPU VM (on a pod slice every worker runs the same command; on a
    single-host TPU VM, initializing makes a run of one process);
  - `POSJAX_DISTRIBUTED=on` forces `jax.distributed.initialize()` (any other cluster JAX detects)
    and `off` keeps one process whatever the environment says.

How long processes wait for one another, in seconds (environment variables, defaults in
brackets): `POSJAX_INIT_TIMEOUT` (300) for every process to join, `POSJAX_HEARTBEAT_TIMEOUT`
(60) before a silent process is declared dead, after which every other process stops with JAX's
"Terminating process because the JAX distributed service detected fatal errors" (a killed process
never leaves the others hanging), and `POSJAX_SHUTDOWN_TIMEOUT` (300) for all to finish.

On the CPU, cross-process collectives use gloo (unless `JAX_CPU_COLLECTIVES_IMPLEMENTATION` says
otherwise), so several CPU processes on one machine run the same program as a pod does.

An uncaught exception in one process of a run ends that process at once (its traceback printed),
without the orderly shutdown that would wait for the others: they may be blocked in a collective
that needs it, so they would wait until the shutdown timeout. They stop instead when its
heartbeats stop.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Mapping, Optional

COORDINATOR = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES = "JAX_NUM_PROCESSES"
PROCESS_ID = "JAX_PROCESS_ID"
SWITCH = "POSJAX_DISTRIBUTED"
TIMEOUTS = {  # environment variable -> (jax.distributed.initialize argument, default seconds)
    "POSJAX_INIT_TIMEOUT": ("initialization_timeout", 300),
    "POSJAX_HEARTBEAT_TIMEOUT": ("heartbeat_timeout_seconds", 60),
    "POSJAX_SHUTDOWN_TIMEOUT": ("shutdown_timeout_seconds", 300),
}


def cluster_found(env: Mapping[str, str] = os.environ) -> Optional[str]:
  """What in `env` makes this process one of several (a short description), or None."""
  switch = env.get(SWITCH, "auto").lower()
  if switch not in ("auto", "on", "off"):
    raise ValueError(f"{SWITCH}={env[SWITCH]!r}: use auto (the default), on or off")
  if switch == "off":
    return None
  if switch == "on":
    return f"{SWITCH}=on"
  explicit = [name for name in (COORDINATOR, NUM_PROCESSES, PROCESS_ID) if name in env]
  if explicit:
    return ", ".join(explicit)
  if _count(env, "SLURM_NTASKS") > 1 and "SLURM_JOB_ID" in env:
    return f"a SLURM job step of {env['SLURM_NTASKS']} tasks"
  if _count(env, "OMPI_COMM_WORLD_SIZE") > 1:
    return f"an Open MPI job of {env['OMPI_COMM_WORLD_SIZE']} ranks"
  workers = env.get("TPU_WORKER_HOSTNAMES", "").split(",")
  if len(workers) > 1 or "MEGASCALE_COORDINATOR_ADDRESS" in env:
    return "a TPU pod slice"
  if _tpu_chips() > 0:
    return "a Cloud TPU VM"
  return None


def _count(env: Mapping[str, str], name: str) -> int:
  try:
    return int(env.get(name, "1"))
  except ValueError:
    return 1


def _tpu_chips() -> int:
  """TPU chips attached to this machine (JAX's own check: PCI device ids, no network)."""
  try:
    from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
    return int(hardware_utils.num_available_tpu_chips_and_device_id()[0])
  except Exception:  # pylint: disable=broad-except  (a private module: absent means no TPU)
    return 0


def initialize_arguments(env: Mapping[str, str] = os.environ) -> dict:
  """The arguments for `jax.distributed.initialize` from `env` (checked: clear errors early)."""
  arguments = {}
  for name, key in ((NUM_PROCESSES, "num_processes"), (PROCESS_ID, "process_id")):
    if name in env:
      try:
        arguments[key] = int(env[name])
      except ValueError:
        raise ValueError(f"{name}={env[name]!r} is not an integer") from None
  if "num_processes" in arguments and arguments["num_processes"] < 1:
    raise ValueError(f"{NUM_PROCESSES}={arguments['num_processes']}: at least 1")
  if "process_id" in arguments and not 0 <= arguments["process_id"] < arguments.get(
      "num_processes", float("inf")):
    raise ValueError(f"{PROCESS_ID}={arguments['process_id']} is not in [0, "
                     f"{arguments.get('num_processes')}): process ids count from 0")
  if ("num_processes" in arguments or "process_id" in arguments) and COORDINATOR not in env:
    raise ValueError(f"{NUM_PROCESSES}/{PROCESS_ID} are set but {COORDINATOR} is not: set it to "
                     "host:port of process 0 (the same in every process)")
  for name, (key, default) in TIMEOUTS.items():
    try:
      arguments[key] = int(env.get(name, default))
    except ValueError:
      raise ValueError(f"{name}={env[name]!r} is not a number of seconds") from None
    if arguments[key] < 1:
      raise ValueError(f"{name}={arguments[key]}: at least 1 second")
  return arguments


def initialize_from_environment(env: Mapping[str, str] = os.environ) -> bool:
  """Join the run the environment describes (see the module docstring); True if it did.

  Call before anything touches JAX's devices; a no-op for a process on its own.
  """
  found = cluster_found(env)
  if found is None:
    return False
  arguments = initialize_arguments(env)
  import jax  # pylint: disable=g-import-not-at-top
  if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in env:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only affects the CPU
  jax.distributed.initialize(**arguments)
  _exit_at_once_on_errors()
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.info("process %d of %d (%s): %d local devices of %d", jax.process_index(),
               jax.process_count(), found, jax.local_device_count(), jax.device_count())
  return True


def _exit_at_once_on_errors() -> None:
  """An uncaught exception prints its traceback and ends this process at once (status 1)."""
  previous = sys.excepthook

  def excepthook(kind, value, tb):
    if issubclass(kind, KeyboardInterrupt):
      previous(kind, value, tb)
    else:
      traceback.print_exception(kind, value, tb)
    print("posjax: this process failed; the run's other processes stop when its heartbeats stop",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)  # pylint: disable=protected-access  (skips the shutdown barrier, see above)

  sys.excepthook = excepthook


def single_process(program: str, env: Mapping[str, str] = os.environ) -> None:
  """For the programs that run as one process only (each process would write the same files):
  join the run the environment describes, and stop with a clear message if it has several."""
  initialize_from_environment(env)
  import jax  # pylint: disable=g-import-not-at-top  (after the distributed runtime starts)
  if jax.process_count() > 1:
    raise SystemExit(f"{program} runs as one process, but this is process "
                     f"{jax.process_index()} of {jax.process_count()} ({cluster_found(env)}): run "
                     f"it without the launcher, or with {SWITCH}=off")
