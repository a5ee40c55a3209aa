"""The training loop: one for every objective (LM, MLM, labelled), with checkpoints and metrics.

`train(run)` trains a `posjax.run.Run` to `train.steps`, resuming from the workdir's latest
checkpoint as if it had never stopped. What it guarantees:
  - the run's config and provenance are recorded in the workdir before the first step, and the
    workdir is locked for the duration (a second run on it fails at once);
  - a state is saved only if every value in it is finite, so a diverging run stops with the
    latest checkpoint intact and named;
  - metrics are flushed with each checkpoint, so a crash loses no point logged before it;
  - on SIGTERM the step in progress finishes, a checkpoint is saved at once (no validation
    first) and the process exits with status 0;
  - tokens/s and the time left count training steps only, not compilation, validation or saving.
"""

from __future__ import annotations

import time
from typing import Optional

import jax
import numpy as np

from posjax.run import lock, metrics as metrics_lib, preemption, record
from posjax.run.experiment import Run
from posjax.run.steps import TrainState
from posjax.train import flops
from posjax.train.early_stopping import EarlyStopping


class Diverged(FloatingPointError):
  """The loss or the state became non-finite."""


def train(run: Run, stop_after: Optional[int] = None) -> TrainState:
  """Train `run` to `train.steps`, resuming from its workdir's latest checkpoint.

  `stop_after` ends this call after that many steps, with a checkpoint, as a preemption would.
  """
  primary = jax.process_index() == 0
  with lock.hold(run.workdir, primary=primary):
    return _train(run, stop_after)


def _train(run: Run, stop_after: Optional[int]) -> TrainState:
  config, tc = run.config, run.config.train
  primary = jax.process_index() == 0
  record.write(run.workdir, config, changes=run.changes)
  state, data_state = run.restore_or_init()
  start = int(state.step)
  stopper = EarlyStopping(tc.early_stopping_patience, tc.best_metric, tc.best_mode)
  stopper.load_state_dict(run.checkpointer.loop_state(start).get("early_stopping"))
  if stopper.should_stop:
    metrics_lib.log(f"early stopping ended this run at step {start}: nothing to train (raise "
                    "train.early_stopping_patience, or set it to 0, to train on)")
    return state
  seq_len, batch = run.objective.train_seq_len, config.data.global_batch_size
  train_iter = iter(run.dataset("train", seq_len, batch, train=True))
  if data_state is not None:
    train_iter.set_state(data_state)
  writer = metrics_lib.MetricsWriter(run.workdir, is_primary=primary, start_step=start)
  writer.write_config(config)
  progress = metrics_lib.Progress(tc.steps, every=tc.log_every, start=start,
                                  log_path=f"{run.workdir}/train.log" if primary else None)
  preempted = preemption.install_handler()
  flops_per_token = flops.decoder_flops_per_token(run.cfg, seq_len)
  peak = flops.peak_flops_per_device(jax.devices()[0])
  progress.message(f"{run.family}: {run.trainable.num_params / 1e6:.2f}M parameters "
                   f"({run.trainable.num_trainable} trained: peft {run.peft.method}), "
                   f"{run.cfg.pe}, mesh {dict(run.mesh.shape)}, from step {start}")

  def save(done, eval_metrics, ranked):
    if not bool(jax.device_get(run.trainable.is_finite(state))):
      raise _diverged(run, f"the model state holds non-finite values at step {done}", done)
    run.checkpointer.save(done, state, data_state=train_iter.get_state(),
                          metrics=eval_metrics if ranked else None,
                          loop_state={"early_stopping": stopper.state_dict()})
    writer.flush()

  step_fn, window_seconds, window_steps, done = None, 0.0, 0, start
  was_preempted = stopping = False
  try:
    for step in range(start, tc.steps):
      batch_arrays = run.global_batch(next(train_iter))
      if step_fn is None:
        t0 = time.perf_counter()
        step_fn = run.trainable.train_step.lower(state, batch_arrays).compile()
        writer.write_scalars(step + 1, {"compile_seconds": time.perf_counter() - t0})
      t0 = time.perf_counter()
      state, metrics = step_fn(state, batch_arrays)
      done = step + 1
      was_preempted = preempted(done)
      stopping = was_preempted or (stop_after is not None and done - start >= stop_after)
      is_last = done == tc.steps or stopping
      logging_step = done % tc.log_every == 0 or is_last
      if logging_step:
        metrics = jax.device_get(metrics)  # waits for the step: its time is complete
      window_seconds += time.perf_counter() - t0
      window_steps += 1
      if logging_step:
        if not np.isfinite(metrics["loss"]):
          raise _diverged(run, f"the training loss is {metrics['loss']} at step {done}", done)
        tokens = batch * seq_len * window_steps
        scalars = {"train/loss": metrics["loss"], "train/perplexity": np.exp(metrics["loss"]),
                   "train/grad_norm": metrics["grad_norm"],
                   "train/learning_rate": metrics["learning_rate"],
                   "perf/step_seconds": window_seconds / window_steps,
                   "perf/tokens_per_second": tokens / window_seconds,
                   "perf/model_tflops_per_second": flops_per_token * tokens / window_seconds / 1e12}
        scalars.update({k: v for k, v in metrics.items() if k.startswith("train/")})  # an
        # objective's own training metrics (e.g. train/nsp_accuracy)
        if peak:
          scalars["perf/mfu"] = flops.mfu(tokens / window_seconds, flops_per_token,
                                          jax.device_count(), peak)
        writer.write_scalars(done, scalars)
        progress.update(done, scalars, force=is_last)
        window_seconds, window_steps = 0.0, 0
      if was_preempted:  # save at once: validating first could outlast the grace period
        save(done, None, ranked=False)
        break
      # Only the scheduled evaluations count for early stopping and "best": not the extra one of
      # an interrupted run, which an uninterrupted run would not have made.
      scheduled = done % tc.eval_every == 0
      eval_metrics = None
      if scheduled or is_last:
        eval_metrics = run.validate(state)
        writer.write_scalars(done, eval_metrics)
        progress.message(f"step {done}: validation " + ", ".join(
            f"{k.split('/')[-1]} {v:.4f}" for k, v in eval_metrics.items()))
        if scheduled and stopper.update(eval_metrics) and not is_last:
          progress.message(f"early stopping: {tc.best_metric} has not improved on "
                           f"{stopper.best:.4f} for {stopper.patience} evaluations")
          stopping = is_last = True
      if done % tc.checkpoint_every == 0 or is_last:
        save(done, eval_metrics, ranked=scheduled or done == tc.steps)
      if stopping:
        break
  finally:
    run.checkpointer.wait()
    preempted.uninstall()
    progress.close()
    writer.close()
  if was_preempted:
    progress.message(f"stopped on SIGTERM at step {done}; the checkpoint is saved and a rerun "
                     "with the same --workdir resumes from it")
    raise SystemExit(0)  # the conventional status of a clean preemption save
  if stopping:
    progress.message(f"stopping at step {done}; the checkpoint is saved")
  return state


def _diverged(run: Run, what: str, step: int) -> Diverged:
  run.checkpointer.wait()
  latest = run.checkpointer.latest_step()
  where = (f"The latest checkpoint, step {latest}, holds finite values (posjax saves no other) "
           "and is kept; lower train.learning_rate, raise train.warmup_steps or check the data, "
           "then rerun to resume from it" if latest is not None else
           "No checkpoint was saved before it; lower train.learning_rate, raise "
           "train.warmup_steps or check the data, and start again")
  return Diverged(f"{what}: stopping. {where}")
