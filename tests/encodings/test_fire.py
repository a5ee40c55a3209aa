"""FIRE against its formula worked out with Python's math module and a numpy MLP."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax.encodings import fire
from posjax.encodings.bias import materialize_bias

H, WIDTH = 3, 8
Q_POS = np.array([[0, 1, 2], [7, 600, 2000]], np.int32)
K_POS = np.array([[0, 1, 2, 3, 4], [0, 5, 550, 1999, 2001]], np.int32)


@functools.partial(jax.jit, static_argnames=("dtype",))
def _params(dtype=jnp.float32):
  return fire.fire_init(jax.random.key(0), num_heads=H, head_dim=8, dim=24, dtype=dtype,
                        mlp_width=WIDTH)


@functools.partial(jax.jit, static_argnames=("bidirectional",))
def _bias(params, q_pos=Q_POS, k_pos=K_POS, bidirectional=False):
  return materialize_bias(fire.fire_bias, params, H, q_pos, k_pos, bidirectional=bidirectional)


_input = jax.jit(fire.fire_input, static_argnames=("bidirectional",))


def _reference(params, i, j, bidirectional):
  """b(i, j) = f(ψ(i - j) / ψ(max(L, i))), ψ(x) = log(c x + 1), from the paper, per head."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  c, limit = abs(float(p["c"])), abs(float(p["L_multiplier"])) * fire.DEFAULT_THRESHOLD
  psi = lambda x: math.log(c * x + 1)
  if bidirectional:
    x = psi(abs(i - j)) / (psi(max(limit, i, j)) + 1e-6)
  else:
    x = psi(max(i - j, 0)) / (psi(max(limit, i)) + 1e-6)
  hidden = np.maximum(p["w1"] * x + p["b1"], 0.0)
  return hidden @ p["w2"] + p["b2"]


def test_bias_matches_the_paper_formula():
  params = dict(_params(), c=jnp.float32(0.3), L_multiplier=jnp.float32(1.2))
  for bidirectional in (False, True):
    bias = np.asarray(_bias(params, bidirectional=bidirectional))
    assert bias.shape == (2, H, 3, 5) and bias.dtype == np.float32
    for b in range(2):
      for i, q in enumerate(Q_POS[b]):
        for j, k in enumerate(K_POS[b]):
          np.testing.assert_allclose(bias[b, :, i, j],
                                     _reference(params, int(q), int(k), bidirectional),
                                     rtol=1e-5, atol=1e-5)


def test_jitted_bias_at_training_sizes():
  """8 heads, 128 positions, the default MLP width: the shapes at which XLA:CPU's YNN fusion in
  jaxlib 0.10.2 miscompiled this bias (jax-ml/jax#39103; posjax turns that fusion off)."""
  heads, length = 8, 128
  params = fire.fire_init(jax.random.key(3), num_heads=heads, head_dim=8, dim=64)
  positions = np.arange(length)[None]
  bias = np.asarray(jax.jit(lambda p: materialize_bias(fire.fire_bias, p, heads, positions,
                                                       positions))(params))[0]
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  c, limit = abs(float(p["c"])), abs(float(p["L_multiplier"])) * fire.DEFAULT_THRESHOLD
  i, j = np.arange(length)[:, None], np.arange(length)[None, :]
  x = np.log(c * np.maximum(i - j, 0) + 1) / (np.log(c * np.maximum(limit, i) + 1) + 1e-6)
  hidden = np.maximum(x[..., None] * p["w1"] + p["b1"], 0.0)       # [Q, K, width]
  reference = np.moveaxis(hidden @ p["w2"] + p["b2"], -1, 0)       # [H, Q, K]
  np.testing.assert_allclose(bias, reference, rtol=1e-4, atol=1e-5)


def test_mlp_input_is_in_unit_interval_with_progressive_interpolation():
  params = _params()
  q = np.arange(0, 5000, 37, dtype=np.int32)[:, None]
  k = np.arange(0, 5000, 41, dtype=np.int32)[None, :]
  for bidirectional in (False, True):
    for c, multiplier in ((0.1, 1.0), (-2.0, 0.01), (5e-4, 3.0)):
      p = dict(params, c=jnp.float32(c), L_multiplier=jnp.float32(multiplier))
      x = np.asarray(_input(p, q, k, bidirectional=bidirectional))
      assert np.all(x >= 0) and np.all(x <= 1)
      if not bidirectional:
        # Future keys (j > i, hidden by the causal mask) sit at the diagonal's input, 0.
        assert np.all(x[np.broadcast_to(k > q, x.shape)] == 0)
  # Below the threshold L = 512 the normalizer is ψ(L); beyond it the query position itself, so
  # the first key of a long sequence always maps to (almost) 1.
  x = np.asarray(_input(params, np.array([100, 512, 4000]), np.array([0, 0, 0])))
  psi = lambda v: math.log(0.1 * v + 1)
  np.testing.assert_allclose(x, [psi(100) / psi(512), 1.0, 1.0], rtol=1e-5)


