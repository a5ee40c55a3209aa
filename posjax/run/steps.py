"""Train state, loss, and the jit-able train and eval steps.

The model is split once into a static `GraphDef` and pure-dict trees of arrays (parameters, and the
rest: dropout RNG counters). Steps merge them back inside the traced function, so the state is a
plain pytree that `jax.jit` shards and donates and Orbax saves as is.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any       # pure dict of parameter arrays
  opt_state: Any
  rest: Any         # pure dict of the model's other state (dropout RNG counters)


def split_model(model: nnx.Module):
  """`(train_graphdef, eval_graphdef, params_state, rest_state)`; eval disables dropout."""
  train_graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  model.eval()
  eval_graphdef = nnx.split(model, nnx.Param, ...)[0]
  model.train()
  return train_graphdef, eval_graphdef, params, rest


def token_losses(logits_BLV: jax.Array, targets_BL: jax.Array, weights_BL: jax.Array):
  """Summed weighted cross-entropy, the summed weight, and the summed weighted correct guesses."""
  xent = optax.softmax_cross_entropy_with_integer_labels(logits_BLV.astype(jnp.float32),
                                                         targets_BL)
  weights = weights_BL.astype(jnp.float32)
  correct = (jnp.argmax(logits_BLV, axis=-1) == targets_BL).astype(jnp.float32)
  return jnp.sum(xent * weights), jnp.sum(weights), jnp.sum(correct * weights)


def forward(graphdef, params, rest, batch):
  """Logits for a batch `{inputs, positions, segment_ids, ...}` and the model's updated rest."""
  model = nnx.merge(graphdef, params, rest)
  logits = model(batch["inputs"], batch["positions"], batch["segment_ids"])
  return logits, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))


def make_train_step(graphdef, tx: optax.GradientTransformation, schedule: optax.Schedule, *,
                    grad_accum_steps: int = 1, trainable: Any = None) -> Callable:
  """`train_step(state, batch) -> (state, metrics)`; the batch is split into `grad_accum_steps`
  micro-batches whose gradients are summed before one optimizer update, which gives exactly the
  update of the whole batch at once (losses are normalized by the total weight). `trainable`
  (bools like the parameters) drops the gradients of frozen parameters, so XLA need not compute
  them and the reported gradient norm is that of the trained ones."""

  def micro_loss(params, rest, batch):
    logits, rest = forward(graphdef, params, rest, batch)
    loss_sum, weight_sum, _ = token_losses(logits, batch["targets"], batch["weights"])
    return loss_sum, (weight_sum, rest)

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def train_step(state: TrainState, batch):
    if grad_accum_steps == 1:
      (loss_sum, (weight_sum, rest)), grads = grad_fn(state.params, state.rest, batch)
    else:
      # Row r of micro-batch i is row r·k + i of the batch, so each micro-batch keeps the
      # batch's sharding over devices.
      micro = jax.tree.map(
          lambda x: jnp.swapaxes(x.reshape((-1, grad_accum_steps) + x.shape[1:]), 0, 1), batch)

      def accumulate(carry, mb):
        loss_sum, weight_sum, grads, rest = carry
        (l, (w, rest)), g = grad_fn(state.params, rest, mb)
        return (loss_sum + l, weight_sum + w, jax.tree.map(jnp.add, grads, g), rest), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (loss_sum, weight_sum, grads, rest), _ = jax.lax.scan(
          accumulate, (jnp.zeros(()), jnp.zeros(()), zeros, state.rest), micro)
    scale = 1.0 / jnp.maximum(weight_sum, 1.0)
    grads = jax.tree.map(lambda g: g * scale, grads)
    if trainable is not None:
      grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss_sum * scale, "grad_norm": optax.tree.norm(grads),
               "learning_rate": schedule(state.step), "tokens": weight_sum}
    return TrainState(state.step + 1, params, opt_state, rest), metrics

  return train_step


