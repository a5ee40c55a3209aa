"""Algorithmic problems on tiny models through the one training loop: training learns, resumes
exactly, evaluation covers unseen lengths, reports over seeds.

(The generator tests are tests/data/test_algorithmic_generators.py.)
"""

from __future__ import annotations

import csv
import json
import math
import pathlib

import jax
import numpy as np
import pytest

from posjax.configs import load_config
from posjax.evaluate import algorithmic as E
from posjax.evaluate import run_report
from posjax.run.experiment import Run
from posjax.train import loop

ROOT = pathlib.Path(__file__).resolve().parents[2]


def logged(workdir: str, name: str) -> list[tuple[int, float]]:
  """`(step, value)` of every record of `name` in the run's metrics.jsonl."""
  with open(pathlib.Path(workdir) / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  return [(r["step"], r[name]) for r in records if name in r]


def get_config(arg: str, **overrides):
  return load_config(f"{ROOT}/configs/algorithmic.py:{arg}", **overrides)


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory):
  config = get_config("copy,alibi,tiny", **{"data.max_train_length": 4, "data.bucket": 8,
                                            "eval.bucket": 8, "train.steps": 60})
  run = Run(config, str(tmp_path_factory.mktemp("copy")))
  return run, loop.train(run)


def test_tiny_decoder_learns_copy_above_chance(copy_run):
  run, state = copy_run
  losses = logged(run.workdir, "train/loss")
  assert losses[-1][1] < losses[0][1] - 0.5
  assert min(v for _, v in losses) < math.log(2)  # below guessing one of two bits
  assert [s for s, _ in logged(run.workdir, "eval/seq_accuracy")] == [20, 40, 60]
  rows = E.evaluate_lengths(run, state, lengths=[2, 4], num_examples=32)
  for row in rows:
    assert row["in_train"] and row["examples"] == 32
    assert row["token_accuracy"] > 0.6        # chance: 0.5 per bit
    assert row["seq_accuracy"] > 2 ** -row["length"] + 0.1  # chance: all bits guessed


def test_validation_sequence_accuracy_counts_whole_examples(copy_run):
  """eval/seq_accuracy is the share of examples with every output token right, recomputed here
  from the model's argmax on the same held-out batches."""
  run, state = copy_run
  metrics = run.validate(state)
  right = total = 0
  for host in run.dataset("validation", run.objective.train_seq_len,
                          run.config.eval.batch_size, train=False):
    out = jax.device_get(run.trainable.predict_step(state.params, state.rest,
                                                    run.global_batch(host)))
    ok = (out["predictions"] == host["targets"]) | (host["weights"] == 0)
    right += int(ok.all(axis=1).sum())
    total += len(ok)
  assert total == run.config.eval.num_batches * run.config.eval.batch_size
  assert metrics["eval/seq_accuracy"] == pytest.approx(right / total)
  assert 0.0 <= metrics["eval/seq_accuracy"] <= metrics["eval/token_accuracy"] <= 1.0


def test_evaluation_beyond_training_lengths_and_report_files(copy_run, tmp_path):
  run, state = copy_run
  rows = E.evaluate_lengths(run, state, lengths=[3, 6, 9], num_examples=16)
  assert [r["length"] for r in rows] == [3, 6, 9]
  assert [r["in_train"] for r in rows] == [True, False, False]
  for row in rows:
    assert 0.0 <= row["seq_accuracy"] <= row["token_accuracy"] <= 1.0
    assert row["scheme"] == "alibi" and row["positions"] == "contiguous" and row["seed"] == 0
  # The same examples whatever other lengths are scored.
  again = E.evaluate_lengths(run, state, lengths=[6], num_examples=16)
  assert again[0]["seq_accuracy"] == rows[1]["seq_accuracy"]
  paths = E.write_report(rows, str(tmp_path))
  for name in ("algorithmic.csv", "algorithmic.md", "accuracy_copy.png"):
    assert (tmp_path / name).stat().st_size > 0
  assert (tmp_path / "algorithmic.csv").read_text().count("\n") == 4
  text = (tmp_path / "algorithmic.md").read_text()
  assert "| copy | alibi | 1 |" in text and "one seed: no spread" in text
  assert set(paths) == {"csv", "md", "png_copy"}


def test_final_report_of_the_run(copy_run):
  run, state = copy_run
  text = run_report.report(run, state)
  assert text.startswith("copy, alibi (trained on input lengths 1..4)")
  with open(pathlib.Path(run.workdir) / "algorithmic.csv") as f:
    lengths = [int(r["length"]) for r in csv.DictReader(f)]
  assert lengths == E.default_lengths(run.config) == [1, 4, 5, 8, 12, 16]


