"""The chunked backend (online softmax over key blocks, skipping hidden blocks) against xla:
values and gradients, for every kind of mask and every positional hook it serves."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from posjax.nn import attention_core
from posjax.nn.attention import Attention
from posjax.nn.positional import PositionalEncoding

H, D, CHUNK = 4, 8, 4
TOL = dict(atol=2e-5, rtol=2e-5)


def _contiguous(batch, length, start=0):
  return jnp.broadcast_to(jnp.arange(start, start + length), (batch, length))


def _masks():
  """(q_pos, k_pos, q_seg, k_seg) per case; queries and keys are 13 and 21 or 17 long."""
  ones = lambda b, n: jnp.ones((b, n), jnp.int32)
  packed_pos = jnp.array([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 0],
                          list(range(17))])
  packed_seg = jnp.array([[1] * 5 + [2] * 7 + [3] * 4 + [0], [1] * 13 + [0] * 4])
  randomized = jnp.sort(jax.random.choice(jax.random.key(3), 100, (2, 17), replace=False), -1)
  # A KV cache of 21 slots holding 17 tokens; the last 13 of them are the queries.
  cache_seg = jnp.concatenate([ones(2, 17), jnp.zeros((2, 4), jnp.int32)], axis=1)
  cache_pos = jnp.concatenate([_contiguous(2, 17, 5), jnp.zeros((2, 4), jnp.int32)], axis=1)
  return {
      "contiguous": (_contiguous(2, 17),) * 2 + (ones(2, 17),) * 2,
      "packed_and_padded": (packed_pos, packed_pos, packed_seg, packed_seg),
      "randomized": (randomized, randomized, ones(2, 17), ones(2, 17)),
      "kv_cache_offset": (_contiguous(2, 13, 9), cache_pos, ones(2, 13), cache_seg),
  }


def _extra_fn(k_pos_BK, with_content):
  """A bias of (head, q_pos, k_pos), plus a content term of the queries and keys."""

  def extra_fn(q_BQHD, q_pos_BQ, keys=None):
    k_pos, k = (k_pos_BK, None) if keys is None else (keys.pos_BK, keys.k_BKGD)
    head = jnp.arange(H)[None, :, None, None]
    bias = jnp.cos(0.3 * q_pos_BQ[:, None, :, None] - 0.5 * k_pos[:, None, None, :] + head)
    if not with_content:
      return bias
    k = extra_fn.k_BKGD if k is None else k
    return bias + 0.2 * jnp.einsum("bqhd,bkd->bhqk", jnp.tanh(q_BQHD), k.sum(2))

  return extra_fn


def _value_fn(k_pos_BK):
  """Linear in the probabilities, as Shaw's value term: Σ_j p_ij · w(k_pos_j - q_pos_i)."""

  def value_fn(probs_BHQK, q_pos_BQ, keys=None):
    k_pos = k_pos_BK if keys is None else keys.pos_BK
    weight_BQK = jnp.sin(0.1 * (k_pos[:, None, :] - q_pos_BQ[:, :, None]))
    return jnp.einsum("bhqk,bqk,d->bqhd", probs_BHQK, weight_BQK, jnp.arange(1.0, D + 1))

  return value_fn


def _attend(backend, q, k, v, q_pos, k_pos, q_seg, k_seg, *, causal, hooks):
  extra_fn = value_fn = None
  if "bias" in hooks or "content" in hooks:
    extra_fn = _extra_fn(k_pos, "content" in hooks)
    extra_fn.k_BKGD = k
  if "values" in hooks:
    value_fn = _value_fn(k_pos)
  return attention_core.dot_product_attention(
      q, k, v, q_pos_BQ=q_pos, k_pos_BK=k_pos, q_seg_BQ=q_seg, k_seg_BK=k_seg, causal=causal,
      extra_fn=extra_fn, value_fn=value_fn, backend=backend, chunk_size=CHUNK)


@functools.partial(jax.jit, static_argnames=("backend", "causal", "hooks"))
def _value_and_grads(q, k, v, masks, cotangent, *, backend, causal, hooks):
  def f(q, k, v):
    out = _attend(backend, q, k, v, *masks, causal=causal, hooks=hooks)
    real_BQ11 = (masks[2] != 0)[:, :, None, None]  # padding queries' outputs are unspecified
    return jnp.sum(jnp.where(real_BQ11, out * cotangent, 0.0)), out
  (_, out), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  return out, grads


ALL_HOOKS = ("bias", "content", "values")
CASES = [(case, causal, 2, ALL_HOOKS) for case in _masks() for causal in (True, False)] + [
    ("contiguous", True, H, ()), ("kv_cache_offset", True, 1, ()),
    ("packed_and_padded", True, H, ("bias",)), ("randomized", False, 1, ALL_HOOKS)]


@pytest.mark.parametrize("case, causal, kv_heads, hooks", CASES, ids=[
    f"{c}-{'causal' if causal else 'bidirectional'}-{g}kv-{'+'.join(h) or 'plain'}"
    for c, causal, g, h in CASES])
def test_chunked_matches_xla_values_and_gradients(case, causal, kv_heads, hooks):
  masks = _masks()[case]
  q_len, k_len = masks[0].shape[1], masks[1].shape[1]
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (2, q_len, H, D))
  k = jax.random.normal(keys[1], (2, k_len, kv_heads, D))
  v = jax.random.normal(keys[2], (2, k_len, kv_heads, D))
  cotangent = jax.random.normal(keys[3], (2, q_len, H, D))
  run = functools.partial(_value_and_grads, q, k, v, masks, cotangent, causal=causal,
                          hooks=hooks)
  out, grads = run(backend="chunked")
  expected_out, expected_grads = run(backend="xla")
  real = np.asarray(masks[2]) != 0
  np.testing.assert_allclose(np.asarray(out)[real], np.asarray(expected_out)[real], **TOL)
  for got, expected in zip(grads, expected_grads):
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, **TOL)


