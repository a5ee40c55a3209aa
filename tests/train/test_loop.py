"""The training loop end to end on tiny configs: train, resume, evaluate, and clear input errors."""

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from events_testing import read_events
from posjax.configs import load_config
from posjax.evaluate import run_report
from posjax.run import metrics
from posjax.run.experiment import Run
from posjax.train import loop

ROOT = pathlib.Path(__file__).resolve().parents[2]


def get_config(name="lm", arg="tiny", **overrides):
  return load_config(f"{ROOT}/configs/{name}.py:{arg}", **overrides)


def test_resumed_run_ends_with_the_same_parameters(tmp_path):
  straight = loop.train(Run(get_config(), str(tmp_path / "a")))
  interrupted = Run(get_config(), str(tmp_path / "b"))
  loop.train(interrupted, stop_after=3)
  assert interrupted.checkpointer.latest_step() == 3
  resumed = loop.train(Run(get_config(), str(tmp_path / "b")))
  assert int(resumed.step) == int(straight.step) == 6
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               jax.device_get(resumed.params), jax.device_get(straight.params))


def test_early_stopping_survives_a_resume(tmp_path):
  # With a learning rate of 1e-30 (no float32 parameter moves) the validation loss never improves
  # on the first evaluation, so an uninterrupted run evaluating every 2 steps with patience 2
  # stops at step 6.
  config = get_config(**{"train.steps": 12, "train.eval_every": 2, "train.learning_rate": 1e-30})
  config.train.early_stopping_patience = 2
  loop.train(Run(config, str(tmp_path)), stop_after=3)  # preempted between evaluations
  # Its extra evaluation at step 3 is logged but does not make step 3 a "best" candidate.
  assert (tmp_path / "checkpoints" / "3").exists()
  assert not (tmp_path / "checkpoints" / "3" / "metrics").exists()
  resumed = loop.train(Run(config, str(tmp_path)))
  assert int(resumed.step) == 6
  again = loop.train(Run(config, str(tmp_path)))  # an early-stopped run stays stopped
  assert int(again.step) == 6


def test_steps_run_again_after_a_crash_are_logged_once(tmp_path):
  loop.train(Run(get_config(), str(tmp_path)))  # 6 steps, checkpoints at 3 and 6
  straight = metrics.read_jsonl(tmp_path / "metrics.jsonl")
  shutil.rmtree(tmp_path / "checkpoints" / "6")  # a crash after step 6 was logged, before its save
  loop.train(Run(get_config(), str(tmp_path)))  # resumes at step 3, runs 4 to 6 again
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
  run = Run(get_config(name), str(tmp_path))
  state = loop.train(run)
  results = run_report.evaluate_lengths(run, state)
  assert [r.seq_len for r in results] == [32, 64]
  assert all(np.isfinite(r.loss) and r.tokens > 0 for r in results)
  assert "| 64 | 2 |" in run_report.length_table(results)
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
    ({"train.log_every": 0}, "train.log_every must be a positive integer"),
    ({"train.eval_every": 0}, "train.eval_every must be a positive integer"),
    ({"train.checkpoint_every": 0}, "train.checkpoint_every must be a positive integer"),
    ({"train.learning_rate": 0.0}, "train.learning_rate must be positive"),
    ({"train.warmup_steps": -1}, "train.warmup_steps must be >= 0"),
    ({"model.dropout": 1.0}, r"dropout=1.0 must be in \[0, 1\)"),
    ({"model.pe_options": '{"scaling": {"type": "yarn", "factor": 0.5, "original_max_len": 32}}'},
     "'factor' must be"),
    ({"model.pe_options": '{"scaling": {"type": "rescale", "factor": 2}}'},
     "unknown RoPE scaling type 'rescale'"),
    ({"model.pe": "alibi", "model.pe_options": '{"scaling": {"type": "yarn"}}'},
     r"scheme 'alibi' has no option\(s\) \['scaling'\]"),
])
def test_bad_input_is_a_clear_error_before_compiling(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    Run(get_config(**overrides), str(tmp_path)).init_state()


def test_bfloat16_compute_with_float32_parameters(tmp_path):
  run = Run(get_config(**{"model.dtype": "bfloat16"}), str(tmp_path))
  state = loop.train(run)
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}
  assert np.isfinite(run.objective.evaluate_length(run, state, 32, 1).loss)


