"""A study under 2 processes × 4 devices gives the numbers of 1 process × 8 devices: the
length-extrapolation sweep (train, then perplexity by length with both protocols). The studies
that run as one process only refuse to run as several."""

from __future__ import annotations

import pytest

import multiprocess_testing as mp
from posjax.evaluate import report

pytestmark = pytest.mark.slow


def test_the_extrapolation_study_gives_the_single_process_numbers(tmp_path):
  args = ["--config=configs/lm.py:tiny", "--schemes=rope", "--multipliers=1,2",
          "--num_tokens=512"]
  one = mp.single([*args, f"--workdir={tmp_path / 'one'}"], tmp_path / "one_logs",
                  module="experiments.extrapolation")
  two = mp.start([*args, f"--workdir={tmp_path / 'two'}"], tmp_path / "two_logs",
                 module="experiments.extrapolation")
  one.check()
  two.check()
  rows_one = report.read_csv(str(tmp_path / "one" / "comparison.csv"))
  rows_two = report.read_csv(str(tmp_path / "two" / "comparison.csv"))
  assert [(r["length"], r["protocol"]) for r in rows_two] == [
      (r["length"], r["protocol"]) for r in rows_one] and len(rows_one) == 4
  for r1, r2 in zip(rows_one, rows_two):
    assert float(r2["perplexity"]) == pytest.approx(float(r1["perplexity"]), rel=1e-4)
    assert r2["tokens"] == r1["tokens"]
  assert "Validation perplexity by evaluation length" in two.output(0)
  assert "Validation perplexity by evaluation length" not in two.output(1)  # one prints it


def test_a_one_process_study_refuses_to_run_as_several(tmp_path):
  logs = tmp_path / "logs"
  two = mp.start(["--problems=parity", f"--workdir={tmp_path / 'work'}"], logs,
                 module="experiments.algorithmic")
  assert two.wait() == [1, 1]
  assert "experiments.algorithmic runs as one process, but this is process 1 of 2" in two.output(1)
  assert not (tmp_path / "work").exists()
