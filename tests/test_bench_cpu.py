"""`python -m experiments.bench.cpu` runs end to end at a toy length (its numbers mean nothing)."""

import csv

from experiments.bench import cpu


def test_cpu_bench_writes_its_table(tmp_path):
  cpu.main([f"--out={tmp_path}", "--lengths=32", "--kinds=train,eval", "--directions=causal",
            "--rounds=1", "--min_seconds=0", "--train_tokens=64", "--eval_tokens=64"])
  rows = list(csv.DictReader(open(tmp_path / "cpu.csv", encoding="utf-8")))
  assert [(r["kind"], r["backend"]) for r in rows] == [
      ("train", "xla"), ("train", "chunked"), ("eval", "xla"), ("eval", "chunked")]
  assert all(r["status"].startswith("ok") and float(r["ms"]) > 0 for r in rows)
  assert float(rows[1]["chunked/xla"]) > 0
  assert "| kind |" in (tmp_path / "cpu.md").read_text(encoding="utf-8")
