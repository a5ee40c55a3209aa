"""RoPE context extension: every scaling builds, factor 1 is the base model, fine-tune configs."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from posjax.evaluate import context_extension as ce
from posjax.evaluate import extrapolation as ex
from posjax.evaluate import report
from posjax.train import context_extension as extend
from test_extrapolation import fresh_run, save_checkpoint, tiny_config


@pytest.fixture(scope="module")
def rope_run(tmp_path_factory):
  return fresh_run(tmp_path_factory.mktemp("rope_ce"))


def test_scaled_options_for_each_scaling():
  for scaling in ce.SCALINGS:
    options = ce.scaled_pe_options("rope", '{"base": 500.0}', scaling, 4.0, 128)
    assert options == {"base": 500.0, "scaling": {"type": scaling, "factor": 4.0,
                                                  "original_max_len": 128}}
  assert ce.scaled_pe_options("alibi", "{}", None, 4.0, 128) == {}
  with pytest.raises(ValueError, match="RoPE's: the run uses pe='alibi'"):
    ce.scaled_pe_options("alibi", "{}", "yarn", 4.0, 128)
  with pytest.raises(ValueError, match="already has a RoPE scaling"):
    ce.scaled_pe_options("rope", {"scaling": {"type": "linear", "factor": 2.0}}, "yarn", 4, 128)
  with pytest.raises(ValueError, match="unknown scaling"):
    ce.scaled_pe_options("rope", {}, "pi", 4.0, 128)


def test_each_scaling_builds_and_factor_one_is_the_base_model(rope_run):
  rows = ce.evaluate_scalings(rope_run, [32], passkey_trials=0, num_tokens=64)
  assert [r["method"] for r in rows] == ["none", *ce.SCALINGS]
  assert all(r["length"] == 32 and r["factor"] == 1.0 for r in rows)
  base = rows[0]["loss"]
  assert np.isfinite(base)
  for r in rows[1:]:
    assert r["loss"] == base, r["method"]


def test_scalings_at_a_longer_target(rope_run, tmp_path):
  rows = ce.evaluate_scalings(rope_run, [64], ("linear",), passkey_trials=0, num_tokens=64)
  assert [(r["method"], r["length"]) for r in rows] == [
      ("none", 32), ("none", 64), ("linear", 32), ("linear", 64)]
  assert all(np.isfinite(r["loss"]) for r in rows)
  assert [r["factor"] for r in rows] == [1.0, 1.0, 2.0, 2.0]
  linear = [r["loss"] for r in rows if r["method"] == "linear"]
  none = [r["loss"] for r in rows if r["method"] == "none"]
  assert linear != none  # the scaling changes the model
  paths = ce.write_report(rows, str(tmp_path))
  assert "| linear |" in open(paths["md"]).read()
  assert (tmp_path / "ppl_by_method.png").stat().st_size > 0


def test_non_rope_runs_are_refused(tmp_path):
  run = fresh_run(tmp_path, **{"model.pe": "alibi"})
  with pytest.raises(ValueError, match="RoPE's"):
    ce.evaluate_scalings(run, [64])


def test_finetune_config():
  base = tiny_config()
  config = extend.finetune_config(base, "/runs/base", 128, steps=20, scaling="yarn",
                                  overrides={"train.learning_rate": 1e-4})
  assert config.data.seq_len == 128 and config.train.init_from == "/runs/base"
  assert config.train.steps == 20 and config.train.learning_rate == 1e-4
  assert config.train.eval_every == config.train.checkpoint_every == 20
  assert json.loads(config.model.pe_options)["scaling"] == {
      "type": "yarn", "factor": 4.0, "original_max_len": 32}
  assert base.data.seq_len == 32 and base.model.pe_options == "{}"  # the base is untouched
  assert json.loads(extend.finetune_config(base, "/b", 64).model.pe_options) == {}


def test_finetune_starts_from_the_base_parameters(tmp_path, rope_run):
  save_checkpoint(rope_run, tmp_path / "base", 6)
  tiny_lr = {"train.learning_rate": 1e-30, "train.warmup_steps": 0}
  config, state = extend.finetune(rope_run.config, str(tmp_path / "base"), str(tmp_path / "ft"),
                                  64, steps=1, scaling="linear", overrides=tiny_lr)
  assert int(state.step) == 1 and config.data.seq_len == 64
  # A learning rate of 1e-30 keeps the base parameters: the fine-tune really started from them.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7),
               jax.device_get(state.params), jax.device_get(rope_run.params))
  _, again = extend.finetune(rope_run.config, str(tmp_path / "base"), str(tmp_path / "ft"), 64,
                             steps=1, scaling="linear", overrides=tiny_lr)
  assert int(again.step) == 1  # done already: restored, not retrained
  ft_run = ex.load_run(str(tmp_path / "ft"))  # as recorded in its workdir
  assert ft_run.step == 1
  assert ft_run.train_len == 64 and ft_run.cfg.pe_options["scaling"]["type"] == "linear"


def test_finetunes_with_different_scalings_get_different_directories():
  # They used to share `finetune_<target>`, so a second fine-tune (another scaling) found the
  # first one's finished checkpoint and reported it under its own label.
  dirs = {ce.finetune_dir("/out", 512, s) for s in (None, *ce.SCALINGS)}
  assert len(dirs) == 1 + len(ce.SCALINGS)
  assert ce.finetune_dir("/out", 512) == "/out/finetune_512"  # plain RoPE: the old name
  assert ce.finetune_dir("/out", 512, "linear") == "/out/finetune_512_linear"


def test_each_line_of_the_plot_has_its_own_style():
  # With 8 methods × 2 targets the default color cycle repeated: `none (512)` and `llama3 (512)`
  # were drawn alike. Now one color per method and one line style per target.
  methods = ["none", *ce.SCALINGS, "finetune", "finetune+linear"]
  rows = [{"method": m, "target_len": t, "length": n, "perplexity": 5.0}
          for m in methods for t in (512, 1024) for n in (128, t)]
  series = ce.method_series(rows)
  assert len(series) == 2 * len(methods)
  styles = {(s.style["color"], s.style["linestyle"], s.style.get("marker")) for s in series}
  assert len(styles) == len(series)
  assert {s.style["color"] for s in series if s.label.startswith("none")} == {"C0"}
  assert [s.x for s in series[:2]] == [[128, 512], [128, 1024]]


def test_report_of_several_seeds_is_their_mean_and_std(tmp_path):
  rows = [{"seed": seed, "method": "linear", "target_len": 64, "factor": 2.0, "length": 64,
           "loss": loss, "perplexity": float(np.exp(loss)), "token_accuracy": 0.5,
           "tokens": 100, "passkey": None} for seed, loss in ((0, 1.0), (1, 2.0))]
  paths = ce.write_report(rows, str(tmp_path))
  text = open(paths["md"]).read()
  mean, std = np.mean(np.exp([1.0, 2.0])), np.std(np.exp([1.0, 2.0]), ddof=1)
  assert f"| linear | 64 | 2.0000 | 64 | 2 | {mean:.3f} ± {std:.3f} | 1.5000 ± 0.7071 |" in text
  assert "seeds 0, 1: mean ± sample std over seeds" in text
  assert [r["seed"] for r in report.read_csv(paths["csv"])] == ["0", "1"]  # every run kept
  [series] = ce.method_series(ce.over_seeds(rows))
  assert series.low == pytest.approx([mean - std]) and series.high == pytest.approx([mean + std])


@pytest.mark.slow
def test_the_study_over_seeds_trains_a_base_run_per_seed_and_averages(tmp_path):
  root = pathlib.Path(__file__).resolve().parents[2]
  command = [sys.executable, "-m", "experiments.context_extension",
             "--config=configs/lm.py:rope,tiny", f"--workdir={tmp_path}", "--targets=2",
             "--scalings=linear", "--num_tokens=256", "--passkey_trials=0",
             "--heatmap_multipliers=1,4", "--heatmap_methods=none,linear"]
  subprocess.run(command + ["--seeds=0,1", "--heatmap_trials=1"], cwd=root, check=True,
                 capture_output=True)
  per_seed = {}
  for seed in (0, 1):
    config = json.loads((tmp_path / f"seed_{seed}" / "config.json").read_text())
    assert config["seed"] == config["data"]["seed"] == seed
    per_seed[seed] = report.read_csv(str(tmp_path / f"seed_{seed}" / "context_extension" /
                                         "results.csv"))
  assert per_seed[0] != per_seed[1]  # two seeds, two runs
  out = tmp_path / "context_extension"
  rows = report.read_csv(str(out / "results.csv"))
  assert sorted({r["seed"] for r in rows}) == ["0", "1"] and len(rows) == 2 * len(per_seed[0])
  for r in rows:  # each seed's rows, as in its own report
    mine = next(s for s in per_seed[int(r["seed"])] if (s["method"], s["length"]) ==
                (r["method"], r["length"]))
    assert float(r["perplexity"]) == pytest.approx(float(mine["perplexity"]))
  none_32 = [float(r["perplexity"]) for r in rows if (r["method"], r["length"]) == ("none", "32")]
  mean, std = np.mean(none_32), np.std(none_32, ddof=1)
  assert f"| none | 64 | 1.0000 | 32 | 2 | {mean:.3f} ± {std:.3f} |" in (out / "results.md").read_text()
  grid = report.read_csv(str(out / "passkey.csv"))
  assert {r["seed"] for r in grid} == {"0", "1"} and {r["length"] for r in grid} == {"32", "128"}
  for name in ("ppl_by_method.png", "passkey_none.png", "passkey_linear.png"):
    assert (out / name).exists()

  # Gathering the recorded studies (as after one process per seed) rewrites the same aggregate
  # without training or evaluating; a seed studied otherwise, or not at all, is refused.
  written = {name: (out / name).read_text() for name in ("results.csv", "results.md", "passkey.csv")}
  for name in written:
    (out / name).unlink()
  gather = command + ["--gather"]
  subprocess.run(gather + ["--seeds=0,1", "--heatmap_trials=1"], cwd=root, check=True,
                 capture_output=True)
  assert {name: (out / name).read_text() for name in written} == written
  for flags, message in ((["--seeds=0,1", "--heatmap_trials=2"],
                          "--heatmap_trials: recorded 1, given 2"),
                         (["--seeds=0,1,2", "--heatmap_trials=1"],
                          "seed 2 has no recorded study")):
    done = subprocess.run(gather + flags, cwd=root, capture_output=True, text=True)
    assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]