def test_init_from_loads_pretrained_parameters_only(tmp_path):
  pretrained = loop.train(Run(get_config("mlm"), str(tmp_path / "pre")))
  finetune = Run(
      get_config("mlm", **{"train.init_from": str(tmp_path / "pre"), "train.learning_rate": 1e-4}),
      str(tmp_path / "fine"))
  state = finetune.init_state()
  assert int(state.step) == 0
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
               jax.device_get(pretrained.params))


def test_init_from_seed_placeholder_takes_each_seeds_own_run(tmp_path):
  pretrained = {s: loop.train(Run(get_config(seed=s), str(tmp_path / f"pre_{s}")))
                for s in (0, 1)}
  template = str(tmp_path / "pre_{seed}")
  for s in (0, 1):
    state = Run(get_config(seed=s, **{"train.init_from": template}),
                str(tmp_path / f"fine_{s}")).init_state()
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
                 jax.device_get(pretrained[s].params))
  with pytest.raises(ValueError, match=r"the only placeholder it may hold is \{seed\}"):
    Run(get_config(**{"train.init_from": str(tmp_path / "pre_{step}")}),
        str(tmp_path / "bad")).init_state()


def test_nan_loss_stops_with_a_clear_message_and_keeps_good_checkpoints(tmp_path):
  loop.train(Run(get_config(), str(tmp_path)), stop_after=3)
  exploding = get_config(**{"train.learning_rate": 1e35, "train.grad_clip_norm": 1e38})
  run = Run(exploding, str(tmp_path), allow_changes=True)  # resumes at step 3, then blows up
  with pytest.raises(FloatingPointError,
                     match=r"at step \d: stopping\. The latest checkpoint, step 3, holds finite"):
    loop.train(run)
  assert run.checkpointer.all_steps() == [3]
  state, _ = run.restore()
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state.params)))


@pytest.mark.parametrize("eval_every", [3, 100])
def test_a_diverged_state_is_never_saved(tmp_path, eval_every):
  # From scratch, the first update already overflows; with eval_every == checkpoint_every the old
  # loop skipped its NaN check, and with a loss logged only every 100 steps nothing checked the
  # state: either way a NaN checkpoint was saved and called intact.
  config = get_config(**{"train.learning_rate": 1e35, "train.grad_clip_norm": 1e38,
                         "train.log_every": 100, "train.eval_every": eval_every})
  run = Run(config, str(tmp_path))
  with pytest.raises(FloatingPointError, match="No checkpoint was saved before it"):
    loop.train(run)
  assert run.checkpointer.all_steps() == []


def test_sigterm_saves_at_once_and_exits_0(tmp_path, monkeypatch):
  from posjax.run import preemption

  def fake_handler():
    requested = lambda step=None: step is not None and step >= 2
    requested.uninstall = lambda: None
    return requested

  monkeypatch.setattr(preemption, "install_handler", fake_handler)
  run = Run(get_config(**{"train.eval_every": 2}), str(tmp_path))
  validations = []
  monkeypatch.setattr(run, "validate", lambda state: validations.append(1) or {})
  with pytest.raises(SystemExit) as stopped:
    loop.train(run)
  assert stopped.value.code == 0
  assert run.checkpointer.latest_step() == 2
  assert validations == []  # saved first: no validation before the save


def test_the_run_is_recorded_before_the_first_step(tmp_path, monkeypatch):
  monkeypatch.setenv("JAX_POSJAX_TEST_FLAG", "1")  # read like JAX_DEFAULT_MATMUL_PRECISION
  run = Run(get_config(), str(tmp_path))
  monkeypatch.setattr(run.trainable, "train_step", None)  # fails at the first step
  with pytest.raises(AttributeError):
    loop.train(run)
  recorded = json.loads((tmp_path / "config.json").read_text())
  assert recorded["model"]["pe"] == "rope" and recorded["data"]["seq_len"] == 32
  provenance = json.loads((tmp_path / "provenance.json").read_text())["created"]
  assert provenance["versions"]["jax"] == jax.__version__
  assert provenance["device_count"] == 8 and provenance["process_count"] == 1
  assert provenance["platform"] == "cpu"
  # What changes the floats besides the config and versions (conftest's XLA_FLAGS make 8 devices).
  environment = provenance["numerics"]["environment"]
  assert "--xla_force_host_platform_device_count=8" in environment["XLA_FLAGS"]
  assert environment["JAX_POSJAX_TEST_FLAG"] == "1" and "PATH" not in environment
  assert provenance["numerics"]["jax_flags"]["jax_enable_x64"] is False
  assert provenance["numerics"]["host_cpu"]  # e.g. "AMD EPYC", from /proc/cpuinfo on Linux


