"""CPU: the default decoder's train step and evaluation by length, per attention backend.

  python -m experiments.bench.cpu --out=runs/bench_cpu
  python -m experiments.bench.cpu --out=/tmp/cpu --lengths=1024,8192 --kinds=eval --rounds=3

The model is `configs/lm.py`'s default (a 1.8M-parameter RoPE decoder over bytes); "bidirectional"
is the same stack as an MLM encoder. For each length L, each direction (causal, bidirectional) and
each backend (xla, chunked) it times

  eval   the jitted loss of a batch of max(1, eval_tokens / L) rows (what evaluation by length
         runs: `eval.batch_size × data.seq_len` = 1,024 tokens per batch by default);
  train  one jitted AdamW step (loss, gradients, update; state donated) on max(1, train_tokens / L)
         rows (the default job trains on 16 × 128 = 2,048 tokens per step);

in interleaved rounds (every function once per round, after one compile and a warm-up call), and
reports the median over rounds of the mean time per call (calls repeat within a round until
`min_seconds`), `cpu_ms` the same for this process's CPU time (all threads; less sensitive to other
processes than wall time on a shared machine), and XLA's compile-time estimate of the temporaries
(`temp_MiB`). `chunked/xla` is
the ratio of medians at the same (kind, direction, L); `auto` names what the `auto` backend picks.
Other processes on the machine add noise: compare rows from one run, and repeat where it matters.
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments.bench import report as report_lib
from experiments.bench import timing
from posjax import configs, models
from posjax.nn import attention_core
from posjax.run.config import model_config

DIRECTIONS = {"causal": "decoder", "bidirectional": "mlm"}
BACKENDS = ("xla", "chunked")
COLUMNS = ("kind", "direction", "seq_len", "batch", "backend", "auto", "ms", "cpu_ms",
           "ms_per_ktok", "chunked/xla", "temp_MiB", "status")


def default_model_config(backend: str, pe: str = "rope") -> models.TransformerConfig:
  """`configs/lm.py`'s model with a byte vocabulary and the given attention backend."""
  cfg = model_config(configs.load_config("configs/lm.py"), vocab_size=256)
  return cfg.replace(pe=pe, pe_options={}, attention_backend=backend)


def _loss_fn(graphdef, rest):
  def loss(params, tokens_BL, targets_BL):
    logits = nnx.merge(graphdef, params, rest)(tokens_BL)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), targets_BL).mean()
  return loss


def build(kind: str, direction: str, backend: str, seq_len: int, batch: int, pe: str):
  """(compiled function, its first arguments, whether it threads a state): AOT-compiled once."""
  model = models.build(DIRECTIONS[direction], default_model_config(backend, pe))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  loss = _loss_fn(graphdef, rest)
  rng = np.random.default_rng(seq_len)
  tokens = jnp.asarray(rng.integers(0, 256, (batch, seq_len)), jnp.int32)
  targets = jnp.asarray(rng.integers(0, 256, (batch, seq_len)), jnp.int32)
  if kind == "eval":
    return jax.jit(loss), (params, tokens, targets), False
  tx = optax.adamw(3e-3, weight_decay=0.1)

  @functools.partial(jax.jit, donate_argnums=(0,))
  def step(state, tokens, targets):
    params, opt_state = state
    grads = jax.grad(loss)(params, tokens, targets)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return step, ((params, tx.init(params)), tokens, targets), True


class Timed:
  """One benchmarked function: compiled ahead of time, then timed a round at a time."""

  def __init__(self, row: dict, jitted, args, threads_state: bool):
    self.row, self.args, self.threads_state = row, list(args), threads_state
    self.times, self.cpu_times = [], []
    compiled = jitted.lower(*self.args).compile()
    analysis = compiled.memory_analysis()
    row["temp_MiB"] = None if analysis is None else analysis.temp_size_in_bytes / 2**20
    self.fn = compiled
    self.call()  # warm-up

  def call(self):
    out = jax.block_until_ready(self.fn(*self.args))
    if self.threads_state:
      self.args[0] = out

  def round(self, min_seconds: float) -> None:
    calls, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while True:
      self.call()
      calls += 1
      elapsed = time.perf_counter() - start
      if elapsed >= min_seconds:
        break
    self.times.append(elapsed / calls)
    self.cpu_times.append((time.process_time() - cpu_start) / calls)


