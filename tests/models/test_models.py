"""Every positional scheme through every model family: shapes, gradients, causality, KV cache,
packing, padding and backend agreement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from posjax import encodings, models

SCHEMES = encodings.names() + ("shaw_values",)  # the latter: shaw with values=True
VOCAB = 40


def tiny(pe, **overrides):
  options = {"max_len": 64} if pe == "learned" else {}
  if pe == "shaw_values":
    pe, options = "shaw", {"values": True}
  values = dict(vocab_size=VOCAB, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
                pe=pe, pe_options=options, attention_backend="xla")
  values.update(overrides)
  return models.TransformerConfig(**values)


def tokens(batch, length, seed=0):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, VOCAB)


def _loss_and_grads(model, fn):
  return nnx.value_and_grad(fn)(model)


def _assert_finite_grads(grads):
  leaves = jax.tree.leaves(grads)
  assert leaves and all(np.all(np.isfinite(g)) for g in leaves)
  assert any(np.any(g != 0) for g in leaves)


@pytest.mark.parametrize("pe", SCHEMES)
def test_decoder_forward_backward(pe):
  model = models.build("decoder", tiny(pe))
  x = tokens(2, 12)
  logits = model(x)
  assert logits.shape == (2, 12, VOCAB) and logits.dtype == jnp.float32
  value, grads = _loss_and_grads(model, lambda m: jnp.mean(m(x) ** 2))
  assert np.isfinite(value)
  _assert_finite_grads(grads)


@pytest.mark.parametrize("pe", SCHEMES)
@pytest.mark.parametrize("family", ["mlm", "encoder_decoder"])
def test_encoder_families_forward_backward(pe, family):
  model = models.build(family, tiny(pe))
  x = tokens(2, 10)
  run = (lambda m: m(x)) if family == "mlm" else (lambda m: m(x, tokens(2, 7, seed=1)))
  out = run(model)
  assert out.shape == ((2, 10, VOCAB) if family == "mlm" else (2, 7, VOCAB))
  value, grads = _loss_and_grads(model, lambda m: jnp.mean(run(m) ** 2))
  assert np.isfinite(value)
  _assert_finite_grads(grads)


def test_classification_heads():
  cfg = tiny("alibi", dropout=0.1)
  seq = models.build("classifier", cfg, num_classes=3, pooling="mean")
  tag = models.build("tagger", cfg, num_labels=5)
  x = tokens(2, 9)
  seg = jnp.array([[1] * 9, [1] * 6 + [0] * 3])
  seq.eval(), tag.eval()
  assert seq(x, segment_ids_BL=seg).shape == (2, 3)
  assert tag(x, segment_ids_BL=seg).shape == (2, 9, 5)


@pytest.mark.parametrize("pe", SCHEMES)
def test_decoder_is_causal(pe):
  """d logits[t] / d input[s] is exactly zero for every s > t."""
  model = models.build("decoder", tiny(pe))
  x = tokens(1, 8)
  positions = encodings.contiguous_positions(1, 8)

  def logits_at(delta, t):
    h = model.embedding(x, positions) + delta
    return model.head(model.decoder(h, positions_BL=positions))[0, t].sum()

  delta = jnp.zeros((1, 8, 32))
  for t in (0, 3, 6):
    grad = jax.grad(logits_at)(delta, t)
    assert np.all(np.asarray(grad[0, t + 1:]) == 0.0), f"position {t} sees the future"
    assert np.any(np.asarray(grad[0, :t + 1]) != 0.0)


@pytest.mark.parametrize("pe", SCHEMES)
def test_kv_cache_decoding_matches_full_forward(pe):
  model = models.build("decoder", tiny(pe))
  x = tokens(2, 10)
  full = model(x)
  model.init_cache(batch=2, max_len=16)
  prefill = model(x[:, :4], decode=True)
  steps = [model(x[:, t:t + 1], decode=True) for t in range(4, 10)]
  cached = jnp.concatenate([prefill] + steps, axis=1)
  np.testing.assert_allclose(cached, full, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("pe", SCHEMES)
def test_encoder_decoder_cache_matches_full_forward(pe):
  model = models.build("encoder_decoder", tiny(pe))
  src, tgt = tokens(2, 6), tokens(2, 5, seed=3)
  full = model(src, tgt)
  encoded = model.encode(src)
  model.init_cache(batch=2, max_len=8)
  steps = [model.decode(encoded, tgt[:, t:t + 1], decode=True) for t in range(5)]
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("pe", SCHEMES)
@pytest.mark.parametrize("family", ["decoder", "mlm"])
def test_packed_sequences_equal_separate_runs(pe, family):
  model = models.build(family, tiny(pe))
  a, b = tokens(1, 5, seed=1), tokens(1, 7, seed=2)
  packed = jnp.concatenate([a, b, jnp.zeros((1, 4), a.dtype)], axis=1)
  segments = jnp.array([[1] * 5 + [2] * 7 + [0] * 4])
  out = model(packed, segment_ids_BL=segments)
  np.testing.assert_allclose(out[:, :5], model(a), atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(out[:, 5:12], model(b), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("pe", SCHEMES)
def test_padding_does_not_change_real_tokens_in_encoder(pe):
  model = models.build("mlm", tiny(pe))
  x = tokens(1, 6)
  padded = jnp.concatenate([x, jnp.full((1, 4), 7, x.dtype)], axis=1)
  segments = jnp.array([[1] * 6 + [0] * 4])
  np.testing.assert_allclose(model(padded, segment_ids_BL=segments)[:, :6], model(x),
                             atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("pe", SCHEMES)
def test_chunked_backend_agrees_with_reference(pe):
  reference = models.build("decoder", tiny(pe))
  chunked = models.build("decoder", tiny(pe, attention_backend="chunked", chunk_size=4))
  x = tokens(2, 11)
  np.testing.assert_allclose(chunked(x), reference(x), atol=2e-5, rtol=2e-5)


def test_config_errors_are_clear():
  with pytest.raises(ValueError, match="num_heads=5 does not divide dim=32"):
    tiny("rope", num_heads=5)
  with pytest.raises(ValueError, match="unknown positional encoding"):
    tiny("rotary")
  with pytest.raises(ValueError, match="head_dim=7 must be even"):
    tiny("rope", head_dim=7)
  with pytest.raises(ValueError, match="unknown model config field"):
    models.TransformerConfig.from_dict({"dims": 3})
  with pytest.raises(ValueError, match="unknown model family"):
    models.build("gpt", tiny("rope"))


def test_parameters_carry_logical_axis_names():
  model = models.build("decoder", tiny("rope"))
  specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
  flat = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(specs)}
  assert tuple(flat["embedding/tokens/embedding"].get_value()) == ("vocab", "embed")
  q_kernel = [v for k, v in flat.items() if k.endswith("attention/query/kernel")][0]
  assert tuple(q_kernel.get_value()) == ("embed", "heads", "head_dim")


@pytest.mark.parametrize("variant", [
    dict(norm="rmsnorm", activation="swiglu", use_bias=False, tie_embeddings=False),
    dict(norm_position="post", final_norm=False, embed_norm=True, activation="relu"),
    dict(num_kv_heads=1, activation="geglu", head_dim=16),
])
def test_block_variants_run_and_train(variant):
  model = models.build("decoder", tiny("rope", **variant))
  x = tokens(2, 8)
  value, grads = _loss_and_grads(model, lambda m: jnp.mean(m(x) ** 2))
  assert np.isfinite(value)
  _assert_finite_grads(grads)


def test_rematerialization_changes_nothing_but_memory():
  x = tokens(2, 8)
  plain = models.build("decoder", tiny("alibi"))
  remat = models.build("decoder", tiny("alibi", remat=True))
  loss = lambda m: jnp.mean(m(x) ** 2)
  v1, g1 = _loss_and_grads(plain, loss)
  v2, g2 = _loss_and_grads(remat, loss)
  np.testing.assert_allclose(v1, v2, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g1, g2)


def test_shared_positional_module_is_one_set_of_parameters():
  shared = models.build("decoder", tiny("t5", pe_shared=True, num_layers=3))
  own = models.build("decoder", tiny("t5", num_layers=3))
  count = lambda m: sum(p.size for p in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert count(own) - count(shared) == 2 * 32 * 4  # two fewer [buckets, heads] tables
  assert shared.decoder.blocks[0].attention.positional is shared.decoder.blocks[2].attention.positional


def test_dropout_is_active_in_training_only():
  model = models.build("decoder", tiny("rope", dropout=0.5))
  x = tokens(1, 8)
  model.train()
  assert not np.allclose(model(x), model(x))
  model.eval()
  np.testing.assert_array_equal(model(x), model(x))


@pytest.mark.parametrize("family", ["decoder", "mlm", "encoder_decoder"])
def test_out_of_range_token_ids_are_an_error_not_a_wrapped_row(family):
  # A gather clamps id 256 to the last row and wraps -1 to it: both used to run silently.
  model = models.build(family, models.TransformerConfig(vocab_size=256, dim=32, num_layers=1,
                                                        num_heads=4, pe="alibi"))
  for bad in (256, -1):
    tokens = jnp.array([[1, 2, bad]])
    with pytest.raises(ValueError, match=rf"contain id {bad} outside the vocabulary of size 256"):
      model(tokens, tokens) if family == "encoder_decoder" else model(tokens)
