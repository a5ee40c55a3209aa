"""The task harness on tiny models: training learns, evaluation covers unseen lengths, reports.

(The generator tests are tests/data/test_task_generators.py: two test_tasks.py files in folders
without __init__.py clash under pytest's default import mode.)
"""

from __future__ import annotations

import csv
import math
import pathlib

import pytest

from posjax.configs import load_config
from posjax.evaluate import tasks as E

ROOT = pathlib.Path(__file__).resolve().parents[2]


def get_config(arg: str, **overrides):
  return load_config(f"{ROOT}/configs/tasks.py:{arg}", **overrides)


@pytest.fixture(scope="module")
def copy_run():
  config = get_config("copy,alibi,tiny", **{"data.max_train_length": 4, "data.bucket": 8,
                                            "eval.bucket": 8, "train.steps": 60})
  return E.train_task(config, log=None)


def test_tiny_decoder_learns_copy_above_chance(copy_run):
  losses = [loss for _, loss in copy_run.losses]
  assert losses[-1] < losses[0] - 0.5
  assert min(losses) < math.log(2)  # below guessing one of two bits
  rows = E.evaluate_task(copy_run, lengths=[2, 4], num_examples=32)
  for row in rows:
    assert row["in_train"] and row["examples"] == 32
    assert row["token_accuracy"] > 0.6        # chance: 0.5 per bit
    assert row["seq_accuracy"] > 2 ** -row["length"] + 0.1  # chance: all bits guessed


def test_evaluation_beyond_training_lengths_and_report_files(copy_run, tmp_path):
  rows = E.evaluate_task(copy_run, lengths=[3, 6, 9], num_examples=16)
  assert [r["length"] for r in rows] == [3, 6, 9]
  assert [r["in_train"] for r in rows] == [True, False, False]
  for row in rows:
    assert 0.0 <= row["seq_accuracy"] <= row["token_accuracy"] <= 1.0
    assert row["scheme"] == "alibi" and row["positions"] == "contiguous"
  paths = E.write_task_report(rows, str(tmp_path))
  for name in ("tasks.csv", "tasks.md", "accuracy_copy.png"):
    assert (tmp_path / name).stat().st_size > 0
  assert (tmp_path / "tasks.csv").read_text().count("\n") == 4
  text = (tmp_path / "tasks.md").read_text()
  assert "| copy | alibi |" in text and "test_seq_acc" in text
  assert set(paths) == {"csv", "md", "png_copy"}


def test_encoder_with_a_learned_table_skips_lengths_past_the_table():
  config = get_config("reverse,learned,encoder,tiny", **{
      "model.pe_options": '{"max_len": 20}', "model.num_layers": 1, "train.steps": 3,
      "eval.lengths": (2, 10, 11)})
  run = E.train_task(config, log=None)  # trains on up to 2 × 8 = 16 tokens
  rows = {r["length"]: r for r in E.evaluate_task(run, num_examples=16)}
  assert rows[10]["examples"] == 16 and not rows[10]["skipped"]  # 20 tokens: positions 0..19
  assert rows[11]["examples"] == 0 and math.isnan(rows[11]["seq_accuracy"])  # 22 tokens
  assert "max_len=20" in rows[11]["skipped"]
  assert all(math.isfinite(rows[n]["seq_accuracy"]) for n in (2, 10))
  assert rows[2]["family"] == "encoder" and rows[2]["scheme"] == "learned (encoder)"
  assert any("skipped" in n for n in E.notes_for(list(rows.values())))


def test_config_errors_are_caught_before_compiling():
  with pytest.raises(ValueError, match="unknown config argument 'sorting'"):
    get_config("sorting")
  config = get_config("duplicate,rope,randomized,tiny", **{"eval.max_length": 100})
  with pytest.raises(ValueError, match="data.max_position >= the longest sequence"):
    E.check_config(config, 8)
  config = get_config("copy,nope,tiny", **{"data.batch_size": 12})
  with pytest.raises(ValueError, match="batch_size=12 .* not divisible by the 8"):
    E.check_config(config, 8)
  config = get_config("copy,nope,tiny")
  assert E.default_lengths(config) == [1, 4, 8, 9, 12, 16]
  config = get_config("duplicate,learned,tiny", **{"model.pe_options": '{"max_len": 20}'})
  with pytest.raises(ValueError, match="training sequences of 24 tokens"):
    E.train_task(config, log=None)


def test_experiment_sweep_compares_schemes_with_randomized_positions(tmp_path):
  from experiments.tasks import __main__ as experiment  # defines no flags on import
  experiment.sweep(["parity"], ["nope", "rope+rand"], str(tmp_path), tiny=True, steps=3,
                   overrides=["eval.lengths=(3,10)", "eval.num_examples=16",
                              "model.num_layers=1"], log=None)
  with open(tmp_path / "tasks.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["scheme"], r["length"]) for r in rows] == [
      ("nope", "3"), ("nope", "10"), ("rope+rand", "3"), ("rope+rand", "10")]
  # Ruoss et al. evaluate with randomized positions too; contiguous training stays contiguous.
  assert [r["positions"] for r in rows] == ["contiguous"] * 2 + ["randomized"] * 2
  assert all(r["examples"] == "16" for r in rows)
  assert (tmp_path / "accuracy_parity.png").exists()
  assert "| parity | rope+rand |" in (tmp_path / "tasks.md").read_text()
  assert (tmp_path / "parity" / "rope+rand" / "train_loss.csv").exists()
