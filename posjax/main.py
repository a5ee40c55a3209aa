"""posjax's entry point: train and/or evaluate a model described by a config file.

  python -m posjax.main --config=configs/lm.py --workdir=runs/lm [--config.model.pe=alibi ...]
"""

from __future__ import annotations

import logging as py_logging
import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(py_logging.Filter):
  """Keeps the console readable: Orbax, TFDS and grain log every file they touch at INFO."""

  NOISY = ("/orbax/", "/tensorflow_datasets/", "/grain/", "/etils/", "xla_bridge.py")

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or not any(
        part in record.pathname for part in self.NOISY)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for handler in py_logging.getLogger().handlers + [logging.get_absl_handler()]:
    handler.addFilter(_QuietLibraries())
  from posjax.train import sharding  # noqa: the distributed runtime starts before JAX is used
  sharding.maybe_initialize_distributed()
  from posjax.train import loop

  config, workdir = _CONFIG.value, _WORKDIR.value
  if config.mode == "generate":  # continuations of config.generate.prompt from the checkpoint
    from posjax.evaluate import generate
    generate.run_from_config(config, workdir)
    return
  os.makedirs(workdir, exist_ok=True)
  experiment = loop.Experiment(config, workdir)
  if config.mode in ("train", "train_and_eval"):
    state = experiment.train()
  else:
    if experiment.checkpointer.latest_step() is None:
      raise ValueError(f"mode=eval needs a checkpoint, and {workdir} has none: train first or "
                       "point --workdir at a trained run")
    state, _ = experiment.restore_or_init()
  if config.mode in ("eval", "train_and_eval"):
    print("\n" + experiment.report(state) + "\n", flush=True)
  logging.info("done: %s", workdir)


if __name__ == "__main__":
  app.run(main)
