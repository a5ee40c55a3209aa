"""T5 relative position buckets against HF transformers (fixture) and worked examples."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax import encodings
from posjax.encodings import t5
from posjax.encodings.bias import materialize_bias

FIXTURE = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures", "bias_reference.npz")
H, DIM = 3, 48
Q_POS = np.array([[0, 1, 2], [7, 8, 300]], np.int32)
K_POS = np.array([[0, 1, 2, 3, 4], [0, 5, 9, 150, 301]], np.int32)


_bucket = jax.jit(t5.t5_relative_bucket,
                  static_argnames=("bidirectional", "num_buckets", "max_distance"))


@functools.partial(jax.jit, static_argnames=("bidirectional",))
def _bias(params, q_pos=Q_POS, k_pos=K_POS, bidirectional=False):
  return materialize_bias(t5.t5_score_mod, params, H, q_pos, k_pos, bidirectional=bidirectional)


def _params(dtype=jnp.float32, **options):
  return t5.t5_init(jax.random.key(0), num_heads=H, head_dim=16, dim=DIM, dtype=dtype, **options)


def test_buckets_match_hf_transformers():
  fixture = np.load(FIXTURE)
  settings = [dict(bidirectional=bool(b), num_buckets=int(n), max_distance=int(m))
              for b, n, m in fixture["t5_settings"]]
  got = jax.jit(lambda r: jnp.stack([t5.t5_relative_bucket(r, **s) for s in settings]))(
      fixture["t5_relative_position"])
  assert got.dtype == jnp.int32
  for setting, row, expected in zip(settings, got, fixture["t5_buckets"]):
    np.testing.assert_array_equal(row, expected, err_msg=str(setting))


def test_buckets_worked_by_hand():
  # Default 32 buckets, max_distance 128. Bidirectional: 16 per side, 8 exact.
  bucket = lambda r, bi: list(np.asarray(_bucket(np.asarray(r, np.int32), bidirectional=bi)))
  assert bucket([0, -1, -7, 1, 7], True) == [0, 1, 7, 17, 23]
  # n = 8: 8 + floor(log(8/8) / log(128/8) * 8) = 8; n = 16: 8 + floor(log 2 / log 16 * 8) = 10.
  assert bucket([-8, -16, -127, -128, -10_000], True) == [8, 10, 15, 15, 15]
  assert bucket([8, 16, 10_000], True) == [24, 26, 31]
  # Causal: 32 buckets for the past (16 exact), every future key in bucket 0;
  # n = 32: 16 + floor(log 2 / log 8 * 16) = 21.
  assert bucket([0, -1, -15, -16, -32, -128, -5000], False) == [0, 1, 15, 16, 21, 31, 31]
  assert bucket([1, 50], False) == [0, 0]


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 20), (64, 1000)])
def test_buckets_in_range_and_monotone_in_distance(bidirectional, num_buckets, max_distance):
  distance = np.arange(0, 3000, dtype=np.int32)
  options = dict(bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
  past, future = np.asarray(_bucket(np.stack([-distance, distance]), **options))
  for buckets in (past, future):
    assert buckets.min() >= 0 and buckets.max() < num_buckets
    assert np.all(np.diff(buckets) >= 0), "bucket non-decreasing in distance for a fixed sign"
  assert past[-1] == (num_buckets // 2 if bidirectional else num_buckets) - 1


def test_score_mod_is_the_table_at_the_bucket():
  params = _params()
  table = np.asarray(params["table"])
  assert table.shape == (32, H)
  fixture = np.load(FIXTURE)
  relative = list(fixture["t5_relative_position"])
  for bidirectional in (False, True):
    # HF's buckets for the default (num_buckets=32, max_distance=128).
    setting = list(map(tuple, fixture["t5_settings"])).index((int(bidirectional), 32, 128))
    hf_bucket = fixture["t5_buckets"][setting]
    bias = np.asarray(_bias(params, bidirectional=bidirectional))
    assert bias.shape == (2, H, 3, 5) and bias.dtype == np.float32
    for b in range(2):
      for i, q in enumerate(Q_POS[b]):
        for j, k in enumerate(K_POS[b]):
          np.testing.assert_array_equal(bias[b, :, i, j], table[hf_bucket[relative.index(k - q)]])


def test_init_matches_hf_scale():
  init = functools.partial(t5.t5_init, num_heads=64, head_dim=8, dim=256)
  params = jax.jit(init)(jax.random.key(1))
  assert params["table"].shape == (32, 64) and params["table"].dtype == jnp.float32
  np.testing.assert_allclose(np.std(params["table"]), 256 ** -0.5, rtol=0.1)


def test_vmap_and_per_element():
  params = _params()
  dense = _bias(params)
  per_example = jax.jit(jax.vmap(
      lambda q, k: materialize_bias(t5.t5_score_mod, params, H, q[None], k[None])[0]))(Q_POS, K_POS)
  np.testing.assert_array_equal(per_example, dense)
  scalar = jax.jit(t5.t5_score_mod)(params, jnp.int32(2), jnp.int32(300), jnp.int32(150))
  assert scalar.shape == ()
  np.testing.assert_array_equal(scalar, dense[1, 2, 2, 3])
  # One head over a tile of positions: the form the fused kernel traces (head's column first).
  tile = jax.jit(t5.t5_score_mod)(params, jnp.int32(2), Q_POS[1][:, None], K_POS[1][None, :])
  np.testing.assert_array_equal(tile, dense[1, 2])


def test_bfloat16_table():
  params = _params(jnp.bfloat16)
  bias = _bias(params)
  assert bias.dtype == jnp.bfloat16
  reference = _bias(jax.tree.map(lambda a: a.astype(jnp.float32), params))
  np.testing.assert_array_equal(bias.astype(jnp.float32), reference)


def test_gradient_reaches_exactly_the_used_buckets():
  params = _params()
  grad = np.asarray(jax.jit(jax.grad(lambda p: jnp.sum(_bias(p))))(params)["table"])
  assert np.all(np.isfinite(grad))
  used = np.unique(np.asarray(_bucket(K_POS[:, None, :] - Q_POS[:, :, None], bidirectional=False)))
  counts = np.bincount(used, minlength=32) > 0
  assert np.all(grad[counts] > 0) and np.all(grad[~counts] == 0)


def test_bad_options_are_clear_errors():
  # An odd count is not an error (HF rounds the per-direction half down: tests/interop checks
  # the buckets against its values); options that cannot work fail when the scheme's options are
  # resolved, i.e. when a config or a model is built, not at the first forward pass.
  with pytest.raises(ValueError, match="too small"):
    encodings.get("t5").options(bidirectional=True, num_buckets=3)
  with pytest.raises(ValueError, match="too small"):
    t5.t5_relative_bucket(jnp.int32(1), bidirectional=True, num_buckets=2)
  with pytest.raises(ValueError, match="max_distance"):
    t5.t5_relative_bucket(jnp.int32(1), bidirectional=False, num_buckets=32, max_distance=16)
  with pytest.raises(ValueError, match="num_heads"):
    t5.t5_init(jax.random.key(0), num_heads=0, head_dim=8, dim=8)
  with pytest.raises(ValueError, match="table has shape"):
    t5.t5_score_mod(_params(), jnp.int32(0), jnp.int32(1), jnp.int32(0), num_buckets=64)


def test_scheme_registration():
  (scheme,) = t5.SCHEMES
  assert scheme.name == "t5" and scheme.hooks == {"bias"} and scheme.params == ("table",)
  params = scheme.init(jax.random.key(0), num_heads=H, head_dim=16, dim=DIM, dtype=jnp.float32,
                       **scheme.options(num_buckets=16))
  assert params["table"].shape == (16, H)
  options = scheme.options(num_buckets=16, bidirectional=True)
  bias = jax.jit(
      lambda p: materialize_bias(scheme.score_mod, p, H, Q_POS, K_POS, **options))(params)
  assert bias.shape == (2, H, 3, 5)
