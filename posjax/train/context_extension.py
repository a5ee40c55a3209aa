"""Context extension by fine-tuning: a RoPE run trained on for a few steps at a longer length,
optionally under a scaling (Chen et al. 2023's position-interpolation fine-tune), starting from
the base run's parameters (`train.init_from`)."""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional

import ml_collections

from posjax import configs
from posjax.run.config import scaled_pe_options
from posjax.run.experiment import Run
from posjax.train import loop


def finetune_config(base_config, base_workdir: str, target_len: int, *, steps: int = 100,
                    scaling: Optional[str] = None,
                    overrides: Optional[Mapping[str, Any]] = None) -> ml_collections.ConfigDict:
  """The config of a short fine-tune of `base_workdir`'s run at `target_len` tokens: the base
  config at `data.seq_len = target_len`, RoPE under `scaling` (factor target / train length),
  `train.init_from` the base run, `steps` steps with a tenth of them (at most the base's) as
  warmup, validated and saved at the end; then `overrides` (`{"dotted.field": value}`, e.g.
  `train.learning_rate` or `data.global_batch_size`)."""
  config = ml_collections.ConfigDict(base_config.to_dict())
  train_len = int(base_config.data.seq_len)
  options = scaled_pe_options(config.model.pe, config.model.pe_options, scaling,
                              target_len / train_len, train_len)
  config.model.pe_options = json.dumps(options)
  config.mode = "train"
  config.data.seq_len = int(target_len)
  config.train.init_from = str(base_workdir)
  config.train.steps = int(steps)
  config.train.warmup_steps = min(config.train.warmup_steps, max(1, steps // 10))
  config.train.eval_every = config.train.checkpoint_every = int(steps)
  config.train.log_every = max(1, min(config.train.log_every, steps))
  config.eval.length_multipliers = (1,)
  for dotted, value in (overrides or {}).items():
    configs.set_field(config, dotted, value)
  return config


def finetune(base_config, base_workdir: str, workdir: str, target_len: int, **kwargs):
  """Run (or resume, or skip if done) the fine-tune of `finetune_config(**kwargs)` in `workdir`;
  returns `(config, state)`."""
  config = finetune_config(base_config, base_workdir, target_len, **kwargs)
  run = Run(config, workdir)
  latest = run.checkpointer.latest_step()
  if latest is not None and latest >= config.train.steps:
    state, _ = run.restore()
  else:
    state = loop.train(run)
  return config, state
