"""The GPU benchmark scripts of experiments/bench, at toy sizes on the CPU: they are the only
code a GPU session runs, so they must not rot between sessions that have one."""

import csv
import importlib.util
import os

import pytest

from experiments.bench import __main__ as bench
from experiments.bench import check_gpu, triton_compile


def test_check_gpu_passes_at_toy_sizes():
  assert check_gpu.main(["--smoke"]) == 0


def test_bench_writes_every_table(tmp_path):
  bench.main(["--smoke", f"--out={tmp_path}"])
  for table in ("attention", "train", "decode"):
    with open(tmp_path / f"{table}.csv") as f:
      rows = list(csv.DictReader(f))
    assert rows and all(row["status"] == "ok" for row in rows), (table, rows)
  assert "fused" in (tmp_path / "tables.md").read_text()


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="needs Triton's compiler: pip install -e '.[bench]'")
def test_kernels_compile_for_an_h100(tmp_path):
  """Triton compiles the forward and both backward kernels for sm_90 from the modules JAX lowers,
  within its 255 registers per thread; without a bias nothing spills to local memory."""
  schemes = ("none", "alibi", "t5")
  assert triton_compile.main([f"--out={tmp_path}", f"--schemes={','.join(schemes)}",
                              "--head_dims=64"]) in (0, 1)
  with open(os.path.join(tmp_path, "triton_compile.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [(r["scheme"], r["kernel"]) for r in rows] == [
      (s, k) for s in schemes for k in triton_compile.KERNELS]
  for row in rows:
    assert row["status"] in ("ok", "spills"), row
    assert 0 < int(row["registers"]) <= 255
  assert all(row["status"] == "ok" for row in rows if row["scheme"] == "none")
