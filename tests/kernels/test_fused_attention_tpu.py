"""The fused kernel's TPU variant (`platform="tpu"`: Mosaic blocks of `[B, H, L, D]`), without a
TPU: values and gradients in Pallas' TPU interpret mode on CPU against the XLA reference with a
materialized bias, and forward + backward lowered for TPU (JAX's Pallas-to-Mosaic lowering,
which enforces Mosaic's block-shape rules; Mosaic's own compiler runs only on a TPU)."""

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernel_testing
from posjax import encodings
from posjax.kernels import ScoreMod, fused_attention, fused_by_default
from posjax.kernels import layout as layouts
from posjax.nn import attention_core

B, L, H, G, D = 2, 200, 4, 2, 32  # L = 200 is padded to 256: two 128-wide tiles, one partial
BLOCK = 128  # a multiple of 128, as a TPU wants for its lanes
SCHEMES = ["alibi", "t5", "kerple_log", "kerple_power", "sandwich", "fire"]
OPTIONS = {"t5": {"num_buckets": 8, "max_distance": 64}, "fire": {"threshold": 64.0},
           "sandwich": {"sandwich_dim": 16}}
# Two cases run by default; the rest of the matrix is marked slow (about 7 s each on CPU).
FAST = {("t5", True), ("fire", False)}


def _inputs(dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (B, L, H, D), dtype)
  k = jax.random.normal(keys[1], (B, L, G, D), dtype)
  v = jax.random.normal(keys[2], (B, L, G, D), dtype)
  # Row 0: two packed documents (the second starts in the first tile and ends in the second)
  # then padding; row 1: one document at an offset, as after a KV cache.
  segments = jnp.array([[1] * 70 + [2] * 110 + [0] * 20, [1] * L])
  positions = jnp.array([list(range(70)) + list(range(110)) + [0] * 20, list(range(7, 7 + L))])
  cotangent = jax.random.normal(keys[3], (B, L, H, D), jnp.float32)
  return q, k, v, positions, segments, cotangent


def _scheme(name, bidirectional, heads=H, head_dim=D):
  return kernel_testing.scheme_score_mod(name, bidirectional, options=OPTIONS, heads=heads, head_dim=head_dim)


def _tpu(fn, q, k, v, params, positions, segments, causal):
  score_mod = None if fn is None else ScoreMod(fn, params)
  return fused_attention(q, k, v, q_pos_BQ=positions, k_pos_BK=positions, q_seg_BQ=segments,
                         k_seg_BK=segments, causal=causal, scale=0.25, score_mod=score_mod,
                         block_q=BLOCK, block_k=BLOCK, platform="tpu")


@functools.partial(jax.jit, static_argnums=(0, 1, 8))
def _value_and_grads(attend, fn, q, k, v, params, positions, segments, causal, cotangent):
  f = lambda q, k, v, params: attend(fn, q, k, v, params, positions, segments, causal)
  out, vjp = jax.vjp(f, q, k, v, params)
  return out, vjp(cotangent.astype(out.dtype))


def _cases():
  for name in [None] + SCHEMES:
    for causal in (True, False):
      marks = () if (name, causal) in FAST else (pytest.mark.slow,)
      yield pytest.param(name, causal, marks=marks, id=f"{name}-{'causal' if causal else 'bidi'}")


@pytest.mark.parametrize("name, causal", list(_cases()))
def test_tpu_interpret_matches_reference(name, causal):
  """Pallas' TPU interpreter (`pltpu.InterpretParams`) runs the Mosaic variant on CPU."""
  q, k, v, positions, segments, cotangent = _inputs()
  fn, params = _scheme(name, bidirectional=not causal)
  args = (fn, q, k, v, params, positions, segments, causal, cotangent)
  want, want_grads = _value_and_grads(kernel_testing.reference, *args)
  got, got_grads = _value_and_grads(_tpu, *args)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)
  assert not np.any(np.asarray(got)[0, 180:])  # padding queries see no key: exact zeros
  names = ["q", "k", "v"] + [f"params[{p!r}]" for p in sorted(params)]  # tree.leaves order
  largest = lambda x: float(np.max(np.abs(x)))
  # A bias-parameter gradient is measured against the scheme's largest one: FIRE's b2 is zero in
  # exact arithmetic (a per-head constant cancels in the softmax), so only rounding remains.
  param_scale = max([largest(w) for w in jax.tree.leaves(want_grads[3])], default=0.0)
  for index, (label, g, w) in enumerate(
      zip(names, jax.tree.leaves(got_grads), jax.tree.leaves(want_grads))):
    tolerance = 2e-5 * max(1.0, largest(w) if index < 3 else param_scale)
    np.testing.assert_allclose(g, w, atol=tolerance, rtol=0, err_msg=label)
  if params:  # the bias gradients are really exercised, not trivially zero
    assert all(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(got_grads[3]))