def test_padding_queries_get_zeros_and_finite_gradients():
  q_pos = _contiguous(1, 12)
  seg = jnp.array([[1] * 4 + [0] * 8])  # the last two query blocks are padding only
  q = jax.random.normal(jax.random.key(0), (1, 12, H, D))
  out, grads = _value_and_grads(q, q[:, :, :2], q[:, :, 2:], (q_pos, q_pos, seg, seg),
                                jnp.ones_like(q), backend="chunked", causal=True, hooks=())
  np.testing.assert_array_equal(out[:, 4:], 0.0)
  assert all(np.all(np.isfinite(g)) for g in grads)


def _visible(q_pos, k_pos, q_seg, k_seg, causal):
  blocks = lambda x: attention_core._blocks(x, CHUNK)  # pylint: disable=protected-access
  return np.asarray(attention_core._visible_blocks(  # pylint: disable=protected-access
      blocks(q_pos), blocks(q_seg), blocks(k_pos), blocks(k_seg), causal=causal))


def test_causal_skips_exactly_the_blocks_past_the_diagonal():
  q_pos, k_pos, q_seg, k_seg = _masks()["contiguous"]
  np.testing.assert_array_equal(_visible(q_pos, k_pos, q_seg, k_seg, True), np.tri(5, dtype=bool))
  assert _visible(q_pos, k_pos, q_seg, k_seg, False).all()
  # KV cache: queries at 9..21 see keys 5..21 (key blocks 0-4; block 5 holds empty slots only).
  q_pos, k_pos, q_seg, k_seg = _masks()["kv_cache_offset"]
  expected = np.array([[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0],
                       [1, 1, 1, 1, 1, 0]], bool)
  np.testing.assert_array_equal(_visible(q_pos, k_pos, q_seg, k_seg, True), expected)


def test_a_block_is_skipped_only_if_its_mask_is_empty():
  for q_pos, k_pos, q_seg, k_seg in _masks().values():
    for causal in (True, False):
      mask = np.asarray(attention_core.attention_mask(q_pos, k_pos, q_seg, k_seg, causal=causal))
      mask = mask[:, 0]  # [B, Q, K], padded to whole blocks next
      mask = np.pad(mask, [(0, 0), (0, -mask.shape[1] % CHUNK), (0, -mask.shape[2] % CHUNK)])
      b, nq, nk = mask.shape[0], mask.shape[1] // CHUNK, mask.shape[2] // CHUNK
      any_visible = mask.reshape(b, nq, CHUNK, nk, CHUNK).any(axis=(0, 2, 4))
      visible = _visible(q_pos, k_pos, q_seg, k_seg, causal)
      assert np.all(visible[any_visible])  # never skips a block with a visible pair


SHAW_VALUES = {"max_distance": 3, "values": True}


def _scheme(pe, options=None, causal=True, slow=False):
  return pytest.param(pe, options, causal, id=f"{pe}-{'causal' if causal else 'bidirectional'}",
                      marks=[pytest.mark.slow] if slow else [])


# The fast tier keeps one scheme per kind of hook (rotate, T5's all-heads bias, content, values).
SCHEMES = [_scheme("rope"), _scheme("t5"), _scheme("transformer_xl"), _scheme("shaw", SHAW_VALUES)]
SCHEMES += [_scheme(pe, slow=True) for pe in ("xpos", "alibi", "kerple_log", "sandwich", "fire",
                                              "nope")]
SCHEMES += [_scheme("shaw", SHAW_VALUES, causal=False, slow=True),
            _scheme("t5", causal=False, slow=True),
            _scheme("transformer_xl", causal=False, slow=True)]


@pytest.mark.parametrize("pe, options, causal", SCHEMES)
def test_every_scheme_through_the_layer(pe, options, causal):
  """The layer with chunked attention equals it with xla: output and every parameter's grad."""
  positions, _, segments, _ = _masks()["packed_and_padded"]
  rngs = nnx.Rngs(0)
  positional = None if pe == "nope" else PositionalEncoding(
      pe, num_heads=H, head_dim=D, dim=16, options=options,
      context={"num_heads": H, "bidirectional": not causal}, rngs=rngs)
  with nnx.use_eager_sharding(False):
    attn = Attention(dim=16, num_heads=H, num_kv_heads=2, head_dim=D, causal=causal,
                     positional=positional, backend="xla", chunk_size=CHUNK, rngs=rngs)
  x = jax.random.normal(jax.random.key(1), (2, positions.shape[1], 16))
  real = (segments != 0)[..., None]

  def loss(attn, backend):
    attn.backend = backend
    out = attn(x, positions_BQ=positions, segment_ids_BQ=segments)
    return jnp.sum(jnp.where(real, jnp.sin(out), 0.0)), out

  grad_fn = nnx.jit(nnx.grad(loss, has_aux=True), static_argnums=1)
  results = {b: grad_fn(attn, b) for b in ("xla", "chunked")}
  (grads, out), (expected_grads, expected_out) = results["chunked"], results["xla"]
  np.testing.assert_allclose(jnp.where(real, out, 0), jnp.where(real, expected_out, 0), **TOL)
  jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, **TOL), nnx.state(grads),
               nnx.state(expected_grads))
