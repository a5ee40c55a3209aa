"""MetricsWriter (JSONL + TensorBoard events, read back) and the Progress reporter."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from events_testing import read_events
from posjax.run import metrics


def _scalars(logdir):
  return [(e.step, v.tag, v.simple_value) for e in read_events(logdir) for v in e.summary.value
          if v.HasField("simple_value")]


def test_jsonl_and_tensorboard(tmp_path):
  with metrics.MetricsWriter(tmp_path) as writer:
    writer.write_scalars(1, {"train/loss": 2.5, "train/lr": np.float32(1e-3)})
    writer.write_scalars(2, {"train/loss": float("nan"), "eval/ppl": float("inf"),
                             "perf/mfu": None})
    writer.write_config({"model": {"dim": 32, "pe": "rope"}, "seed": 0})
    writer.write_text("notes", "hello", step=2)
    writer.flush()
  with open(tmp_path / "metrics.jsonl") as f:
    lines = f.read().splitlines()
  assert len(lines) == 2
  first, second = (json.loads(line) for line in lines)   # strict JSON: no bare NaN
  assert first["step"] == 1 and first["train/loss"] == 2.5
  assert abs(first["train/lr"] - 1e-3) < 1e-9 and first["time"] > 0
  assert second["train/loss"] == "NaN" and second["eval/ppl"] == "Infinity"
  assert "perf/mfu" not in second
  records = metrics.read_jsonl(tmp_path / "metrics.jsonl")
  assert math.isnan(records[1]["train/loss"]) and records[1]["eval/ppl"] == math.inf
  config_text = [v.tensor.string_val[0].decode() for e in read_events(tmp_path / "tensorboard")
                 for v in e.summary.value if v.tag.startswith("config")]
  assert config_text and '"pe": "rope"' in config_text[0]

  scalars = _scalars(tmp_path / "tensorboard")
  assert (1, "train/loss", 2.5) in scalars
  assert any(s == 1 and t == "train/lr" and abs(v - 1e-3) < 1e-9 for s, t, v in scalars)
  assert any(s == 2 and t == "train/loss" and math.isnan(v) for s, t, v in scalars)
  tags = {v.tag for e in read_events(tmp_path / "tensorboard") for v in e.summary.value}
  assert {"train/loss", "train/lr", "eval/ppl"} <= tags


def _visible_scalars(logdir):
  """(step, tag, value) as TensorBoard shows them: a SessionLog.START at step s (a restart) hides
  the points logged before it at steps >= s (TensorBoard's default, --purge_orphaned_data)."""
  points = []
  for event in read_events(logdir):
    if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
      points = [p for p in points if p[0] < event.step]
    points += [(event.step, v.tag, v.simple_value) for v in event.summary.value
               if v.HasField("simple_value")]
  return points


def test_resuming_drops_what_was_logged_after_the_checkpoint(tmp_path):
  with metrics.MetricsWriter(tmp_path) as writer:  # checkpointed at step 2, crashed after step 3
    for step in (1, 2, 3):
      writer.write_scalars(step, {"loss": 10.0 + step})
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "ti')  # a line cut short by the crash
  with metrics.MetricsWriter(tmp_path, start_step=2) as writer:  # resumed from step 2
    for step in (3, 4):
      writer.write_scalars(step, {"loss": float(step)})
  expected = [(1, 11.0), (2, 12.0), (3, 3.0), (4, 4.0)]
  records = metrics.read_jsonl(tmp_path / "metrics.jsonl")
  assert [(r["step"], r["loss"]) for r in records] == expected
  assert sorted(_visible_scalars(tmp_path / "tensorboard")) == [
      (step, "loss", value) for step, value in expected]


def test_appends_across_writers_and_closed_is_noop(tmp_path):
  for step in (1, 2):
    writer = metrics.MetricsWriter(tmp_path)
    writer.write_scalars(step, {"loss": step})
    writer.close()
    writer.write_scalars(99, {"loss": 0.0})   # after close: ignored
  assert [r["step"] for r in metrics.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


def test_non_primary_writes_nothing(tmp_path):
  writer = metrics.MetricsWriter(tmp_path / "run", is_primary=False)
  writer.write_scalars(1, {"loss": 1.0})
  writer.write_config({"a": 1})
  writer.flush()
  writer.close()
  assert not (tmp_path / "run").exists()


def test_progress_reports_every_n_steps():
  progress = metrics.Progress(10, every=4, use_tqdm=False)
  lines = [progress.update(step, {"loss": 1.0 / step}, tokens=256) for step in range(1, 11)]
  assert [i + 1 for i, line in enumerate(lines) if line] == [4, 8, 10]   # and the last step
  assert lines[3].startswith("step  4/10 loss 0.2500 tok/s ")
  assert "eta " in lines[3] and lines[9].endswith("eta 0:00")
  assert progress.update(11, force=True) is not None
  progress.close()


def test_progress_from_the_logged_scalars():
  # As the training loop calls it: only on logging steps, with the dict it writes to TensorBoard.
  progress = metrics.Progress(100, every=50, start=20, use_tqdm=False)
  scalars = {"train/loss": np.float32(2.25), "perf/tokens_per_second": 12345.6,
             "perf/mfu": 0.4213, "train/grad_norm": 0.5}
  line = progress.update(50, scalars)
  assert line.startswith("step  50/100 loss 2.2500 tok/s 12,346 mfu 42.1% eta ")
  assert progress.update(73, scalars) is None
  progress.message("a line of its own")


def test_progress_with_tqdm_bar():
  pytest.importorskip("tqdm")
  stream = io.StringIO()
  with metrics.Progress(6, every=3, use_tqdm=True, stream=stream) as progress:
    for step in range(1, 7):
      progress.update(step, {"train/loss": 0.5}, tokens=10, acc=0.25)
    progress.message("evaluated")
  assert "loss=0.5000" in stream.getvalue() and "acc=0.25" in stream.getvalue()
  assert "evaluated" in stream.getvalue()
