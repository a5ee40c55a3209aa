import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from posjax import models
from posjax.run import sharding
from posjax.run.optimizer import learning_rate_schedule, weight_decay_mask


def train_cfg(**kw):
  values = dict(learning_rate=1e-3, steps=110, warmup_steps=10, schedule="cosine",
                end_lr_fraction=0.1)
  values.update(kw)
  return ml_collections.ConfigDict(values)


def test_schedule_warmup_then_cosine_to_end_fraction():
  s = learning_rate_schedule(train_cfg())
  np.testing.assert_allclose([s(0), s(5), s(10)], [0.0, 5e-4, 1e-3], rtol=1e-6)
  # Halfway through the decay, cosine is at the mean of peak and end: (1 + 0.1) / 2 · 1e-3.
  np.testing.assert_allclose(s(60), 0.55e-3, rtol=1e-5)
  np.testing.assert_allclose(s(110), 1e-4, rtol=1e-5)


def test_schedule_linear_decay_and_bad_name():
  s = learning_rate_schedule(train_cfg(schedule="linear"))
  np.testing.assert_allclose(s(60), (1e-3 + 1e-4) / 2, rtol=1e-5)
  with pytest.raises(ValueError, match="cosine or linear"):
    learning_rate_schedule(train_cfg(schedule="step"))


def test_weight_decay_mask_spares_biases_norms_embeddings_and_positional():
  cfg = models.TransformerConfig(vocab_size=16, dim=16, num_layers=1, num_heads=2, pe="t5")
  params = nnx.to_pure_dict(nnx.state(models.build("decoder", cfg), nnx.Param))
  mask = weight_decay_mask(params)
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
          for path, v in jax.tree_util.tree_leaves_with_path(mask)}
  assert flat["decoder/blocks/0/attention/query/kernel"]
  assert flat["decoder/blocks/0/mlp/wi/kernel"]
  assert not flat["decoder/blocks/0/mlp/wi/bias"]
  assert not flat["decoder/blocks/0/attention_norm/scale"]
  assert not flat["embedding/tokens/embedding"]
  assert not flat["decoder/blocks/0/attention/positional/params/table"]


def test_mesh_from_config_fills_minus_one_and_rejects_bad_sizes():
  mesh = sharding.make_mesh({"data": -1, "fsdp": 2, "tensor": 1})
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  with pytest.raises(ValueError, match="does not fit 8 devices"):
    sharding.make_mesh({"data": 3, "fsdp": 1, "tensor": 1})
  with pytest.raises(ValueError, match="at most one axis"):
    sharding.make_mesh({"data": -1, "fsdp": -1, "tensor": 1})


def test_logical_names_map_to_mesh_axes_with_divisibility():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  assert sharding.mesh_spec(P("embed", "mlp"), (16, 64), mesh) == P("fsdp", "tensor")
  assert sharding.mesh_spec(P("vocab", "embed"), (259, 16), mesh) == P(None, "fsdp")
  assert sharding.mesh_spec(P("embed", "heads", "head_dim"), (16, 4, 8), mesh) == P(
      "fsdp", "tensor", None)
  assert sharding.mesh_spec(P(), (3,), mesh) == P(None)


def test_global_batch_shards_rows_over_data_and_fsdp():
  mesh = sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
  batch = sharding.global_batch({"inputs": np.arange(16 * 3).reshape(16, 3)}, mesh)
  assert batch["inputs"].shape == (16, 3)
  assert batch["inputs"].sharding.spec == P(("data", "fsdp"))
  np.testing.assert_array_equal(batch["inputs"], np.arange(48).reshape(16, 3))
