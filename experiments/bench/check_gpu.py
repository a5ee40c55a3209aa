"""Correctness of the fused kernel on the device at hand: prints max errors against the reference.

  python -m experiments.bench.check_gpu           # GPU sizes: L=1024, D=64 and 128, bf16 + fp16
  python -m experiments.bench.check_gpu --smoke   # toy sizes (CPU: Pallas interpret mode)
  python -m experiments.bench.check_gpu --platform=tpu   # the TPU (Mosaic) variant; on CPU with
                                                         # --smoke, in Pallas' TPU interpret mode

For every scheme, causal and bidirectional, the fused kernel runs in half precision on packed
inputs with padding and grouped-query heads; the reference is `xla_attention` with the bias
materialized, in float32 on the same (half-precision-rounded) inputs. Errors are max |fused -
reference| over max |reference|, for the output and the gradients of q, k, v and every bias
parameter. A configuration that raises (e.g. a score_mod the Triton lowering cannot compile) is
reported and counted as a failure. Exits 1 if any error exceeds `--tolerance` or anything raised.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench import attention, timing
from posjax import encodings
from posjax.kernels import ScoreMod, fused_attention
from posjax.nn import attention_core

SCHEMES = ("none", "alibi", "t5", "kerple_log", "kerple_power", "sandwich", "fire")


def _inputs(batch, seq_len, heads, groups, head_dim, dtype):
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (batch, seq_len, heads, head_dim), dtype)
  k = jax.random.normal(keys[1], (batch, seq_len, groups, head_dim), dtype)
  v = jax.random.normal(keys[2], (batch, seq_len, groups, head_dim), dtype)
  # Row 0 holds two packed documents and trailing padding; the others one document.
  cut, pad = seq_len // 3, seq_len - seq_len // 8
  index = np.arange(seq_len)
  segments = np.ones((batch, seq_len), np.int32)
  segments[0] = np.where(index < cut, 1, np.where(index < pad, 2, 0))
  positions = np.tile(index, (batch, 1)).astype(np.int32)
  positions[0] = np.where(index < cut, index, index - cut)
  # Rounded to the input dtype, so the float32 reference sees the same output cotangent.
  cotangent = jax.random.normal(keys[3], q.shape, dtype).astype(jnp.float32)
  return q, k, v, jnp.asarray(positions), jnp.asarray(segments), cotangent


def _errors(scheme, causal, dtype, *, batch, seq_len, heads, groups, head_dim, platform=None):
  score_mod = attention.score_mod_of(scheme, heads, head_dim, causal)
  params = {} if score_mod is None else score_mod.params
  q, k, v, positions, segments, cotangent = _inputs(batch, seq_len, heads, groups, head_dim,
                                                    dtype)
  common = dict(q_pos_BQ=positions, k_pos_BK=positions, q_seg_BQ=segments, k_seg_BK=segments,
                causal=causal)

  def fused(q, k, v, params):
    mod = None if score_mod is None else ScoreMod(score_mod.fn, params)
    return fused_attention(q, k, v, score_mod=mod, platform=platform, **common)

  def reference(q, k, v, params):
    extra_fn = None
    if score_mod is not None:
      extra_fn = lambda q_blk, q_pos: encodings.materialize_bias(score_mod.fn, params, heads,
                                                                 q_pos, positions)
    return attention_core.xla_attention(q, k, v, scale=head_dim**-0.5, extra_fn=extra_fn,
                                        **common)

  def value_and_grads(f, *args):
    out, vjp = jax.vjp(f, *args)
    return out, vjp(cotangent.astype(out.dtype))

  got = jax.jit(lambda *a: value_and_grads(fused, *a))(q, k, v, params)
  upcast = [x.astype(jnp.float32) for x in (q, k, v)]
  with jax.default_matmul_precision("highest"):
    want = jax.jit(lambda *a: value_and_grads(reference, *a))(*upcast, params)
  names = ["out", "dq", "dk", "dv"] + [f"d{name}" for name in sorted(params)]
  flat_got = [got[0]] + jax.tree.leaves(got[1])
  flat_want = [want[0]] + jax.tree.leaves(want[1])
  # A bias-parameter gradient is measured against the largest bias-parameter gradient of the
  # scheme, since some are zero in exact arithmetic (FIRE's b2: a per-head constant cancels in
  # the softmax) and only rounding remains.
  largest = lambda x: float(np.max(np.abs(np.asarray(x, np.float32))))
  param_scale = max([largest(w) for w in flat_want[4:]], default=0.0)
  errors = {}
  for index, (name, g, w) in enumerate(zip(names, flat_got, flat_want)):
    scale = largest(w) if index < 4 else param_scale
    errors[name] = largest(np.asarray(g, np.float32) - np.asarray(w, np.float32)) / max(scale,
                                                                                      1e-6)
  return errors


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.bench.check_gpu")
  parser.add_argument("--smoke", action="store_true")
  parser.add_argument("--seq_len", type=int, default=1024)
  parser.add_argument("--head_dims", default="64,128")
  parser.add_argument("--dtypes", default="bfloat16,float16")
  parser.add_argument("--schemes", default=",".join(SCHEMES))
  parser.add_argument("--tolerance", type=float, default=3e-2)
  parser.add_argument("--platform", default=None, choices=("gpu", "tpu"),
                      help="the kernel variant (default: this device's; gpu off GPU and TPU)")
  args = parser.parse_args(argv)
  shape = dict(batch=2, seq_len=args.seq_len, heads=8, groups=4)
  head_dims = [int(d) for d in args.head_dims.split(",")]
  dtypes, schemes = args.dtypes.split(","), args.schemes.split(",")
  if args.smoke:
    shape = dict(batch=2, seq_len=48, heads=4, groups=2)
    head_dims, dtypes, schemes = [16], ["bfloat16"], ["none", "t5", "fire"]
  print("device:", timing.device_name(), "| kernel variant:", args.platform or "this device's",
        flush=True)
  worst, failed = 0.0, []
  for dtype in dtypes:
    for head_dim in head_dims:
      for scheme in schemes:
        for causal in (True, False):
          label = f"{dtype:8s} D={head_dim:3d} {scheme:12s} causal={causal!s:5s}"
          try:
            errors = _errors(scheme, causal, jnp.dtype(dtype), head_dim=head_dim,
                             platform=args.platform, **shape)
          except Exception as error:  # pylint: disable=broad-except
            failed.append(label)
            print(f"{label}  ERROR {type(error).__name__}: {str(error).splitlines()[0][:160]}",
                  flush=True)
            continue
          worst = max(worst, max(errors.values()))
          listed = "  ".join(f"{k}={v:.2e}" for k, v in errors.items())
          print(f"{label}  {listed}", flush=True)
  verdict = "PASS" if worst <= args.tolerance and not failed else "FAIL"
  print(f"{verdict}: worst relative error {worst:.2e} (tolerance {args.tolerance:.0e}); "
        f"{len(failed)} configuration(s) raised")
  return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
  sys.exit(main())
