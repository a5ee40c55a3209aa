"""Training as 2 JAX processes × 4 CPU devices gives what 1 process × 8 devices gives (the same
mesh shape and global batch), and only process 0 writes the run's files."""

from __future__ import annotations

import json

import pytest

import multiprocess_testing as mp

pytestmark = pytest.mark.slow


def _params(state: dict) -> dict:
  return {k: v for k, v in state.items() if k.startswith("params/")}


def test_two_processes_train_and_report_like_one(one_process, two_processes):
  one, two = mp.losses(one_process / "work"), mp.losses(two_processes / "work")
  assert sorted(one) == sorted(two) == [1, 2, 3, 4, 5, 6]
  for step in one:
    assert two[step] == pytest.approx(one[step], rel=1e-5), step
  difference = mp.max_difference(_params(mp.checkpoint(one_process / "work", 6)),
                                 _params(mp.checkpoint(two_processes / "work", 6)))
  assert difference <= 1e-5
  # The final report (validation at 1x and 2x the training length) is the same too.
  for row_one, row_two in zip(mp.report_rows(one_process / "work"),
                              mp.report_rows(two_processes / "work")):
    assert row_two == pytest.approx(row_one, rel=1e-4)


def test_each_process_keeps_its_data_state(two_processes):
  data_dir = two_processes / "work" / "checkpoints" / "3" / "data_state"
  states = {p.name: json.loads(p.read_text()) for p in data_dir.glob("process_*.json")}
  assert sorted(states) == ["process_0-of-2.json", "process_1-of-2.json"]
  # Both at global batch 3: each read its half of batches 0, 1 and 2.
  assert [s["value"] for s in states.values()] == [{"next_index": 3}] * 2


def test_only_process_0_writes_the_run_files(two_processes):
  work = two_processes / "work"
  writes = mp.written_files(two_processes / "writes")
  assert set(writes) == {"0", "1"}
  assert not writes["0"] & writes["1"], "written by both processes"
  # Process 1 writes only files of its own: its data-iterator state and Orbax's metadata of
  # the arrays it saved (the arrays too, outside Python: ocdbt.process_1).
  assert writes["1"] and all("process_1" in p.rsplit("/", 1)[1] for p in writes["1"]), writes["1"]
  names = {p.removeprefix(f"{work.resolve()}/") for p in writes["0"]}
  assert {"config.json", "provenance.json", "metrics.jsonl", "train.log", "eval_by_length.md",
          "run.lock"} <= names
  # Only the primary holds the workdir's lock, and only it prints the report.
  pids = json.loads((two_processes / "pids.json").read_text())
  assert json.loads((work / "run.lock").read_text())["pid"] == pids[0]
  assert "Validation by evaluation length" in (two_processes / "process_0.log").read_text()
  assert "Validation by evaluation length" not in (two_processes / "process_1.log").read_text()


def test_tensor_sharding_across_processes_gives_the_same_losses(one_process, tmp_path):
  # The tensor axis spans all 8 devices of both processes: the MLP's hidden units are split over
  # devices of different processes, and the batch is not split at all, so each process reads
  # all of it (`sharding.batch_share`). FSDP across processes: test_checkpoints.py.
  work = tmp_path / "work"
  run = mp.start([*mp.TINY, f"--workdir={work}", "--config.mode=train", "--config.mesh.data=1",
                  "--config.mesh.tensor=8"], tmp_path).check()
  assert "'tensor': 8" in run.output(0)
  one, two = mp.losses(one_process / "work"), mp.losses(work)
  assert sorted(two) == sorted(one)
  for step in one:
    assert two[step] == pytest.approx(one[step], rel=1e-5), step
  assert mp.max_difference(_params(mp.checkpoint(one_process / "work", 6)),
                           _params(mp.checkpoint(work, 6))) <= 1e-5
