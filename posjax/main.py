"""posjax's entry point: train and/or evaluate a model described by a config file.

  python -m posjax.main --config=configs/lm.py --workdir=runs/lm [--config.model.pe=alibi ...]
  python -m posjax.main --config=configs/lm.py --workdir=runs/lm --config.mode=eval

A workdir holds one run (`posjax.run.record`). Resuming it needs the config it was trained with
(a differing training field is an error that lists it); `mode=eval` and `mode=generate` rebuild
the run from its recorded config whatever config file is named, taking from the command line only
`mode` and the fields set explicitly with `--config.<field>` (evaluation and generation options
freely, training fields only with `--allow_changes`).
"""

from __future__ import annotations

import logging as py_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from posjax import configs
from posjax.evaluate import generate, run_report
from posjax.run import distributed, lock, metrics, preemption, record
from posjax.run.experiment import Run
from posjax.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
_ALLOW_CHANGES = flags.DEFINE_list(
    "allow_changes", [],
    "Training fields (dotted names, or 'all') that may differ from the run recorded in --workdir, "
    "e.g. model.pe_options to evaluate a RoPE run under a context-extension scaling.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(py_logging.Filter):
  """Keeps the console readable: Orbax, TFDS and grain log every file they touch at INFO."""

  NOISY = ("/orbax/", "/tensorflow_datasets/", "/grain/", "/etils/", "xla_bridge.py")

  def filter(self, record_):
    return record_.levelno >= py_logging.WARNING or not any(
        part in record_.pathname for part in self.NOISY)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for handler in py_logging.getLogger().handlers + [logging.get_absl_handler()]:
    handler.addFilter(_QuietLibraries())
  distributed.initialize_from_environment()  # before JAX is used (a no-op on its own)
  config, workdir = _CONFIG.value, _WORKDIR.value
  allow = True if "all" in _ALLOW_CHANGES.value else tuple(_ALLOW_CHANGES.value)
  if config.mode in ("eval", "generate"):
    overrides = config_flags.get_override_values(flags.FLAGS["config"])  # set explicitly
    config = record.for_workdir(workdir, config, overrides=overrides, allow_changes=allow)
    if record.read_config(workdir) is None:
      metrics.log(f"warning: {workdir} has no {record.CONFIG_FILE} (a run from before run "
                  "records): using the config given on the command line as it is")
    else:
      metrics.log(f"{config.mode}: the run recorded in {workdir} ({config.task} on "
                  f"{config.data.name}, {config.model.pe})")
  if config.mode == "generate":  # continuations of config.generate.prompt from the checkpoint
    generate.run_from_config(config, workdir)
    return
  os.makedirs(workdir, exist_ok=True)
  import jax  # pylint: disable=g-import-not-at-top  (after the distributed runtime starts)
  with lock.hold(workdir, primary=jax.process_index() == 0):
    run = Run(config, workdir, allow_changes=allow)
    if config.mode in ("train", "train_and_eval"):
      state = loop.train(run)
    else:
      if run.checkpointer.latest_step() is None:
        raise ValueError(f"mode=eval needs a checkpoint, and {workdir} has none: train first or "
                         "point --workdir at a trained run")
      state, _ = run.restore()
    if config.mode in ("eval", "train_and_eval"):
      try:
        with preemption.exit_on_signal():
          text = run_report.report(run, state)
      except preemption.Preempted as e:
        metrics.log(f"{e} during the final report: the run's checkpoint is saved; "
                    f"`--config.mode=eval --workdir={workdir}` writes the report later")
        raise SystemExit(0) from None
      if jax.process_index() == 0:  # every process has it; one prints it
        print("\n" + text + "\n", flush=True)
  logging.info("done: %s", workdir)


if __name__ == "__main__":
  app.run(main, argv=configs.with_config_found(sys.argv))