def make_eval_step(graphdef, *, predictions: bool = False) -> Callable:
  """`eval_step(params, rest, batch) -> {loss_sum, weight_sum, correct_sum}` (no dropout), and
  with `predictions` also the argmax of the logits (`[B]` or `[B, L]`)."""

  def eval_step(params, rest, batch):
    logits, _ = forward(graphdef, params, rest, batch)
    loss_sum, weight_sum, correct_sum = token_losses(logits, batch["targets"], batch["weights"])
    out = {"loss_sum": loss_sum, "weight_sum": weight_sum, "correct_sum": correct_sum}
    if predictions:
      out["predictions"] = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return out

  return eval_step


# ------------------------------------------------------------------------------------------------
# Objectives with their own loss (several heads, each normalized by its own weight), e.g. BERT's
# masked LM + next-sentence prediction (posjax.run.objectives.next_sentence). The loss object provides:
#   forward(model, batch) -> outputs                 the model's outputs on a (micro-)batch
#   sums(outputs, batch) -> {name: scalar}           sums over the batch's rows, additive
#   normalizers(batch) -> {name: scalar}             totals over the WHOLE batch (e.g. weights)
#   value(sums, normalizers) -> scalar               the loss, linear in `sums`
#   metrics(sums, normalizers) -> {name: scalar}     training metrics ("train/...")
# ------------------------------------------------------------------------------------------------


def make_loss_train_step(graphdef, tx: optax.GradientTransformation, schedule: optax.Schedule,
                         loss: Any, *, grad_accum_steps: int = 1,
                         trainable: Any = None) -> Callable:
  """`train_step(state, batch) -> (state, metrics)` for an objective's own `loss` (see above).

  The normalizers are taken over the whole batch before it is split into micro-batches, and the
  loss is linear in the sums, so the micro-batches' losses and gradients add up to exactly those
  of the whole batch (as `make_train_step`'s do). `metrics` has `loss`, `grad_norm`,
  `learning_rate` and the loss's own `metrics`.
  """

  def micro_loss(params, rest, batch, normalizers):
    model = nnx.merge(graphdef, params, rest)
    sums = loss.sums(loss.forward(model, batch), batch)
    rest = nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))
    return loss.value(sums, normalizers), (sums, rest)

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def train_step(state: TrainState, batch):
    normalizers = loss.normalizers(batch)
    if grad_accum_steps == 1:
      (value, (sums, rest)), grads = grad_fn(state.params, state.rest, batch, normalizers)
    else:  # micro-batches as in make_train_step: row r of micro-batch i is row r·k + i
      micro = jax.tree.map(
          lambda x: jnp.swapaxes(x.reshape((-1, grad_accum_steps) + x.shape[1:]), 0, 1), batch)

      def accumulate(carry, mb):
        value, sums, grads, rest = carry
        (v, (s, rest)), g = grad_fn(state.params, rest, mb, normalizers)
        return (value + v, jax.tree.map(jnp.add, sums, s), jax.tree.map(jnp.add, grads, g),
                rest), None

      first = jax.tree.map(lambda x: x[0], micro)  # the others are added to its results
      (value, (sums, rest)), grads = grad_fn(state.params, state.rest, first, normalizers)
      (value, sums, grads, rest), _ = jax.lax.scan(
          accumulate, (value, sums, grads, rest), jax.tree.map(lambda x: x[1:], micro))
    if trainable is not None:
      grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": value, "grad_norm": optax.tree.norm(grads),
               "learning_rate": schedule(state.step), **loss.metrics(sums, normalizers)}
    return TrainState(state.step + 1, params, opt_state, rest), metrics

  return train_step


def make_loss_eval_step(graphdef, loss: Any) -> Callable:
  """`eval_step(params, rest, batch) -> loss.sums(...)` (no dropout): the evaluation adds them
  up over batches and normalizes at the end."""

  def eval_step(params, rest, batch):
    return loss.sums(loss.forward(nnx.merge(graphdef, params, rest), batch), batch)

  return eval_step
