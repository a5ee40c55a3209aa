"""Speed benchmarks of the attention backends per positional scheme (see RESULTS.md).

  python -m experiments.bench --out=runs/bench                  # everything, GPU sizes
  python -m experiments.bench --out=runs/bench --only=attention --seq_lens=4096
  python -m experiments.bench --out=/tmp/bench --smoke          # toy sizes, any device

Writes `<out>/attention.csv`, `train.csv`, `decode.csv` and `tables.md` (rewritten after every
row), and prints the device. Arguments are plain argparse so the bench needs nothing beyond
jax, flax and optax.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from experiments.bench import attention, end_to_end, timing
from experiments.bench.report import Report

TRAIN_SCHEMES = ("rope", "nope", "alibi", "t5", "kerple_log", "sandwich", "fire")
BIAS_SCHEMES = ("alibi", "t5", "kerple_log", "sandwich", "fire")


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x]


def _names(text: str) -> list[str]:
  return [x for x in text.split(",") if x]


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m experiments.bench", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--smoke", action="store_true",
                      help="toy sizes and 1 timed iteration: checks that every path runs")
  parser.add_argument("--only", default="attention,train,decode",
                      help="comma-separated subset of attention,train,decode")
  parser.add_argument("--schemes", default=",".join(attention.SCHEMES),
                      help="attention table schemes ('none' = no bias)")
  parser.add_argument("--train_schemes", default=",".join(TRAIN_SCHEMES))
  parser.add_argument("--seq_lens", default="1024,4096,16384")
  parser.add_argument("--head_dims", default="64,128")
  parser.add_argument("--tokens", type=int, default=65536, help="B·L of the attention table")
  parser.add_argument("--width", type=int, default=768,
                      help="H·D of the attention table (H = width / D)")
  parser.add_argument("--modes", default="fwd,fwd+bwd")
  parser.add_argument("--train_batch", type=int, default=16)
  parser.add_argument("--decode_batches", default="1,32")
  parser.add_argument("--prompt_len", type=int, default=128)
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--iters", type=int, default=10)
  args = parser.parse_args(argv)
  if args.smoke:
    args.seq_lens, args.head_dims, args.tokens, args.width = "32,64", "16", 128, 32
    args.schemes, args.train_schemes = "none,t5,fire", "rope,t5"
    args.train_batch, args.decode_batches, args.prompt_len, args.new_tokens = 2, "1,2", 8, 4
    args.warmup, args.iters = 1, 1
  return args


def run_attention(args, report: Report) -> None:
  on_gpu = jax.default_backend() == "gpu"
  dtype = jnp.bfloat16 if on_gpu else jnp.float32
  implementation = "cudnn" if on_gpu else "xla"  # cuDNN exists only on NVIDIA GPUs
  for case in attention.cases(schemes=_names(args.schemes), seq_lens=_ints(args.seq_lens),
                              head_dims=_ints(args.head_dims), tokens=args.tokens,
                              width=args.width, modes=_names(args.modes)):
    report.add("attention", attention.run_case(case, dtype=dtype, implementation=implementation,
                                               warmup=args.warmup, iters=args.iters))


def run_end_to_end(args, report: Report, tables) -> None:
  size = end_to_end.SMOKE if args.smoke else end_to_end.GPT2_SMALL
  for scheme in _names(args.train_schemes):
    # `auto` is today's default (cuDNN with a materialized bias on a GPU); `fused` only serves
    # bias schemes and NoPE/RoPE, and is timed for the bias schemes.
    backends = ("auto", "fused") if scheme in BIAS_SCHEMES else ("auto",)
    for backend in backends:
      if "train" in tables:
        report.add("train", end_to_end.train_row(size, scheme, backend, batch=args.train_batch,
                                                 warmup=args.warmup, iters=args.iters))
      if "decode" in tables:
        for batch in _ints(args.decode_batches):
          report.add("decode", end_to_end.decode_row(
              size, scheme, backend, batch=batch, prompt_len=args.prompt_len,
              new_tokens=args.new_tokens, warmup=args.warmup, iters=args.iters))


def main(argv=None) -> None:
  args = parse_args(argv)
  device = timing.device_name()
  print("device:", device, flush=True)
  tables = set(_names(args.only))
  notes = []
  if args.smoke:
    notes.append("Smoke run (toy sizes): checks that the code runs; the numbers mean nothing.")
  if jax.default_backend() != "gpu":
    notes.append("Not a GPU: the `cudnn` rows run jax.nn.dot_product_attention with "
                 "implementation='xla', float32, and `fused` runs in Pallas interpret mode.")
  header = " ".join(notes) or None
  report = Report(args.out, device, header)
  if "attention" in tables:
    run_attention(args, report)
  if tables & {"train", "decode"}:
    run_end_to_end(args, report, tables)
  print(f"wrote {args.out}/tables.md", flush=True)


if __name__ == "__main__":
  main()
