"""posjax.launch: the environment of each process, the first failure's status, and a second run
refused by the workdir lock in every process."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

import multiprocess_testing as mp
from posjax import launch
from posjax.run import lock


def test_each_process_gets_its_id_the_coordinator_and_its_devices():
  base = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_cpu_foo=1", "HOME": "/h"}
  env = launch.process_environment(1, 2, 4, 1234, base)
  assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:1234"
  assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]) == ("2", "1")
  assert env["XLA_FLAGS"] == "--xla_cpu_foo=1 --xla_force_host_platform_device_count=4"
  assert env["JAX_PLATFORMS"] == "cpu" and env["HOME"] == "/h"


def test_arguments_after_the_separator_go_to_every_process():
  options = launch.parse_args(["--processes=2", "--devices_per_process=4", "--",
                               "--config=configs/lm.py:tiny", "--workdir=w"])
  assert (options.processes, options.devices_per_process) == (2, 4)
  assert options.args == ["--config=configs/lm.py:tiny", "--workdir=w"]
  with pytest.raises(SystemExit):
    launch.parse_args(["--processes=0", "--devices_per_process=4"])


def test_the_first_failure_decides_the_status_and_the_others_are_killed():
  children = [subprocess.Popen([sys.executable, "-c", code]) for code in (
      "import time; time.sleep(60)", "import sys, time; time.sleep(0.5); sys.exit(3)")]
  started = time.monotonic()
  assert launch.wait(children) == (3, 1)
  assert time.monotonic() - started < 30
  assert children[0].returncode == -9  # killed, not waited for
  assert launch.exit_status(-15) == 143


@pytest.mark.slow
def test_a_held_workdir_fails_every_process_at_once(tmp_path):
  work = tmp_path / "work"
  with lock.hold(work):  # another run (this test process) holds it
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "posjax.launch", "--processes=2", "--devices_per_process=4", "--",
         *mp.TINY, f"--workdir={work}"], cwd=mp.ROOT, env=mp.environment(),
        capture_output=True, text=True, timeout=mp.TIMEOUT)
  assert result.returncode == 1, result.stderr[-3000:]
  assert time.monotonic() - started < 120
  assert "[process 0] " in result.stderr and "[process 1] " in result.stderr
  assert "in use by another run" in result.stderr
  assert re.search(r"process \d failed with status 1; the other processes were stopped",
                   result.stderr)
  assert not (work / "checkpoints").exists()
