"""Evaluation by length (mode=eval), generation and a fine-tune from a checkpoint
(`train.init_from`) as 2 processes × 4 devices give the numbers of 1 process × 8 devices."""

from __future__ import annotations

import json
import re

import pytest

import multiprocess_testing as mp

pytestmark = pytest.mark.slow


def test_eval_mode_gives_the_single_process_numbers(one_process, two_processes, tmp_path):
  work = tmp_path / "work"
  mp.copy_run(two_processes / "work", work, keep_steps=[6])
  (work / "eval_by_length.md").unlink()
  mp.start(["--config=configs/lm.py", f"--workdir={work}", "--config.mode=eval"],
           tmp_path).check()
  for row_one, row_two in zip(mp.report_rows(one_process / "work"), mp.report_rows(work)):
    assert row_two == pytest.approx(row_one, rel=1e-4)


def _generations(text: str) -> list[str]:
  return re.findall(r"=== generation \d+/\d+ .*? ===\n(.*?)(?=\n=== generation|\Z)", text, re.S)


def test_generation_gives_the_single_process_text(two_processes, tmp_path):
  args = ["--config=configs/lm.py", f"--workdir={two_processes / 'work'}",
          "--config.mode=generate", "--config.generate.prompt=ROMEO:|JULIET:",
          "--config.generate.temperature=0", "--config.generate.max_new_tokens=24"]
  one = mp.single(args, tmp_path / "one")  # both only read the run
  two = mp.start(args, tmp_path / "two")
  one.check()
  two.check()
  expected = _generations(one.output())
  assert len(expected) == 2 and all(t.startswith(("ROMEO:", "JULIET:")) for t in expected)
  assert _generations(two.output(0)) == expected
  assert _generations(two.output(1)) == []  # printed once, by process 0


def test_fine_tuning_from_a_checkpoint_gives_the_single_process_numbers(tmp_path):
  pretrained = tmp_path / "mlm"
  mp.single(["--config=configs/mlm.py:tiny", f"--workdir={pretrained}", "--config.mode=train",
             "--config.train.steps=3"], tmp_path / "pretrain").check()
  # Without dropout: the 2-process global batch holds the same rows in another order (each
  # process's rows sit on its own devices), so dropout masks, drawn by position in the global
  # batch, would fall on other examples.
  args = ["--config=configs/finetune_cls.py:tiny", f"--config.train.init_from={pretrained}",
          "--config.train.log_every=1", "--config.model.dropout=0",
          "--config.eval.length_multipliers=(1,)"]
  one = mp.single([*args, f"--workdir={tmp_path / 'one'}"], tmp_path / "one_logs")
  two = mp.start([*args, f"--workdir={tmp_path / 'two'}"], tmp_path / "two_logs")
  one.check()
  two.check()
  assert "init_from" in two.output(1)
  losses_one, losses_two = mp.losses(tmp_path / "one"), mp.losses(tmp_path / "two")
  assert sorted(losses_one) == sorted(losses_two) == [1, 2, 3, 4, 5, 6]
  for step in losses_one:
    assert losses_two[step] == pytest.approx(losses_one[step], rel=1e-5), step
  results = [json.loads((tmp_path / run / "finetune_results.json").read_text())["results"]
             for run in ("one", "two")]
  assert [r["split"] for r in results[1]] == ["validation", "test"]
  for row_one, row_two in zip(*results):
    for key in ("loss", "accuracy", "macro_f1", "examples"):
      assert row_two[key] == pytest.approx(row_one[key], rel=1e-4), (row_one["split"], key)
