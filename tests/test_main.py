"""`python -m posjax.main` end to end on the tiny configs, as a user runs it."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_main(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "posjax.main", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=600, env=dict(os.environ))


@pytest.mark.parametrize("config", ["lm.py:tiny", "mlm.py:tiny,alibi"])
def test_main_trains_evaluates_and_reports(tmp_path, config):
  # A relative --workdir, as in the README's command.
  result = run_main(f"--config={ROOT}/configs/{config}", "--workdir=.", cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Validation by evaluation length" in result.stdout
  assert (tmp_path / "eval_by_length.md").read_text().count("\n") == 4  # header, rule, 2 rows
  steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
  assert max(steps) == 6
  assert any((tmp_path / "tensorboard").iterdir())
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [
      "3", "6"]
  # eval mode reads the trained checkpoint and reports again, without training.
  again = run_main(f"--config=configs/{config}", f"--workdir={tmp_path}", "--config.mode=eval")
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.split("Validation by evaluation length")[1] == result.stdout.split(
      "Validation by evaluation length")[1]


def test_main_rejects_bad_override_before_compiling(tmp_path):
  result = run_main("--config=configs/lm.py:tiny", f"--workdir={tmp_path}",
                    "--config.model.num_heads=5")
  assert result.returncode != 0
  assert "num_heads=5 does not divide dim=32" in result.stderr
  assert not (tmp_path / "checkpoints").exists()


def test_eval_mode_without_checkpoint_is_a_clear_error(tmp_path):
  result = run_main("--config=configs/lm.py:tiny", f"--workdir={tmp_path}", "--config.mode=eval")
  assert result.returncode != 0
  assert "mode=eval needs a checkpoint" in result.stderr


def test_eval_mode_evaluates_the_run_as_it_was_trained(tmp_path):
  # An ALiBi run at seq_len 16, evaluated with the default config file (RoPE, seq_len 32): the
  # run's record decides, so the numbers are those of the run's own report.
  trained = run_main("--config=configs/lm.py:tiny,alibi", f"--workdir={tmp_path}",
                     "--config.data.seq_len=16")
  assert trained.returncode == 0, trained.stderr[-3000:]
  table = trained.stdout.split("Validation by evaluation length")[1]
  assert "(alibi, trained at 16 tokens)" in table
  again = run_main("--config=configs/lm.py", f"--workdir={tmp_path}", "--config.mode=eval")
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.split("Validation by evaluation length")[1] == table
  assert "the run recorded in" in again.stderr
  # An explicit training field that contradicts the run is refused, naming it...
  refused = run_main("--config=configs/lm.py", f"--workdir={tmp_path}", "--config.mode=eval",
                     "--config.model.pe=rope")
  assert refused.returncode != 0
  assert 'model.pe: "alibi" (run) → "rope" (given)' in refused.stderr
  # ... and so is resuming it with another config.
  resumed = run_main("--config=configs/lm.py:tiny", f"--workdir={tmp_path}")
  assert resumed.returncode != 0
  assert 'model.pe: "alibi" (run) → "rope" (given)' in resumed.stderr
  assert "data.seq_len: 16 (run) → 32 (given)" in resumed.stderr
  # Evaluation options may differ.
  longer = run_main("--config=configs/lm.py", f"--workdir={tmp_path}", "--config.mode=eval",
                    "--config.eval.length_multipliers=(1,4)")
  assert longer.returncode == 0, longer.stderr[-3000:]
  assert "| 64 | 4 |" in longer.stdout


def test_sigterm_saves_and_exits_0(tmp_path):
  args = [sys.executable, "-m", "posjax.main", "--config=configs/lm.py:tiny",
          f"--workdir={tmp_path}", "--config.train.steps=100000", "--config.train.log_every=1"]
  process = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ))
  try:
    for line in process.stderr:  # wait until it trains
      if re.match(r"step +2/", line):
        break
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
  finally:
    process.kill()
  assert process.returncode == 0, err[-3000:]
  assert "stopped on SIGTERM" in err
  steps = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  assert len(steps) == 1 and int(steps[0]) >= 2


def test_an_algorithmic_run_trains_reports_and_evaluates_from_its_workdir(tmp_path):
  trained = run_main("--config=configs/algorithmic.py:parity,alibi,tiny", f"--workdir={tmp_path}",
                     "--config.train.steps=4", "--config.model.num_layers=1",
                     "--config.eval.lengths=(2,12)")
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert "parity, alibi (trained on input lengths 1..8)" in trained.stdout
  rows = (tmp_path / "algorithmic.csv").read_text().splitlines()
  assert len(rows) == 3 and rows[0].startswith("problem,scheme,family")
  # Evaluated from the workdir with another config file named: the run's record decides.
  again = run_main("--config=configs/lm.py", f"--workdir={tmp_path}", "--config.mode=eval")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "the run recorded in" in again.stderr and "(algorithmic on parity, alibi)" in again.stderr
  assert (tmp_path / "algorithmic.csv").read_text().splitlines() == rows
