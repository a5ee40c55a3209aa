"""AdamW with warmup and cosine or linear decay, gradient clipping and a weight-decay mask."""

from __future__ import annotations

from typing import Any

import jax
import optax

# Parameters whose path contains one of these take no weight decay: biases, norm scales, the
# token embedding and the positional schemes' own parameters (ALiBi-like slopes, T5 tables, ...).
NO_DECAY = ("bias", "scale", "embedding", "positional")


def learning_rate_schedule(train_cfg) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate`, then cosine or linear decay to
  `end_lr_fraction · learning_rate` at `steps`."""
  peak, steps, warmup = train_cfg.learning_rate, train_cfg.steps, train_cfg.warmup_steps
  end = peak * train_cfg.end_lr_fraction
  decay_steps = max(steps - warmup, 1)
  if train_cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=train_cfg.end_lr_fraction)
  elif train_cfg.schedule == "linear":
    decay = optax.linear_schedule(peak, end, decay_steps)
  else:
    raise ValueError(f"train.schedule={train_cfg.schedule!r}: choose cosine or linear")
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def weight_decay_mask(params: Any) -> Any:
  """True for the parameters that take weight decay (matrices of the blocks and heads)."""
  def decays(path, _):
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    return not any(word in name for name in names for word in NO_DECAY)
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(train_cfg, trainable: Any = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW as above; with `trainable` (a tree of bools like the parameters), the parameters
  marked False are frozen: their updates are zero and they hold no optimizer state."""
  schedule = learning_rate_schedule(train_cfg)
  tx = optax.chain(
      optax.clip_by_global_norm(train_cfg.grad_clip_norm),
      optax.adamw(schedule, b1=train_cfg.b1, b2=train_cfg.b2,
                  weight_decay=train_cfg.weight_decay, mask=weight_decay_mask))
  if trainable is not None and not all(jax.tree.leaves(trainable)):
    labels = jax.tree.map(lambda t: "train" if t else "frozen", trainable)
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule
