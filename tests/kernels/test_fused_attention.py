"""The fused Pallas kernel (interpret mode on CPU) against the XLA reference with a materialized
bias: values and gradients for q, k, v and every learnable bias parameter."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import kernel_testing
from posjax import models
from posjax.kernels import ScoreMod, fused_attention, hoist
from posjax.nn import attention_core

B, L, H, G, D = 2, 40, 4, 2, 16  # L = 40 is padded to 48: three 16-wide tiles, one partial
BLOCK = 16
# Small option values so the tiny inputs reach every branch: T5's log-spaced buckets and the
# max_distance clamp, FIRE's threshold L on both sides of the query positions.
OPTIONS = {"t5": {"num_buckets": 8, "max_distance": 16}, "fire": {"threshold": 16.0},
           "sandwich": {"sandwich_dim": 16}}


def _inputs(dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (B, L, H, D), dtype)
  k = jax.random.normal(keys[1], (B, L, G, D), dtype)
  v = jax.random.normal(keys[2], (B, L, G, D), dtype)
  # Row 0: two packed documents then padding (segment 0); row 1: one document at an offset, as
  # after a KV cache, so positions are not array indices.
  segments = jnp.array([[1] * 15 + [2] * 20 + [0] * 5, [1] * L])
  positions = jnp.array([list(range(15)) + list(range(20)) + [0] * 5, list(range(7, 7 + L))])
  cotangent = jax.random.normal(keys[3], (B, L, H, D), jnp.float32)
  return q, k, v, positions, segments, cotangent


def _scheme(name, bidirectional):
  return kernel_testing.scheme_score_mod(name, bidirectional, options=OPTIONS, heads=H, head_dim=D)


def _fused(fn, q, k, v, params, positions, segments, causal):
  score_mod = None if fn is None else ScoreMod(fn, params)
  return fused_attention(q, k, v, q_pos_BQ=positions, k_pos_BK=positions, q_seg_BQ=segments,
                         k_seg_BK=segments, causal=causal, scale=0.25, score_mod=score_mod,
                         block_q=BLOCK, block_k=BLOCK)


@functools.partial(jax.jit, static_argnums=(0, 1, 8))
def _value_and_grads(attend, fn, q, k, v, params, positions, segments, causal, cotangent):
  f = lambda q, k, v, params: attend(fn, q, k, v, params, positions, segments, causal)
  out, vjp = jax.vjp(f, q, k, v, params)
  return out, vjp(cotangent.astype(out.dtype))


@pytest.mark.parametrize("name, causal", [
    (None, True), ("alibi", True), ("alibi", False), ("t5", True), ("t5", False),
    ("kerple_log", True), ("kerple_power", False), ("sandwich", True), ("fire", True),
    ("fire", False)])
def test_values_and_gradients_match_reference(name, causal):
  q, k, v, positions, segments, cotangent = _inputs()
  fn, params = _scheme(name, bidirectional=not causal)
  args = (fn, q, k, v, params, positions, segments, causal, cotangent)
  want, want_grads = _value_and_grads(kernel_testing.reference, *args)
  got, got_grads = _value_and_grads(_fused, *args)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)
  assert not np.any(np.asarray(got)[0, 35:])  # padding queries see no key: exact zeros
  names = ["q", "k", "v"] + [f"params[{p!r}]" for p in sorted(params)]  # tree.leaves order
  for label, g, w in zip(names, jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    # Relative to the largest entry; a gradient that is zero in exact arithmetic (FIRE's b2: a
    # per-head constant cancels in the softmax) is compared in absolute terms.
    tolerance = 2e-5 * max(1.0, float(np.max(np.abs(w))))
    np.testing.assert_allclose(g, w, atol=tolerance, rtol=0, err_msg=label)
  if params:  # the bias gradients are really exercised, not trivially zero
    assert all(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(got_grads[3]))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_forward_within_tolerance(dtype):
  q, k, v, positions, segments, _ = _inputs(dtype)
  fn, params = _scheme("t5", bidirectional=False)
  upcast = [x.astype(jnp.float32) for x in (q, k, v)]
  want = kernel_testing.reference(fn, *upcast, params, positions, segments, True)
  got = jax.jit(_fused, static_argnums=(0, 7))(fn, q, k, v, params, positions, segments, True)
  assert got.dtype == dtype
  np.testing.assert_allclose(got.astype(jnp.float32), want, atol=3e-2, rtol=3e-2)


def test_default_tiles_cover_short_inputs():
  q, k, v, positions, segments, _ = _inputs()
  fn, params = _scheme("alibi", bidirectional=False)
  want = kernel_testing.reference(fn, q, k, v, params, positions, segments, True)
  attend = jax.jit(lambda q, k, v: fused_attention(  # default tiles: one 64-wide tile
      q, k, v, q_pos_BQ=positions, k_pos_BK=positions, q_seg_BQ=segments, k_seg_BK=segments,
      causal=True, scale=0.25, score_mod=ScoreMod(fn, params)))
  got = attend(q, k, v)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)


def test_tile_sizes_must_be_powers_of_two():
  q, k, v, positions, _, _ = _inputs()
  with pytest.raises(ValueError, match="powers of two"):
    fused_attention(q, k, v, q_pos_BQ=positions, k_pos_BK=positions, causal=True, block_q=24)


@pytest.mark.parametrize("pe", ["fire"])
def test_decoder_with_fused_backend_equals_xla(pe):
  config = models.TransformerConfig(vocab_size=40, dim=32, num_layers=1, num_heads=4,
                                    num_kv_heads=2, mlp_dim=64, pe=pe, attention_backend="xla")
  reference = models.build("decoder", config)
  fused = models.build("decoder", config.replace(attention_backend="fused"))
  x = jax.random.randint(jax.random.key(0), (2, 11), 0, 40)
  forward = nnx.jit(lambda model, x: model(x))
  np.testing.assert_allclose(forward(fused, x), forward(reference, x), atol=2e-5, rtol=2e-5)


def test_kv_cache_decoding_with_fused_backend_equals_xla():
  """Prefill then one-token steps: one query against a partly filled cache (segment 0 slots)."""
  logits = {}
  for backend in ("xla", "fused"):
    config = models.TransformerConfig(vocab_size=40, dim=32, num_layers=1, num_heads=4,
                                      num_kv_heads=2, mlp_dim=64, pe="kerple_log",
                                      attention_backend=backend)
    model = models.build("decoder", config)
    model.init_cache(batch=2, max_len=20)
    decode = nnx.jit(lambda model, tokens: model(tokens, decode=True)[:, -1])
    steps = [decode(model, jax.random.randint(jax.random.key(0), (2, 7), 0, 40))]
    steps += [decode(model, jnp.full((2, 1), t, jnp.int32)) for t in (3, 5)]
    logits[backend] = np.stack(steps)
  np.testing.assert_allclose(logits["fused"], logits["xla"], atol=2e-5, rtol=2e-5)


def test_fused_backend_refuses_content_terms():
  q, k, v, positions, _, _ = _inputs()
  with pytest.raises(ValueError, match="fused attention backend"):
    attention_core.dot_product_attention(
        q, k, v, q_pos_BQ=positions, k_pos_BK=positions, causal=True, backend="fused",
        extra_fn=lambda q_blk, q_pos: jnp.zeros((B, H, L, L)))


def test_memory_grows_linearly_with_length():
  """XLA's memory analysis of the compiled forward+backward (interpret mode on CPU): the fused
  program's temporaries grow like L, far below one `[H, L, L]` float32 array."""
  fn, params = _scheme("t5", bidirectional=False)

  def temp_bytes(length):
    x = jnp.zeros((1, length, 2, 16))
    pos = jnp.arange(length)[None]
    loss = lambda q, k, v, p: jnp.sum(fused_attention(
        q, k, v, q_pos_BQ=pos, k_pos_BK=pos, causal=True, score_mod=ScoreMod(fn, p)))
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
    return grad.lower(x, x, x, params).compile().memory_analysis().temp_size_in_bytes

  short, long = temp_bytes(512), temp_bytes(2048)
  assert long < 6 * short  # 4x the length: 4x for linear memory, 16x for quadratic
  assert long < 2 * 2048 * 2048 * 4 / 4


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("name", ["alibi", "t5", "kerple_log", "kerple_power", "sandwich", "fire"])
def test_lowers_to_triton_for_gpu(name, bidirectional):
  """Cross-lowering for CUDA on this CPU machine (no GPU needed): forward, dq and dk/dv become
  three Triton kernels. This checks the Pallas Triton lowering only, not Triton's compiler. T5's
  table lookup is a `gather`, which that lowering lacks: `hoist` rewrites it."""
  fn, params = _scheme(name, bidirectional=bidirectional)
  positions = jnp.broadcast_to(jnp.arange(256)[None], (2, 256))
  loss = lambda q, k, v, p: jnp.sum(fused_attention(
      q, k, v, q_pos_BQ=positions, k_pos_BK=positions, causal=not bidirectional,
      score_mod=ScoreMod(fn, p), interpret=False).astype(jnp.float32))
  x = jax.ShapeDtypeStruct((2, 256, 4, 64), jnp.bfloat16)
  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
  text = grad.trace(x, x, x, params).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("__gpu$xla.gpu.triton") == 3


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("name", ["alibi", "t5", "kerple_log", "kerple_power", "sandwich", "fire"])
def test_kernel_inputs_are_per_head(name, bidirectional):
  """The split hands the kernels per-head values only, the same whatever the tile size: no
  constant broadcast to a tile (a tile-sized input, and a tile-sized gradient per program) and
  T5's table as head h's column."""
  fn, params = _scheme(name, bidirectional=bidirectional)
  shapes = {hoist.split(fn, params, num_heads=H, block_q=bq, block_k=bk)[0].shapes
            for bq, bk in [(16, 16), (64, 32)]}
  assert len(shapes) == 1
  (shapes,) = shapes
  assert all(np.prod(s, dtype=int) <= 32 for s in shapes), shapes
  if name == "t5":
    assert shapes == ((OPTIONS["t5"]["num_buckets"],),)