def test_summary_over_seeds_is_mean_and_sample_std():
  rows = [dict(problem="parity", scheme="rope", seed=s, length=n, in_train=n <= 2,
               seq_accuracy=acc, token_accuracy=acc, skipped="")
          for s, accs in enumerate([(1.0, 0.5, 0.25), (1.0, 0.75, 0.25)])
          for n, acc in zip((2, 4, 8), accs)]
  (summary,) = E.summarize(rows)
  # Per seed, the test mean is (0.5 + 0.25) / 2 = 0.375 and (0.75 + 0.25) / 2 = 0.5.
  assert summary["test_seq_acc"] == pytest.approx(0.4375)
  assert summary["test_seq_acc_std"] == pytest.approx(np.std([0.375, 0.5], ddof=1))
  assert summary["seeds"] == 2 and summary["test_lengths"] == "4-8"


def test_resumed_algorithmic_run_equals_an_uninterrupted_one(tmp_path):
  """Checkpoints hold the example stream's position: 5 + 5 steps give the parameters of 10."""
  overrides = {"train.steps": 10, "train.checkpoint_every": 5, "train.eval_every": 5,
               "model.num_layers": 1}
  whole = loop.train(Run(get_config("reverse,rope,tiny", **overrides), str(tmp_path / "a")))
  config = get_config("reverse,rope,tiny", **overrides)
  loop.train(Run(config, str(tmp_path / "b")), stop_after=5)
  resumed = loop.train(Run(config, str(tmp_path / "b")))
  assert int(resumed.step) == 10
  for x, y in zip(jax.tree.leaves(whole.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_mlm_with_a_learned_table_skips_lengths_past_the_table(tmp_path):
  config = get_config("reverse,learned,mlm,tiny", **{
      "model.pe_options": '{"max_len": 20}', "model.num_layers": 1, "train.steps": 3,
      "eval.lengths": (2, 10, 11)})
  run = Run(config, str(tmp_path))  # trains on up to 2 × 8 = 16 tokens
  state = loop.train(run)
  rows = {r["length"]: r for r in E.evaluate_lengths(run, state, num_examples=16)}
  assert rows[10]["examples"] == 16 and not rows[10]["skipped"]  # 20 tokens: positions 0..19
  assert rows[11]["examples"] == 0 and math.isnan(rows[11]["seq_accuracy"])  # 22 tokens
  assert "max_len=20" in rows[11]["skipped"]
  assert all(math.isfinite(rows[n]["seq_accuracy"]) for n in (2, 10))
  assert rows[2]["family"] == "mlm" and rows[2]["scheme"] == "learned (mlm)"
  assert any("skipped" in n for n in E.notes_for(list(rows.values())))


def test_config_errors_are_caught_before_compiling(tmp_path):
  with pytest.raises(ValueError, match="unknown config argument 'sorting'"):
    get_config("sorting")
  cases = [
      ({"data.name": "sorting"}, "data.name='sorting': choose a problem"),
      ({"data.positions": "randomized", "data.max_position": 10},
       r"data.max_position >= the longest training sequence \(16 tokens"),
      ({"data.global_batch_size": 12}, "micro-batch of 12 .* not divisible by the 8"),
      ({"data.min_train_length": 5, "data.max_train_length": 4}, "training lengths 5..4"),
      ({"model.family": "classifier"}, "task=algorithmic trains model.family in"),
      ({"model.pe": "learned", "model.pe_options": '{"max_len": 10}'},
       "training sequences of 16 tokens"),
  ]
  for overrides, message in cases:
    with pytest.raises(ValueError, match=message):
      Run(get_config("reverse,tiny", **overrides), str(tmp_path))
  assert E.default_lengths(get_config("copy,nope,tiny")) == [1, 4, 8, 9, 12, 16]


def test_experiment_sweep_over_schemes_and_seeds(tmp_path):
  from experiments.algorithmic import __main__ as experiment  # defines no flags on import
  overrides = {"train.steps": 3, "eval.lengths": (3, 10), "eval.num_examples": 16,
               "model.num_layers": 1}
  experiment.sweep(["parity"], ["nope", "rope+rand"], str(tmp_path), seeds=[0, 1],
                   spec=f"{ROOT}/configs/algorithmic.py:tiny", overrides=overrides, log=None)
  with open(tmp_path / "algorithmic.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["scheme"], r["seed"], r["length"]) for r in rows] == [
      (scheme, seed, length) for scheme in ("nope", "rope+rand") for seed in ("0", "1")
      for length in ("3", "10")]
  # Ruoss et al. evaluate with randomized positions too; contiguous training stays contiguous.
  assert [r["positions"] for r in rows] == ["contiguous"] * 4 + ["randomized"] * 4
  assert all(r["examples"] == "16" for r in rows)
  assert (tmp_path / "accuracy_parity.png").exists()
  assert "| parity | rope+rand | 2 |" in (tmp_path / "algorithmic.md").read_text()
  run_dir = tmp_path / "parity" / "rope+rand" / "seed_1"
  assert (run_dir / "config.json").exists() and (run_dir / "algorithmic.csv").exists()
  assert Run.from_workdir(str(run_dir)).config.seed == 1
