"""The attention backends against a literal per-query loop written from the definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax.nn import attention_core

B, Q, H, G, D = 2, 9, 4, 2, 8


def reference(q, k, v, q_pos, k_pos, q_seg, k_seg, causal, scale, extra):
  """softmax over visible keys of scale·q·k + extra, one (b, h, i) at a time, in float64."""
  q, k, v, extra = (np.asarray(a, np.float64) for a in (q, k, v, extra))
  out = np.zeros(q.shape)
  for b in range(q.shape[0]):
    for h in range(H):
      g = h // (H // G)
      for i in range(q.shape[1]):
        visible = [j for j in range(k.shape[1]) if k_seg[b, j] != 0 and k_seg[b, j] == q_seg[b, i]
                   and (not causal or k_pos[b, j] <= q_pos[b, i])]
        if not visible:
          continue
        logits = np.array([scale * q[b, i, h] @ k[b, j, g] + extra[b, h, i, j] for j in visible])
        p = np.exp(logits - logits.max())
        p /= p.sum()
        out[b, i, h] = sum(pj * v[b, j, g] for pj, j in zip(p, visible))
  return out


@pytest.fixture
def inputs():
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (B, Q, H, D))
  k = jax.random.normal(keys[1], (B, Q, G, D))
  v = jax.random.normal(keys[2], (B, Q, G, D))
  positions = jnp.array([[0, 1, 2, 0, 1, 2, 3, 0, 0], [5, 9, 10, 11, 30, 31, 32, 33, 34]])
  segments = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0, 0], [1] * 9])
  return q, k, v, positions, segments


@pytest.mark.parametrize("backend", ["xla", "chunked", "jax_nn"])
@pytest.mark.parametrize("causal", [True, False])
def test_backend_matches_literal_definition(inputs, backend, causal):
  q, k, v, positions, segments = inputs
  kwargs = dict(q_pos_BQ=positions, k_pos_BK=positions, q_seg_BQ=segments, k_seg_BK=segments,
                causal=causal, scale=0.3, extra_fn=lambda q_blk, pos_blk, keys=None: extra_terms(
                    q_blk, pos_blk, positions if keys is None else keys.pos_BK))
  if backend == "jax_nn":
    out = attention_core.cudnn_attention(q, k, v, implementation="xla", **kwargs)
  else:
    out = attention_core.dot_product_attention(q, k, v, backend=backend, chunk_size=4, **kwargs)
  expected = reference(q, k, v, np.asarray(positions), np.asarray(positions),
                       np.asarray(segments), np.asarray(segments), causal, 0.3,
                       extra_terms(q, positions, positions))
  real = np.asarray(segments) != 0  # padding queries see nothing; their output is unspecified
  np.testing.assert_allclose(np.asarray(out)[real], expected[real], atol=1e-5, rtol=1e-5)


def extra_terms(q_BQHD, q_pos_BQ, k_pos_BK):
  """A positional term (per head, query and key position) plus a content term (per query)."""
  head = jnp.arange(H)[None, :, None, None]
  position = jnp.sin(0.7 * q_pos_BQ[:, None, :, None] + 0.3 * k_pos_BK[:, None, None, :] + head)
  content = 0.1 * jnp.sum(q_BQHD, axis=-1).transpose(0, 2, 1)[..., None]
  return position + content


def test_unknown_backend_and_bad_grouping_are_clear_errors(inputs):
  q, k, v, positions, _ = inputs
  with pytest.raises(ValueError, match="unknown attention backend"):
    attention_core.dot_product_attention(q, k, v, q_pos_BQ=positions, k_pos_BK=positions,
                                         causal=True, backend="flash")
  with pytest.raises(ValueError, match="cannot share"):
    attention_core.dot_product_attention(q[:, :, :3], k, v, q_pos_BQ=positions,
                                         k_pos_BK=positions, causal=True)


def test_auto_takes_the_fused_kernel_on_tpu_for_the_schemes_it_serves(monkeypatch):
  from posjax.nn import attention_core
  monkeypatch.setattr(attention_core, "fused_by_default", lambda: True)  # as on a TPU
  resolve = lambda **kw: attention_core.resolve_backend("auto", q_len=512, k_len=512,
                                                        dtype=jnp.bfloat16, **kw)
  assert resolve() == "fused"
  assert resolve(fusable=False) != "fused"     # a content term (Transformer-XL)
  assert resolve(needs_probs=True) != "fused"  # Shaw's value term
  monkeypatch.setattr(attention_core, "fused_by_default", lambda: False)  # CPU, GPU
  assert resolve() in ("xla", "chunked")
