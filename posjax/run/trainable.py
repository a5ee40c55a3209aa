"""A model family and config made trainable on a mesh: sharded state, optimizer, jitted steps."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from posjax import models
from posjax.nn import peft
from posjax.run import sharding
from posjax.run.optimizer import make_optimizer
from posjax.run.steps import TrainState, make_eval_step, make_loss_eval_step
from posjax.run.steps import make_loss_train_step, make_train_step, split_model


@dataclasses.dataclass
class Trainable:
  mesh: Mesh
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  state_sharding: TrainState      # a NamedSharding for every leaf of the state
  abstract_state: TrainState      # ShapeDtypeStructs with those shardings (for restoring)
  train_step: Callable            # jit(state, batch) -> (state, metrics); donates the state
  eval_step: Callable             # jit(params, rest, batch) -> sums
  predict_step: Callable          # jit(params, rest, batch) -> sums and argmax predictions
  is_finite: Callable             # jit(state) -> whether every float in it is finite
  create: Callable[[], TrainState]  # fresh state, created sharded
  num_params: int
  trainable: Any                  # bools like the parameters: which ones train
  num_trainable: int


def make_trainable(family: str, cfg: models.TransformerConfig, train_cfg, mesh: Mesh, *,
                   seed: int = 0, peft_config: Optional[peft.PeftConfig] = None,
                   loss: Any = None, **head_options) -> Trainable:
  """Everything to train `family` on `mesh`; `peft_config` adds its modules and freezes the
  parameters it does not train (see `posjax.nn.peft`). `loss`: an objective's own loss (see
  `steps.make_loss_train_step`; its eval and predict steps return the loss's sums); None: the
  weighted token cross-entropy of `model(inputs, positions, segment_ids)`."""
  peft_config = peft_config or peft.PeftConfig()
  build = lambda: peft.apply(models.build(family, cfg, seed=seed, **head_options), peft_config,
                             seed=seed)
  train_graphdef, eval_graphdef, abstract_params, abstract_rest = split_model(
      nnx.eval_shape(build))
  params = nnx.to_pure_dict(abstract_params)
  trainable = peft.trainable_mask(params, peft_config)
  tx, schedule = make_optimizer(train_cfg, trainable)
  replicated = sharding.replicated(mesh)
  rest = nnx.to_pure_dict(abstract_rest)
  param_sh = sharding.param_shardings(abstract_params, mesh)
  opt_state = jax.eval_shape(tx.init, params)
  frozen = lambda x: isinstance(x, optax.MaskedNode)  # no state for a frozen parameter
  opt_sh = optax.tree_map_params(tx, lambda x, s: x if frozen(x) else s, opt_state, param_sh,
                                 transform_non_params=lambda _: replicated, is_leaf=frozen)
  rest_sh = jax.tree.map(lambda _: replicated, rest)
  state_sharding = TrainState(step=replicated, params=param_sh, opt_state=opt_sh, rest=rest_sh)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, opt_state, rest), state_sharding)
  batch_sh = sharding.batch_sharding(mesh)
  if loss is None:
    step = make_train_step(train_graphdef, tx, schedule,
                           grad_accum_steps=train_cfg.grad_accum_steps, trainable=trainable)
    evaluate = make_eval_step(eval_graphdef)
    predict = make_eval_step(eval_graphdef, predictions=True)
  else:
    step = make_loss_train_step(train_graphdef, tx, schedule, loss,
                                grad_accum_steps=train_cfg.grad_accum_steps, trainable=trainable)
    evaluate = predict = make_loss_eval_step(eval_graphdef, loss)
  train_step = jax.jit(step, in_shardings=(state_sharding, batch_sh),
                       out_shardings=(state_sharding, None), donate_argnums=0)
  eval_step = jax.jit(evaluate, in_shardings=(param_sh, rest_sh, batch_sh))
  predict_step = jax.jit(predict, in_shardings=(param_sh, rest_sh, batch_sh))

  def create() -> TrainState:
    def fresh():
      _, p, r = nnx.split(build(), nnx.Param, ...)
      p = nnx.to_pure_dict(p)
      return TrainState(jnp.zeros((), jnp.int32), p, tx.init(p), nnx.to_pure_dict(r))
    with jax.set_mesh(mesh):
      return jax.jit(fresh, out_shardings=state_sharding)()

  num_trainable, num_params = peft.count(params, trainable)
  return Trainable(mesh, tx, schedule, state_sharding, abstract_state, train_step, eval_step,
                   predict_step, jax.jit(all_finite), create, num_params, trainable,
                   num_trainable)


def all_finite(tree) -> jax.Array:
  """Whether every floating-point value in `tree` is finite (a scalar bool)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