@pytest.mark.slow
def test_tpu_interpret_short_input_and_half_precision():
  """Default tiles on a short input (one 64-wide tile, the whole padded length) in bf16."""
  q, k, v, positions, segments, _ = _inputs(jnp.bfloat16)
  q, k, v, positions, segments = (x[:, :40] for x in (q, k, v, positions, segments))
  fn, params = _scheme("kerple_log", bidirectional=False)
  want = attention_core.xla_attention(
      *(x.astype(jnp.float32) for x in (q, k, v)), q_pos_BQ=positions, k_pos_BK=positions,
      q_seg_BQ=segments, k_seg_BK=segments, causal=True, scale=0.25,
      extra_fn=lambda q_blk, q_pos: encodings.materialize_bias(fn, params, H, q_pos, positions))
  got = jax.jit(lambda q, k, v: fused_attention(
      q, k, v, q_pos_BQ=positions, k_pos_BK=positions, q_seg_BQ=segments, k_seg_BK=segments,
      causal=True, scale=0.25, score_mod=ScoreMod(fn, params), platform="tpu"))(q, k, v)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(jnp.float32), want, atol=3e-2, rtol=3e-2)


def _as_tpu(kind: str = "TPU v5 lite"):
  """Lowers as for a TPU of `kind`: some Pallas TPU lowering rules (e.g. `sign`, from the bias
  VJP) ask which TPU generation they target, which a CPU-only process cannot tell them."""
  if not hasattr(jax.sharding, "AbstractDevice"):
    return contextlib.nullcontext()
  device = jax.sharding.AbstractDevice(device_kind=kind, num_cores=1, platform="tpu")
  return jax.sharding.use_abstract_mesh(
      jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device))


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("name", [None] + SCHEMES)
def test_lowers_for_tpu(name, bidirectional):
  """Forward + backward for TPU, bf16, D = 64, GQA, without a TPU: three Mosaic kernels. The
  Pallas TPU lowering rejects blocks whose last two dimensions are neither (8, 128)-aligned nor
  whole, and primitives Mosaic lacks (e.g. a floating iota, a gather from a ref)."""
  fn, params = _scheme(name, bidirectional=bidirectional, head_dim=64)
  positions = jnp.broadcast_to(jnp.arange(256)[None], (2, 256))
  loss = lambda q, k, v, p: jnp.sum(fused_attention(
      q, k, v, q_pos_BQ=positions, k_pos_BK=positions, causal=not bidirectional,
      score_mod=None if fn is None else ScoreMod(fn, p), interpret=False,
      platform="tpu").astype(jnp.float32))
  q = jax.ShapeDtypeStruct((2, 256, H, 64), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((2, 256, G, 64), jnp.bfloat16)
  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
  with _as_tpu():
    text = grad.trace(q, kv, kv, params).lower(lowering_platforms=("tpu",)).as_text()
  assert text.count("tpu_custom_call") == 3


def test_platform_selection():
  assert layouts.for_platform(None).platform == "gpu"  # this CPU machine: the GPU layout
  assert layouts.for_platform("tpu").platform == "tpu"
  assert not fused_by_default()  # `auto` takes the fused kernel on a TPU only
  with pytest.raises(ValueError, match="'gpu' \\(Triton\\) or 'tpu'"):
    layouts.for_platform("rocm")


@pytest.mark.slow
def test_tpu_bench_commands_run_at_toy_sizes(tmp_path):
  """The TPU commands of experiments/bench/RESULTS.md, at toy sizes in TPU interpret mode."""
  from experiments.bench import check_gpu, check_tpu
  assert check_tpu.main([f"--out={tmp_path}", "--smoke"]) == 0
  assert "| t5 | fused |" in (tmp_path / "tables.md").read_text()
  assert check_gpu.main(["--smoke", "--platform=tpu"]) == 0
