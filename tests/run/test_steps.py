"""Sharded training gives the losses of one device; accumulation gives the whole-batch update."""

import jax
import ml_collections
import numpy as np
import pytest

from posjax import encodings, models
from posjax.run import sharding
from posjax.run.trainable import make_trainable

CFG = models.TransformerConfig(vocab_size=48, dim=32, num_layers=2, num_heads=4, mlp_dim=64,
                               pe="alibi", attention_backend="xla", use_bias=False)
# No attention biases: the key bias has an exactly-zero true gradient, whose float noise Adam
# would amplify into updates of size lr that differ between reduction orders.
BATCH, LENGTH = 8, 16


def train_cfg(accum=1):
  return ml_collections.ConfigDict(dict(
      learning_rate=3e-3, steps=10, warmup_steps=2, schedule="cosine", end_lr_fraction=0.1,
      weight_decay=0.1, b1=0.9, b2=0.95, grad_clip_norm=1.0, grad_accum_steps=accum))


def batches(n):
  rng = np.random.default_rng(0)
  for _ in range(n):
    tokens = rng.integers(0, 48, (BATCH, LENGTH + 1)).astype(np.int32)
    yield {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
           "positions": np.asarray(encodings.contiguous_positions(BATCH, LENGTH)),
           "segment_ids": np.ones((BATCH, LENGTH), np.int32),
           "weights": (rng.random((BATCH, LENGTH)) > 0.1).astype(np.float32)}


def run(mesh_cfg, accum=1, steps=3, devices=None):
  mesh = sharding.make_mesh(mesh_cfg, devices=devices)
  trainable = make_trainable("decoder", CFG, train_cfg(accum), mesh, seed=0)
  state = trainable.create()
  losses = []
  for batch in batches(steps):
    state, metrics = trainable.train_step(state, sharding.global_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state.params), state


@pytest.fixture(scope="module")
def single_device():
  return run({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])


@pytest.mark.parametrize("mesh_cfg", [
    {"data": 8, "fsdp": 1, "tensor": 1},
    {"data": 2, "fsdp": 4, "tensor": 1},
    {"data": 2, "fsdp": 2, "tensor": 2},
])
def test_sharded_training_matches_one_device(single_device, mesh_cfg):
  losses, params, state = run(mesh_cfg)
  np.testing.assert_allclose(losses, single_device[0], rtol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params,
               single_device[1])
  if mesh_cfg["fsdp"] > 1:  # parameters really are split over the fsdp axis
    kernel = state.params["decoder"]["blocks"][0]["mlp"]["wi"]["kernel"]
    assert "fsdp" in str(kernel.sharding.spec)


def test_gradient_accumulation_equals_whole_batch(single_device):
  losses, params, _ = run({"data": 1, "fsdp": 1, "tensor": 1}, accum=2,
                          devices=jax.devices()[:1])
  np.testing.assert_allclose(losses, single_device[0], rtol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params,
               single_device[1])


def test_training_lowers_the_loss_on_a_repeated_batch():
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  trainable = make_trainable("decoder", CFG, train_cfg(), mesh)
  state = trainable.create()
  batch = sharding.global_batch(next(batches(1)), mesh)
  losses = []
  for _ in range(8):
    state, metrics = trainable.train_step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0] - 0.2
