"""posjax.run.distributed: when a process joins a run of several, and with what arguments (the
environment only; the runs themselves are in the other tests of this folder)."""

from __future__ import annotations

import pytest

from posjax.run import distributed

LOCAL = {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
         "JAX_PROCESS_ID": "1"}


@pytest.mark.parametrize("env, found", [
    ({}, None),
    (LOCAL, "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID"),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, "a SLURM job step of 4 tasks"),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "an Open MPI job of 2 ranks"),
    ({"TPU_WORKER_HOSTNAMES": "t-0,t-1"}, "a TPU pod slice"),
    ({"POSJAX_DISTRIBUTED": "on"}, "POSJAX_DISTRIBUTED=on"),
    (dict(LOCAL, POSJAX_DISTRIBUTED="off"), None),
])
def test_the_environment_says_whether_a_process_is_one_of_several(env, found, monkeypatch):
  monkeypatch.setattr(distributed, "_tpu_chips", lambda: 0)  # as on this CPU machine
  assert distributed.cluster_found(env) == found


def test_a_cloud_tpu_vm_joins_what_jax_detects(monkeypatch):
  monkeypatch.setattr(distributed, "_tpu_chips", lambda: 4)
  assert distributed.cluster_found({}) == "a Cloud TPU VM"


def test_the_launchers_variables_become_initialize_arguments():
  arguments = distributed.initialize_arguments(dict(LOCAL, POSJAX_HEARTBEAT_TIMEOUT="10"))
  assert arguments == {"num_processes": 2, "process_id": 1, "initialization_timeout": 300,
                       "heartbeat_timeout_seconds": 10, "shutdown_timeout_seconds": 300}


@pytest.mark.parametrize("env, message", [
    (dict(LOCAL, JAX_PROCESS_ID="2"), r"JAX_PROCESS_ID=2 is not in \[0, 2\)"),
    (dict(LOCAL, JAX_NUM_PROCESSES="two"), r"JAX_NUM_PROCESSES='two' is not an integer"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, r"JAX_COORDINATOR_ADDRESS is not"),
    (dict(LOCAL, POSJAX_HEARTBEAT_TIMEOUT="0"), r"POSJAX_HEARTBEAT_TIMEOUT=0: at least 1"),
])
def test_bad_settings_are_clear_errors(env, message):
  with pytest.raises(ValueError, match=message):
    distributed.initialize_arguments(env)


def test_an_unknown_switch_is_a_clear_error():
  with pytest.raises(ValueError, match=r"POSJAX_DISTRIBUTED='maybe': use auto \(the default\)"):
    distributed.cluster_found({"POSJAX_DISTRIBUTED": "maybe"})
