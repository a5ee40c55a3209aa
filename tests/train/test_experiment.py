"""The experiment end to end on tiny configs: train, resume, evaluate, and clear input errors."""

import pathlib
import shutil

import jax
import numpy as np
import pytest

from posjax.configs import load_config
from posjax.train import loop, metrics

ROOT = pathlib.Path(__file__).resolve().parents[2]


def get_config(name="lm", arg="tiny", **overrides):
  return load_config(f"{ROOT}/configs/{name}.py:{arg}", **overrides)


def test_resumed_run_ends_with_the_same_parameters(tmp_path):
  straight = loop.Experiment(get_config(), str(tmp_path / "a")).train()
  interrupted = loop.Experiment(get_config(), str(tmp_path / "b"))
  interrupted.train(stop_after=3)
  assert interrupted.checkpointer.latest_step() == 3
  resumed = loop.Experiment(get_config(), str(tmp_path / "b")).train()
  assert int(resumed.step) == int(straight.step) == 6
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               jax.device_get(resumed.params), jax.device_get(straight.params))


def test_early_stopping_survives_a_resume(tmp_path):
  # With a learning rate of 0 the validation loss never improves on the first evaluation, so an
  # uninterrupted run evaluating every 2 steps with patience 2 stops at step 6.
  config = get_config(**{"train.steps": 12, "train.eval_every": 2, "train.learning_rate": 0.0})
  config.train.early_stopping_patience = 2
  loop.Experiment(config, str(tmp_path)).train(stop_after=3)  # preempted between evaluations
  # Its extra evaluation at step 3 is logged but does not make step 3 a "best" candidate.
  assert (tmp_path / "checkpoints" / "3").exists()
  assert not (tmp_path / "checkpoints" / "3" / "metrics").exists()
  resumed = loop.Experiment(config, str(tmp_path)).train()
  assert int(resumed.step) == 6
  again = loop.Experiment(config, str(tmp_path)).train()  # an early-stopped run stays stopped
  assert int(again.step) == 6


def test_steps_run_again_after_a_crash_are_logged_once(tmp_path):
  loop.Experiment(get_config(), str(tmp_path)).train()  # 6 steps, checkpoints at 3 and 6
  straight = metrics.read_jsonl(tmp_path / "metrics.jsonl")
  shutil.rmtree(tmp_path / "checkpoints" / "6")  # a crash after step 6 was logged, before its save
  loop.Experiment(get_config(), str(tmp_path)).train()  # resumes at step 3, runs 4 to 6 again
  records = metrics.read_jsonl(tmp_path / "metrics.jsonl")
  logged = [(r["step"], k) for r in records for k in r if k not in ("step", "time")]
  assert len(logged) == len(set(logged))
  assert [r for r in records if r["step"] <= 3] == [r for r in straight if r["step"] <= 3]
  for name in ("train/loss", "eval/loss"):
    want = [(r["step"], r[name]) for r in straight if name in r]
    got = [(r["step"], r[name]) for r in records if name in r]
    assert [s for s, _ in got] == [s for s, _ in want]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-5)


@pytest.mark.parametrize("name", ["lm", "mlm"])
def test_tiny_run_trains_and_evaluates_by_length(tmp_path, name):
  experiment = loop.Experiment(get_config(name), str(tmp_path))
  state = experiment.train()
  results = experiment.evaluate_lengths(state)
  assert [r.seq_len for r in results] == [32, 64]
  assert all(np.isfinite(r.loss) and r.tokens > 0 for r in results)
  assert "| 64 | 2 |" in loop.length_table(results)
  assert (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"model.pe": "rotary"}, "unknown positional encoding 'rotary'"),
    ({"data.name": "no_such_corpus"}, "no_such_corpus"),
    ({"model.num_heads": 5}, "num_heads=5 does not divide dim=32"),
    ({"model.head_dim": 7, "model.num_heads": 4}, "head_dim=7 must be even"),
    ({"data.global_batch_size": 12}, "not divisible by the 8 data-parallel shards"),
    ({"model.pe": "learned", "model.pe_options": '{"max_len": 40}'},
     "runs past the learned table of max_len=40"),
    ({"model.pe_options": "{max_len: 3}"}, "not valid JSON"),
    ({"train.init_from": "/nonexistent/run"}, "/nonexistent/run"),
])
def test_bad_input_is_a_clear_error_before_compiling(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    experiment = loop.Experiment(get_config(**overrides), str(tmp_path))
    experiment.init_state()


def test_bfloat16_compute_with_float32_parameters(tmp_path):
  experiment = loop.Experiment(get_config(**{"model.dtype": "bfloat16"}), str(tmp_path))
  state = experiment.train()
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}
  assert np.isfinite(experiment.evaluate_length(state, 32, 1).loss)


def test_init_from_loads_pretrained_parameters_only(tmp_path):
  pretrained = loop.Experiment(get_config("mlm"), str(tmp_path / "pre")).train()
  finetune = loop.Experiment(
      get_config("mlm", **{"train.init_from": str(tmp_path / "pre"), "train.learning_rate": 1e-4}),
      str(tmp_path / "fine"))
  state = finetune.init_state()
  assert int(state.step) == 0
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
               jax.device_get(pretrained.params))


def test_nan_loss_stops_with_a_clear_message_and_keeps_good_checkpoints(tmp_path):
  loop.Experiment(get_config(), str(tmp_path)).train(stop_after=3)
  exploding = get_config(**{"train.learning_rate": 1e35, "train.grad_clip_norm": 1e38})
  experiment = loop.Experiment(exploding, str(tmp_path))  # resumes at step 3, then blows up
  with pytest.raises(FloatingPointError,
                     match=r"training loss is nan at step \d.*\(step 3\) is intact"):
    experiment.train()
  assert experiment.checkpointer.all_steps() == [3]
  state, _ = experiment.checkpointer.restore(experiment.trainable.abstract_state)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state.params)))


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path, monkeypatch):
  from posjax.train import checkpointing

  def fake_handler():
    requested = lambda step=None: step is not None and step >= 2
    requested.uninstall = lambda: None
    return requested

  monkeypatch.setattr(checkpointing, "install_preemption_handler", fake_handler)
  experiment = loop.Experiment(get_config(), str(tmp_path))
  with pytest.raises(SystemExit, match="stopped on SIGTERM at step 2"):
    experiment.train()
  assert experiment.checkpointer.latest_step() == 2


def test_training_a_finished_run_again_is_a_no_op(tmp_path):
  first = loop.Experiment(get_config(), str(tmp_path)).train()
  again = loop.Experiment(get_config(), str(tmp_path)).train()
  assert int(again.step) == int(first.step) == 6