def test_causal_future_keys_get_the_diagonal_value_and_bidirectional_is_symmetric():
  params = _params()
  positions = np.array([[0, 3, 9, 600, 601]], np.int32)
  causal = np.asarray(_bias(params, positions, positions))[0]
  diagonal = np.asarray(params["w2"]).T @ np.maximum(np.asarray(params["b1"]), 0) + np.asarray(
      params["b2"])
  upper = np.triu_indices(5, k=1)
  np.testing.assert_allclose(causal[:, upper[0], upper[1]],
                             np.broadcast_to(diagonal[:, None], (H, upper[0].size)), rtol=1e-5)
  both = np.asarray(_bias(params, positions, positions, bidirectional=True))[0]
  np.testing.assert_allclose(both, np.swapaxes(both, -1, -2), rtol=1e-6)


def test_init_follows_the_reference_implementation():
  init = functools.partial(fire.fire_init, num_heads=16, head_dim=8, dim=128, dtype=jnp.float32)
  params = jax.jit(init)(jax.random.key(0))
  assert set(params) == {"c", "L_multiplier", "w1", "b1", "w2", "b2"}
  np.testing.assert_allclose(params["c"], 0.1, rtol=1e-7)
  np.testing.assert_allclose(params["L_multiplier"], 1.0)
  width = fire.DEFAULT_WIDTH
  assert params["w1"].shape == params["b1"].shape == (width,)
  assert params["w2"].shape == (width, 16) and params["b2"].shape == (16,)
  for name, bound in (("w1", 1.0), ("b1", 1.0), ("w2", width ** -0.5), ("b2", width ** -0.5)):
    value = np.abs(np.asarray(params[name]))
    assert value.max() <= bound and value.max() > 0.7 * bound, name


def test_gradients_reach_every_parameter():
  params = _params()
  grads = jax.jit(jax.grad(lambda p: jnp.sum(_bias(p) ** 2)))(params)
  assert set(grads) == set(params)
  for name, grad in grads.items():
    assert np.all(np.isfinite(grad)) and np.any(grad != 0), name
  # c and L against central finite differences (float64 reference).
  for name in ("c", "L_multiplier"):
    step = 1e-3 * float(params[name])
    loss = lambda v: sum(float(np.sum(_reference(dict(params, **{name: np.float64(v)}), int(q),
                                                 int(k), False) ** 2))
                         for b in range(2) for q in Q_POS[b] for k in K_POS[b])
    numeric = (loss(float(params[name]) + step) - loss(float(params[name]) - step)) / (2 * step)
    np.testing.assert_allclose(grads[name], numeric, rtol=1e-3, atol=1e-4)


def test_vmap_per_element_and_bfloat16():
  params = _params()
  dense = _bias(params)
  per_example = jax.jit(jax.vmap(lambda q, k: _bias(params, q[None], k[None])[0]))(Q_POS, K_POS)
  np.testing.assert_allclose(per_example, dense, rtol=1e-6, atol=1e-6)
  scalar = jax.jit(fire.fire_bias)(params, jnp.int32(2), jnp.int32(2000), jnp.int32(550))
  assert scalar.shape == ()
  np.testing.assert_allclose(scalar, dense[1, 2, 2, 2], rtol=1e-6)
  params16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  low = _bias(params16)
  assert low.dtype == jnp.bfloat16
  reference = _bias(jax.tree.map(lambda a: a.astype(jnp.float32), params16))
  np.testing.assert_allclose(low.astype(np.float32), reference, rtol=1e-2, atol=1e-2)


def test_bad_options_are_clear_errors():
  with pytest.raises(ValueError, match="num_heads"):
    fire.fire_init(jax.random.key(0), num_heads=0)
  with pytest.raises(ValueError, match="mlp_width"):
    fire.fire_init(jax.random.key(0), num_heads=2, mlp_width=0)
  with pytest.raises(ValueError, match="init_c"):
    fire.fire_init(jax.random.key(0), num_heads=2, init_c=0.0)
  with pytest.raises(ValueError, match="threshold"):
    fire.fire_bias(_params(), jnp.int32(0), jnp.int32(1), jnp.int32(0), threshold=0.0)


def test_scheme_registration():
  (scheme,) = fire.SCHEMES
  assert scheme.name == "fire" and scheme.hooks == {"bias"}
  assert scheme.init is fire.fire_init and scheme.score_mod is fire.fire_bias
  options = scheme.options(mlp_width=WIDTH, bidirectional=True)
  init = functools.partial(scheme.init, num_heads=H, head_dim=8, dim=24, dtype=jnp.float32,
                           **options)
  params = jax.jit(init)(jax.random.key(0))
  assert set(params) == set(scheme.params)
  np.testing.assert_array_equal(params["w2"], _params()["w2"])
