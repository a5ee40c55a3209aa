"""T5's all-heads bias (a table row per query and key) against its per-element `score_mod`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax.encodings import t5
from posjax.encodings.bias import materialize_bias

H = 3


def _per_element(params, q_pos, k_pos, **options):
  """The elementwise definition, bypassing `materialize_bias`'s all-heads form."""
  head = jnp.arange(H)[None, :, None, None]
  return t5.t5_score_mod(params, head, q_pos[:, None, :, None], k_pos[:, None, None, :],
                         **options)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_all_heads_form_equals_score_mod_values_and_gradients(bidirectional):
  params = t5.t5_init(jax.random.key(0), num_heads=H, dim=16, num_buckets=16)
  q_pos = jnp.array([[0, 3, 40, 300], [9, 10, 11, 12]])
  k_pos = jnp.array([[0, 1, 2, 41, 200, 301], [0, 5, 9, 10, 150, 4000]])
  options = dict(bidirectional=bidirectional, num_buckets=16, max_distance=64)
  weights = jax.random.normal(jax.random.key(1), (2, H, 4, 6))
  rows = lambda p: materialize_bias(t5.t5_score_mod, p, H, q_pos, k_pos, **options)
  elements = lambda p: _per_element(p, q_pos, k_pos, **options)
  np.testing.assert_array_equal(jax.jit(rows)(params), jax.jit(elements)(params))
  grad = lambda f: jax.jit(jax.grad(lambda p: jnp.sum(f(p) * weights)))(params)["table"]
  np.testing.assert_allclose(grad(rows), grad(elements), rtol=1e-6, atol=1e-6)
