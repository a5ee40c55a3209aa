"""The Attention layer: its probabilities (`weights`) and Shaw et al.'s relative values, against
the layer's own output and a literal loop over the paper's formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from posjax import models
from posjax.encodings import shaw
from posjax.nn import attention_core
from posjax.nn.attention import Attention
from posjax.nn.positional import PositionalEncoding

B, L, DIM, H, G, HD = 2, 7, 8, 4, 2, 4
# Row 0: two packed segments and padding; row 1: gaps wider than Shaw's clipping distance.
POSITIONS = jnp.array([[0, 1, 2, 0, 1, 2, 3], [3, 5, 6, 10, 11, 12, 13]])
SEGMENTS = jnp.array([[1, 1, 1, 2, 2, 2, 0], [1] * 7])


def make_attention(pe, options=None, *, causal, backend="xla", head_dim=HD, seed=0):
  rngs = nnx.Rngs(seed)
  positional = None if pe == "nope" else PositionalEncoding(
      pe, num_heads=H, head_dim=head_dim, dim=DIM, options=options,
      context={"num_heads": H, "bidirectional": not causal}, rngs=rngs)
  with nnx.use_eager_sharding(False):  # outside a mesh: unsharded, as models.build does
    return Attention(dim=DIM, num_heads=H, num_kv_heads=G, head_dim=head_dim, causal=causal,
                     use_bias=True, positional=positional, backend=backend, chunk_size=3,
                     rngs=rngs)


def inputs(seed=1):
  return jax.random.normal(jax.random.key(seed), (B, L, DIM))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("pe, options", [
    ("rope", None), ("alibi", None), ("t5", None), ("shaw", {"max_distance": 2}), ("nope", None),
    ("shaw", {"max_distance": 2, "values": True})], ids=lambda v: str(v) if v else "")
def test_weights_reproduce_the_layer_output(pe, options, causal):
  attn = make_attention(pe, options, causal=causal)
  x = inputs()
  probs = attn.weights(x, positions_BQ=POSITIONS, segment_ids_BQ=SEGMENTS)
  assert probs.shape == (B, H, L, L) and probs.dtype == jnp.float32
  mask = np.asarray(attention_core.attention_mask(POSITIONS, POSITIONS, SEGMENTS, SEGMENTS,
                                                  causal=causal))
  assert np.all(np.asarray(probs)[~np.broadcast_to(mask, probs.shape)] == 0)
  sums_BQH = np.asarray(probs.sum(-1)).transpose(0, 2, 1)
  real = np.asarray(SEGMENTS) != 0
  np.testing.assert_allclose(sums_BQH[real], 1, atol=1e-6)
  np.testing.assert_array_equal(sums_BQH[~real], 0)  # padding sees nothing

  v = jnp.repeat(attn.value(x), H // G, axis=2)  # query head h reads value head h // (H // G)
  mixed = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
  if options and options.get("values"):
    mixed += shaw.shaw_values(attn.positional.params["rel_value"][...], probs, POSITIONS,
                              POSITIONS, max_distance=2)
  np.testing.assert_allclose(attn.out(mixed),
                             attn(x, positions_BQ=POSITIONS, segment_ids_BQ=SEGMENTS),
                             atol=2e-6, rtol=2e-6)


def paper_reference(x, p, positions, segments, causal, k, cotangent):
  """Shaw et al. 2018 literally, one (b, h, i, j) at a time in float64, through W^O:

    e_ij = (x_i W^Q)(x_j W^K + a^K_ij)^T / sqrt(d_z),  z_i = Σ_j α_ij (x_j W^V + a^V_ij),
    a^{K,V}_ij = w^{K,V}_{clip(j - i, k)}

  over the keys visible to query i (same non-padding segment; j's position ≤ i's if causal).
  Also returns d(Σ cotangent · out) / d w^V, which is Σ α_ij (W^O_h cotangent_i) at row
  clip(j - i, k) + k since out is linear in w^V and α does not depend on it.
  """
  x, cotangent = np.asarray(x, np.float64), np.asarray(cotangent, np.float64)
  p = {name: np.asarray(value, np.float64) for name, value in p.items()}
  out = np.zeros(x.shape) + p["bo"]
  grad_wv = np.zeros(p["rel_value"].shape)
  for b in range(x.shape[0]):
    for h in range(H):
      g = h // (H // G)
      for i in range(x.shape[1]):
        visible = [j for j in range(x.shape[1]) if segments[b, j] != 0
                   and segments[b, j] == segments[b, i]
                   and (not causal or positions[b, j] <= positions[b, i])]
        if not visible:
          continue
        rows = [max(-k, min(k, positions[b, j] - positions[b, i])) + k for j in visible]
        q_i = x[b, i] @ p["wq"][:, h] + p["bq"][h]
        e = np.array([q_i @ (x[b, j] @ p["wk"][:, g] + p["bk"][g] + p["rel_key"][r])
                      for j, r in zip(visible, rows)]) / np.sqrt(HD)
        alpha = np.exp(e - e.max()) / np.exp(e - e.max()).sum()
        z_i = sum(a * (x[b, j] @ p["wv"][:, g] + p["bv"][g] + p["rel_value"][r])
                  for a, j, r in zip(alpha, visible, rows))
        out[b, i] += z_i @ p["wo"][h]
        for a, r in zip(alpha, rows):
          grad_wv[r] += a * (p["wo"][h] @ cotangent[b, i])
  return out, grad_wv


@pytest.mark.parametrize("backend", ["xla", "chunked"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_shaw_relative_values_match_the_paper(causal, backend):
  attn = make_attention("shaw", {"max_distance": 2, "values": True}, causal=causal,
                        backend=backend)
  tables = jax.random.normal(jax.random.key(2), (2, 5, HD))  # large enough to matter
  attn.positional.params["rel_key"][...] = tables[0]
  attn.positional.params["rel_value"][...] = tables[1]
  x, cotangent = inputs(), jax.random.normal(jax.random.key(3), (B, L, DIM))
  p = {"wq": attn.query.kernel, "bq": attn.query.bias, "wk": attn.key.kernel,
       "bk": attn.key.bias, "wv": attn.value.kernel, "bv": attn.value.bias,
       "wo": attn.out.kernel, "bo": attn.out.bias, "rel_key": tables[0], "rel_value": tables[1]}
  p = {name: value[...] for name, value in p.items()}
  expected, expected_grad = paper_reference(x, p, np.asarray(POSITIONS), np.asarray(SEGMENTS),
                                            causal, 2, cotangent)

  def loss(attn):
    out = attn(x, positions_BQ=POSITIONS, segment_ids_BQ=SEGMENTS)
    return jnp.sum(out * cotangent), out

  grads, out = nnx.grad(loss, has_aux=True)(attn)
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(grads.positional.params["rel_value"][...], expected_grad,
                             atol=1e-5, rtol=1e-5)
  assert np.abs(np.asarray(grads.positional.params["rel_key"][...])).sum() > 0


def test_value_term_needs_a_backend_that_forms_probabilities(monkeypatch):
  for backend in ("cudnn", "fused"):
    with pytest.raises(ValueError, match="values=True adds a term computed from the attention"):
      models.TransformerConfig(pe="shaw", pe_options={"values": True}, attention_backend=backend)
    attn = make_attention("shaw", {"values": True}, causal=True, backend=backend)
    with pytest.raises(ValueError, match="never forms the attention probabilities"):
      attn(inputs(), positions_BQ=POSITIONS)
  models.TransformerConfig(pe="shaw", pe_options={"values": True}, attention_backend="auto")
  models.TransformerConfig(pe="shaw", attention_backend="cudnn")  # no value term: fine
  # On a GPU in half precision, `auto` would pick cuDNN, but not for a value term.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  resolve = lambda needs_probs: attention_core.resolve_backend(
      "auto", q_len=8, k_len=8, dtype=jnp.bfloat16, needs_probs=needs_probs)
  assert resolve(False) == "cudnn" and resolve(True) == "xla"