def measure_length(seq_len: int, args) -> list[dict]:
  """Every (kind, direction, backend) at one length, timed in interleaved rounds."""
  timed = []
  for kind in args.kinds:
    if kind == "train" and seq_len > args.max_train_len:
      continue
    tokens = args.eval_tokens if kind == "eval" else args.train_tokens
    batch = max(1, tokens // seq_len)
    auto = attention_core.resolve_backend("auto", q_len=seq_len, k_len=seq_len,
                                          dtype=jnp.float32)
    for direction in args.directions:
      for backend in args.backends:
        row = dict(kind=kind, direction=direction, seq_len=seq_len, batch=batch, backend=backend,
                   auto=auto)
        try:
          timed.append(Timed(row, *build(kind, direction, backend, seq_len, batch, args.pe)))
        except Exception as error:  # pylint: disable=broad-except
          print(f"  {row}: {type(error).__name__}: {error}", flush=True)
  for _ in range(args.rounds):
    for t in timed:
      t.round(args.min_seconds)
  rows = []
  for t in timed:
    ms = 1e3 * statistics.median(t.times)
    rows.append(dict(t.row, ms=ms, cpu_ms=1e3 * statistics.median(t.cpu_times),
                     ms_per_ktok=ms * 1e3 / (t.row["batch"] * seq_len),
                     status=f"ok ({len(t.times)} rounds, spread {_spread(t.times):.0%})"))
  return with_ratios(rows)


def _spread(times) -> float:
  return (max(times) - min(times)) / statistics.median(times)


def with_ratios(rows: list[dict]) -> list[dict]:
  """`chunked/xla`: each row's time over the xla row's of the same (kind, direction, L)."""
  xla = {(r["kind"], r["direction"], r["seq_len"]): r["ms"] for r in rows
         if r["backend"] == "xla"}
  return [dict(r, **{"chunked/xla": r["ms"] / xla[key] if (key := (
      r["kind"], r["direction"], r["seq_len"])) in xla else None}) for r in rows]


def _list(text: str, kind=str) -> list:
  return [kind(x) for x in text.split(",") if x]


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m experiments.bench.cpu", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="output directory (cpu.csv, cpu.md)")
  parser.add_argument("--lengths", default="128,256,512,1024,2048,4096,8192")
  parser.add_argument("--kinds", default="train,eval")
  parser.add_argument("--directions", default="causal,bidirectional")
  parser.add_argument("--backends", default=",".join(BACKENDS))
  parser.add_argument("--pe", default="rope", help="positional scheme of the model")
  parser.add_argument("--max_train_len", type=int, default=2048,
                      help="train rows only up to this length (xla's backward at 8k needs GiBs)")
  parser.add_argument("--train_tokens", type=int, default=2048)
  parser.add_argument("--eval_tokens", type=int, default=1024)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--min_seconds", type=float, default=0.3,
                      help="calls repeat within a round until this much time has passed")
  args = parser.parse_args(argv)
  args.lengths = _list(args.lengths, int)
  args.kinds, args.directions = _list(args.kinds), _list(args.directions)
  args.backends = _list(args.backends)
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  device = timing.device_name()
  print(f"device: {device}, {os.cpu_count()} CPUs", flush=True)
  os.makedirs(args.out, exist_ok=True)
  rows = []
  for seq_len in args.lengths:
    rows += measure_length(seq_len, args)
    table = report_lib.markdown_table(rows, COLUMNS)
    with open(os.path.join(args.out, "cpu.csv"), "w", newline="", encoding="utf-8") as f:
      writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
      writer.writeheader()
      writer.writerows(rows)
    with open(os.path.join(args.out, "cpu.md"), "w", encoding="utf-8") as f:
      f.write(f"device: {device}, {os.cpu_count()} CPUs\n\n{table}\n")
    print(f"L={seq_len} done", flush=True)
  print(table, flush=True)


if __name__ == "__main__":
  main()