def test_resuming_with_other_training_fields_is_refused(tmp_path):
  loop.train(Run(get_config(), str(tmp_path)), stop_after=3)
  with pytest.raises(ValueError, match=r"data\.seq_len: 32 \(run\) → 64 \(given\)\n  - "
                                       r"model\.pe: \"rope\" \(run\) → \"alibi\""):
    Run(get_config(arg="tiny,alibi", **{"data.seq_len": 64}), str(tmp_path))
  # How to evaluate, log and checkpoint may change; with allow_changes, anything may.
  Run(get_config(**{"eval.num_batches": 3, "train.log_every": 1}), str(tmp_path))
  run = Run(get_config(**{"train.steps": 9}), str(tmp_path), allow_changes=["train.steps"])
  assert int(loop.train(run).step) == 9
  sessions = json.loads((tmp_path / "provenance.json").read_text())["sessions"]
  assert sessions[-1]["changes"] == ["train.steps: 6 (run) → 9 (given)"]


def test_a_checkpoint_without_its_data_state_is_an_error(tmp_path):
  loop.train(Run(get_config(), str(tmp_path)), stop_after=3)
  shutil.rmtree(tmp_path / "checkpoints" / "3" / "data_state")
  with pytest.raises(ValueError, match=r"has no data_state/.*restart them"):
    loop.train(Run(get_config(), str(tmp_path)))


def test_a_second_run_on_a_workdir_fails_at_once(tmp_path):
  from posjax.run import lock
  with lock.hold(str(tmp_path / "other")):  # taken by this process: reentrant
    pass
  holder = subprocess.Popen([sys.executable, "-c", (
      "import sys, time; from posjax.run import lock\n"
      f"with lock.hold({str(tmp_path)!r}):\n  print('held', flush=True); time.sleep(60)")],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(lock.WorkdirBusy, match=rf"in use by another run \(process {holder.pid}"):
      loop.train(Run(get_config(), str(tmp_path)))
  finally:
    holder.kill()
    holder.wait()
  assert int(loop.train(Run(get_config(), str(tmp_path))).step) == 6  # free once it is gone


def test_metrics_are_on_disk_at_each_checkpoint(tmp_path, monkeypatch):
  # What a kill -9 right after a checkpoint would leave: every point logged until then (the
  # event writer used to flush only every 30 s).
  run = Run(get_config(), str(tmp_path))
  saves, on_disk = [], []
  save, global_batch = run.checkpointer.save, run.global_batch
  monkeypatch.setattr(run.checkpointer, "save",
                      lambda step, *a, **k: saves.append(step) or save(step, *a, **k))

  def next_batch(host_batch):  # the first batch after the first checkpoint
    if saves and not on_disk:
      on_disk.append([e.step for e in read_events(tmp_path / "tensorboard")
                      for v in e.summary.value if v.tag == "train/loss"])
    return global_batch(host_batch)

  monkeypatch.setattr(run, "global_batch", next_batch)
  loop.train(run)
  assert saves == [3, 6] and on_disk == [[2]]


def test_progress_is_printed_outside_a_terminal(tmp_path, capsys):
  loop.train(Run(get_config(), str(tmp_path)))
  err = capsys.readouterr().err
  assert "step 6/6 loss" in err and "eta 0:00" in err
  assert "step 6/6 loss" in (tmp_path / "train.log").read_text()


def test_training_a_finished_run_again_is_a_no_op(tmp_path):
  first = loop.train(Run(get_config(), str(tmp_path)))
  again = loop.train(Run(get_config(), str(tmp_path)))
  assert int(again.step) == int(first.step) == 6


@pytest.mark.slow
def test_the_final_validation_is_not_run_twice(tmp_path, monkeypatch):
  run = Run(get_config(), str(tmp_path))
  state = loop.train(run)
  calls = []
  eval_step = run.trainable.eval_step
  monkeypatch.setattr(run.trainable, "eval_step", lambda *a: calls.append(1) or eval_step(*a))
  results = run_report.evaluate_lengths(run, state)  # x1 and x2: x1 is the final validation
  assert [r.seq_len for r in results] == [32, 64] and len(calls) == 1
  again = run_report.evaluate_lengths(run, state.replace(params=jax.tree.map(lambda x: x + 0,
                                                                              state.params)))
  assert len(calls) == 3 and again[0].loss == pytest.approx(results[0].loss, rel=1e-6)
