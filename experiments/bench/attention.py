"""Attention alone: forward and forward+backward time, TFLOP/s and memory per scheme and backend.

Backends, all on the same inputs (q, k, v `[B, L, H, D]`, B·L tokens, positions 0..L-1):

  cudnn       `jax.nn.dot_product_attention`, plain causal, no bias: the speed to match
  cudnn+bias  the same with the scheme's bias materialized (`[1, H, L, L]`, built inside the timed
              function so its cost, and the bias-parameter gradient through it, are counted)
  fused       `posjax.kernels.fused_attention`, the bias evaluated per tile

FLOPs follow the FlashAttention-2 convention: forward 4·B·H·L²·D, halved when causal; forward +
backward 3.5× the forward (the backward does 2.5× the forward's matmul work). Memory is the
compiled program's temporaries plus outputs (XLA's memory analysis), not the inputs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from experiments.bench import timing
from posjax import encodings
from posjax.kernels import ScoreMod, fused_attention

SCHEMES = ("none", "alibi", "t5", "kerple_log", "sandwich", "fire")


@dataclasses.dataclass(frozen=True)
class Case:
  scheme: str
  backend: str       # cudnn, cudnn+bias, fused
  seq_len: int
  head_dim: int
  batch: int
  heads: int
  mode: str          # fwd, fwd+bwd
  causal: bool = True

  @property
  def flops(self) -> float:
    forward = 4.0 * self.batch * self.heads * self.seq_len**2 * self.head_dim
    forward *= 0.5 if self.causal else 1.0
    return forward * (3.5 if self.mode == "fwd+bwd" else 1.0)


def score_mod_of(scheme: str, heads: int, head_dim: int, causal: bool) -> Optional[ScoreMod]:
  """The scheme's bias hook with its options bound and freshly initialized parameters."""
  if scheme == "none":
    return None
  spec = encodings.get(scheme)
  overrides = {"bidirectional": not causal} if "bidirectional" in spec.defaults else {}
  if "num_heads" in spec.defaults:
    overrides["num_heads"] = heads
  options = spec.options(**overrides)
  params = {}
  if spec.init is not None:
    params = spec.init(jax.random.key(1), num_heads=heads, head_dim=head_dim,
                       dim=heads * head_dim, **options)
  return ScoreMod(functools.partial(spec.score_mod, **options), params)


def attention_fn(case: Case, score_mod: Optional[ScoreMod], implementation: str):
  """`f(q, k, v, params) -> out` for the case's backend."""
  positions = jnp.arange(case.seq_len, dtype=jnp.int32)[None]

  def cudnn(q, k, v, params):
    bias = None
    if case.backend == "cudnn+bias":
      bias = encodings.materialize_bias(score_mod.fn, params, case.heads, positions, positions)
      bias = bias.astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=case.causal,
                                        implementation=implementation)

  def fused(q, k, v, params):
    mod = None if score_mod is None else ScoreMod(score_mod.fn, params)
    pos = jnp.broadcast_to(positions, (case.batch, case.seq_len))
    return fused_attention(q, k, v, q_pos_BQ=pos, k_pos_BK=pos, causal=case.causal,
                           score_mod=mod)

  return fused if case.backend == "fused" else cudnn


def run_case(case: Case, *, dtype, implementation: str, warmup: int, iters: int) -> dict:
  """One timed row of `implementation`; see `time_case`."""
  return time_case(case, lambda score_mod: attention_fn(case, score_mod, implementation),
                   dtype=dtype, warmup=warmup, iters=iters)


def time_case(case: Case, make_fn, *, dtype, warmup: int, iters: int) -> dict:
  """One timed row of `make_fn(score_mod) -> f(q, k, v, params)` (forward, or its gradient for
  mode "fwd+bwd"); an error (out of memory, unsupported shape) becomes the row's status."""
  row = dataclasses.asdict(case)
  try:
    score_mod = score_mod_of(case.scheme, case.heads, case.head_dim, case.causal)
    f = make_fn(score_mod)
    params = {} if score_mod is None else score_mod.params
    keys = jax.random.split(jax.random.key(0), 3)
    shape = (case.batch, case.seq_len, case.heads, case.head_dim)
    q, k, v = (jax.random.normal(key, shape, dtype) for key in keys)
    if case.mode == "fwd":
      jitted = jax.jit(f)
    else:
      loss = lambda q, k, v, p: jnp.sum(f(q, k, v, p).astype(jnp.float32))
      jitted = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
    memory = timing.compiled_bytes(jitted, q, k, v, params)
    seconds = timing.median_seconds(jitted, q, k, v, params, warmup=warmup, iters=iters)
    row.update(ms=1e3 * seconds, tflops=case.flops / seconds / 1e12,
               memory_mib=None if memory is None else memory / 2**20, status="ok")
  except Exception as error:  # pylint: disable=broad-except
    row.update(ms=None, tflops=None, memory_mib=None,
               status=f"error: {type(error).__name__}: {str(error).splitlines()[0][:160]}")
  return row


def cases(*, schemes, seq_lens, head_dims, tokens: int, width: int, modes):
  """Plain cuDNN once per (L, D, mode), then cuDNN with the bias and fused for every scheme."""
  for seq_len in seq_lens:
    for head_dim in head_dims:
      batch, heads = max(1, tokens // seq_len), max(1, width // head_dim)
      for mode in modes:
        common = dict(seq_len=seq_len, head_dim=head_dim, batch=batch, heads=heads, mode=mode)
        yield Case(scheme="none", backend="cudnn", **common)
        for scheme in schemes:
          if scheme != "none":
            yield Case(scheme=scheme, backend="cudnn+bias", **common)
          yield Case(scheme=scheme, backend="fused", **common)
