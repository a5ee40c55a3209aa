"""Speed of the fused kernel's TPU (Mosaic) variant against XLA attention on a TPU.

  python -m experiments.bench.check_tpu --out=runs/bench/tpu     # TPU sizes (see RESULTS.md)
  python -m experiments.bench.check_tpu --out=/tmp/tpu --smoke   # toy sizes; on CPU the fused
                                                                 # rows run in TPU interpret mode

Correctness is `python -m experiments.bench.check_gpu --platform=tpu --dtypes=bfloat16`.

Backends, on the same bf16 inputs (q, k, v `[B, L, H, D]`, B·L tokens, positions 0..L-1):

  xla        `jax.nn.dot_product_attention(implementation="xla")`, plain causal: no cuDNN on a
             TPU, so XLA's own attention is the speed to match
  xla+bias   the same with the scheme's `[1, H, L, L]` bias materialized inside the timed function
  fused      `fused_attention(platform="tpu")`, the bias evaluated per tile

Columns as in `python -m experiments.bench` (`x_xla_causal`: time over plain XLA causal at the
same L, D and mode). Writes `<out>/attention_tpu.csv` and `<out>/tables.md` after every row.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

from experiments.bench import attention, timing
from experiments.bench.report import Report
from posjax.kernels import ScoreMod, fused_attention

SCHEMES = ("none", "alibi", "t5", "kerple_log", "sandwich", "fire")
BASELINES = {"cudnn": "xla", "cudnn+bias": "xla+bias"}  # attention.Case names, run with XLA


class TpuReport(Report):
  """One table, `attention_tpu`, with `x_xla_causal` = time over plain XLA causal."""

  COLUMNS = {"attention_tpu": ("scheme", "backend", "seq_len", "head_dim", "batch", "heads",
                               "mode", "ms", "tflops", "memory_mib", "x_xla_causal", "status")}

  def _decorated(self, table: str) -> list[dict]:
    rows = self.rows[table]
    base = {(r["seq_len"], r["head_dim"], r["mode"]): r["ms"] for r in rows
            if r["backend"] == "xla" and r["ms"]}
    ratio = lambda r: (r["ms"] / base[key] if r.get("ms") and (key := (
        r["seq_len"], r["head_dim"], r["mode"])) in base else None)
    return [dict(r, x_xla_causal=ratio(r)) for r in rows]


def _fused_row(case: attention.Case, *, dtype, warmup: int, iters: int) -> dict:
  positions = jnp.broadcast_to(jnp.arange(case.seq_len, dtype=jnp.int32)[None],
                               (case.batch, case.seq_len))

  def make_fn(score_mod):
    def f(q, k, v, params):
      mod = None if score_mod is None else ScoreMod(score_mod.fn, params)
      return fused_attention(q, k, v, q_pos_BQ=positions, k_pos_BK=positions,
                             causal=case.causal, score_mod=mod, platform="tpu")
    return f

  return attention.time_case(case, make_fn, dtype=dtype, warmup=warmup, iters=iters)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.bench.check_tpu",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--smoke", action="store_true", help="toy sizes, 1 timed iteration")
  parser.add_argument("--schemes", default=",".join(SCHEMES))
  parser.add_argument("--seq_lens", default="1024,4096")
  parser.add_argument("--head_dims", default="64,128")
  parser.add_argument("--tokens", type=int, default=65536, help="B·L")
  parser.add_argument("--width", type=int, default=768, help="H·D (H = width / D)")
  parser.add_argument("--modes", default="fwd,fwd+bwd")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--iters", type=int, default=10)
  args = parser.parse_args(argv)
  if args.smoke:
    args.seq_lens, args.head_dims, args.tokens, args.width = "64", "32", 128, 64
    args.schemes, args.warmup, args.iters = "none,t5", 1, 1
  device = timing.device_name()
  print("device:", device, flush=True)
  header = None
  if jax.default_backend() != "tpu":
    header = ("Not a TPU: `fused` runs in Pallas' TPU interpret mode and `xla` in float32 on "
              "this device; the numbers mean nothing.")
  report = TpuReport(args.out, device, header)
  dtype = jnp.bfloat16 if jax.default_backend() == "tpu" else jnp.float32
  ints = lambda text: [int(x) for x in text.split(",") if x]
  failed = 0
  for case in attention.cases(schemes=args.schemes.split(","), seq_lens=ints(args.seq_lens),
                              head_dims=ints(args.head_dims), tokens=args.tokens,
                              width=args.width, modes=args.modes.split(",")):
    if case.backend == "fused":
      row = _fused_row(case, dtype=dtype, warmup=args.warmup, iters=args.iters)
    else:
      row = attention.run_case(case, dtype=dtype, implementation="xla", warmup=args.warmup,
                               iters=args.iters)
      row["backend"] = BASELINES[case.backend]
    failed += row["status"] != "ok"
    report.add("attention_tpu", row)
  print(f"wrote {args.out}/tables.md", flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
