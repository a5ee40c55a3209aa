"""Checkpoints and stops across processes: a run saved by 2 processes resumes on 2 exactly as if
it had never stopped, and on 1 process of 8 devices; a 1-process checkpoint resumes on 2, with
FSDP across them (the in-memory pipelines' data state carries over; tests/run/
test_checkpointing.py has the refusal for one that does not); SIGTERM to every process saves one
step; a killed process stops the others."""

from __future__ import annotations

import re
import signal
import time

import numpy as np
import pytest

import multiprocess_testing as mp

pytestmark = pytest.mark.slow


def _params(state: dict) -> dict:
  return {k: v for k, v in state.items() if k.startswith("params/")}


def test_sigterm_saves_one_step_and_the_resumed_run_is_bit_identical(two_processes, tmp_path):
  work = tmp_path / "work"
  args = [*mp.TINY, f"--workdir={work}", "--config.mode=train"]
  first = mp.start(args, tmp_path / "first")
  mp.send_after(first, "from step 0", signal.SIGTERM)  # to every process, during compilation
  assert first.wait() == [0, 0], first.tails()
  stops = [re.search(r"stopped on SIGTERM at step (\d+)", first.output(i)) for i in range(2)]
  assert all(stops), first.tails()
  step = int(stops[0][1])
  assert int(stops[1][1]) == step < 6  # one step, the same in both, saved before the end
  saved = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
  assert saved[-1] == step

  mp.start(args, tmp_path / "second").check()
  uninterrupted = mp.checkpoint(two_processes / "work", 6)
  resumed = mp.checkpoint(work, 6)
  assert uninterrupted.keys() == resumed.keys()
  for name in uninterrupted:  # parameters, optimizer state, step, RNG: bit for bit
    np.testing.assert_array_equal(resumed[name], uninterrupted[name], err_msg=name)
  assert mp.losses(work) == mp.losses(two_processes / "work")


def test_a_two_process_checkpoint_resumes_on_one_process(one_process, two_processes, tmp_path):
  work = tmp_path / "work"
  mp.copy_run(two_processes / "work", work, keep_steps=[3])
  run = mp.single([*mp.TINY, f"--workdir={work}", "--config.mode=train"], tmp_path).check()
  assert "data state of 2 process(es) resumed by 1: global batch 3" in run.output()
  one = mp.losses(one_process / "work")
  resumed = mp.losses(work)
  for step in (4, 5, 6):  # the same rows per step, so the same losses
    assert resumed[step] == pytest.approx(one[step], rel=1e-5), step
  assert mp.max_difference(_params(mp.checkpoint(one_process / "work", 6)),
                           _params(mp.checkpoint(work, 6))) <= 1e-5


def test_a_one_process_checkpoint_resumes_on_two_processes_with_fsdp_across_them(one_process,
                                                                               tmp_path):
  # Onto another mesh too: the width of every parameter split over the 8 devices of both
  # processes (FSDP), the batch over the fsdp axis.
  work = tmp_path / "work"
  mp.copy_run(one_process / "work", work, keep_steps=[3])
  run = mp.start([*mp.TINY, f"--workdir={work}", "--config.mode=train", "--config.mesh.data=1",
                  "--config.mesh.fsdp=8"], tmp_path).check()
  assert "'fsdp': 8" in run.output(0)
  assert "data state of 1 process(es) resumed by 2: global batch 3" in run.output(1)
  one = mp.losses(one_process / "work")
  resumed = mp.losses(work)
  for step in (4, 5, 6):
    assert resumed[step] == pytest.approx(one[step], rel=1e-5), step
  assert mp.max_difference(_params(mp.checkpoint(one_process / "work", 6)),
                           _params(mp.checkpoint(work, 6))) <= 1e-5


def test_a_killed_process_stops_the_others_within_the_heartbeat_timeout(tmp_path):
  heartbeat = 10
  run = mp.start([*mp.TINY, f"--workdir={tmp_path / 'work'}", "--config.train.steps=100000",
                  "--config.mode=train"], tmp_path, POSJAX_HEARTBEAT_TIMEOUT=str(heartbeat))
  killed = mp.send_after(run, "from step 0", signal.SIGKILL, which=[1])
  codes = run.wait(timeout=120)
  waited = time.monotonic() - killed
  assert codes[1] == -signal.SIGKILL and codes[0] != 0, run.tails()
  assert waited < 3 * heartbeat, f"process 0 took {waited:.0f} s to stop"
  # JAX's message when a process stops sending heartbeats, or gloo's when its peer is gone.
  assert re.search(r"detected fatal errors|another task died|Gloo|onnection", run.output(0)), (
      run.tails())
