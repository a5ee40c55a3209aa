"""The experiment: build everything from the config, train with checkpoints and metrics, evaluate.

One `Experiment` serves the three modes of `posjax.main`. All input errors are raised by its
constructor, before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Optional

import jax
import numpy as np
from absl import logging

from jax.experimental.multihost_utils import process_allgather

from posjax import data
from posjax.data import labelled
from posjax.data.shakespeare_tasks import describe
from posjax.evaluate import classification
from posjax.nn import peft
from posjax.train import checkpointing, flops, metrics as metrics_lib, pretrained, sharding
from posjax.train.config import check_run, model_config
from posjax.train.steps import TrainState
from posjax.train.trainable import make_trainable


@dataclasses.dataclass
class LengthResult:
  seq_len: int
  multiplier: float
  loss: float
  perplexity: float
  accuracy: float
  tokens: int


class Experiment:
  """Model, optimizer, mesh, data and steps for one run, from its `ConfigDict`."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.kind = labelled.KINDS.get(config.task)  # sequence/token labels, or None for LM and MLM
    self._passages = {}
    if self.kind is None:
      data.documents(config.data, "validation")  # an unknown or unreadable dataset fails here
    self.hf_dir = config.train.get("init_from_hf", "")
    if self.hf_dir:  # fine-tuning a Hugging Face BERT: its config and vocabulary
      self.tokenizer, self.cfg = pretrained.hf_backbone(config.model, self.hf_dir)
    else:
      self.tokenizer = data.get_tokenizer(config.data)
      self.cfg = model_config(config, self.tokenizer.vocab_size)
    self.mesh = sharding.make_mesh(config.mesh)
    check_run(config, self.cfg, jax.device_count(), dict(self.mesh.shape))
    self.family = config.model.family
    self.peft = peft.PeftConfig.from_config(config.get("peft", {}))
    self.peft.validate(self.cfg.num_layers)
    head_options = self._head_options() if self.kind else {}
    self.trainable = make_trainable(self.family, self.cfg, config.train, self.mesh,
                                    seed=config.seed, peft_config=self.peft, **head_options)
    self.checkpointer = checkpointing.Checkpointer(
        workdir, keep=config.train.keep_checkpoints, best_metric=config.train.best_metric or None,
        best_mode=config.train.get("best_mode", "min"))

  def _head_options(self) -> dict:
    """Labels from the training set (built now, so bad data fails before compiling)."""
    seq_len = self.config.data.seq_len
    train, validation = (self.passages(s, seq_len) for s in ("train", "validation"))
    for split, passages in (("train", train), ("validation", validation)):
      logging.info("%s %s: %s", self.config.data.name, split, describe(passages))
    head = self.config.get("head", {})
    options = {"representation_layer": bool(head.get("representation_layer", False))}
    if self.kind == "sequence":
      return dict(options, num_classes=len(train.label_names), pooling=self._pooling())
    return dict(options, num_labels=len(train.label_names))

  def _pooling(self) -> str:
    return self.config.get("head", {}).get("pooling", "mean")

  def passages(self, split: str, seq_len: int) -> labelled.Passages:
    """The labelled examples of `split` at most `seq_len` tokens long (cached)."""
    if (split, seq_len) not in self._passages:
      name = self.config.data.get(f"{split}_split", split)  # e.g. imdb_reviews has no validation
      self._passages[split, seq_len] = labelled.load_passages(
          self.config.data, name, kind=self.kind, seq_len=seq_len)
    return self._passages[split, seq_len]

  # State --------------------------------------------------------------------------------------

  def init_state(self) -> TrainState:
    """Fresh parameters, created already sharded (no full copy on one device)."""
    state = self.trainable.create()
    init_from = self.config.train.init_from
    if init_from and self.kind is None:
      params = checkpointing.restore_params(init_from, self.trainable.abstract_state.params)
      state = state.replace(params=params)
      logging.info("parameters initialised from %s", init_from)
    elif self.hf_dir:
      loaded, fresh = pretrained.hf_params(self.hf_dir, self.family,
                                           self.trainable.abstract_state.params,
                                           source_path=peft.pretrained_path)
      state = state.replace(params=self._fill(state.params, loaded))
      logging.info("init_from_hf %s: %d tensors loaded; initialised afresh: %s", self.hf_dir,
                   len(loaded), ", ".join(fresh) or "none")
    elif init_from:  # fine-tuning: the backbone from a pretraining run, the head fresh
      loaded, fresh, unused = checkpointing.restore_pretrained(
          init_from, self.trainable.abstract_state.params, source_path=peft.pretrained_path)
      state = state.replace(params=self._fill(state.params, loaded))
      logging.info("init_from %s: %d tensors loaded; initialised afresh: %s; unused in the "
                   "checkpoint: %s", init_from, len(loaded), ", ".join(fresh) or "none",
                   ", ".join(unused) or "none")
    return state

  def _fill(self, params, loaded: dict):
    """`params` with the leaves named in `loaded` (by path) replaced, on the same shardings."""
    def pick(path, x):
      value = loaded.get("/".join(checkpointing.key_name(k) for k in path))
      return x if value is None else jax.device_put(np.asarray(value, x.dtype), x.sharding)
    return jax.tree_util.tree_map_with_path(pick, params)

  def restore_or_init(self):
    """`(state, data_state)`: the latest checkpoint of the workdir if there is one."""
    if self.checkpointer.latest_step() is not None:
      state, data_state = self.checkpointer.restore(self.trainable.abstract_state)
      logging.info("resumed from step %d in %s", int(state.step), self.workdir)
      return state, data_state
    return self.init_state(), None

  # Data ---------------------------------------------------------------------------------------

  def _dataset(self, split: str, seq_len: int, batch_size: int, *, train: bool):
    common = dict(batch_size=batch_size // jax.process_count(), seed=self.config.data.seed,
                  shuffle=train, repeat=train, process_index=jax.process_index(),
                  process_count=jax.process_count(), drop_remainder=train)
    if self.kind is not None:
      return labelled.make_labelled_dataset(self.passages(split, seq_len), self.tokenizer,
                                            seq_len=seq_len, cls=self._pooling() == "cls",
                                            **common)
    make = data.make_mlm_dataset if self.config.task == "mlm" else data.make_lm_dataset
    return make(self.config.data, split=split, seq_len=seq_len, tokenizer=self.tokenizer,
                **common)

  def _global(self, host_batch):
    # Evaluation batches arrive full: the pipeline pads a short last batch with weightless rows.
    return sharding.global_batch(host_batch, self.mesh)

  # Training -----------------------------------------------------------------------------------

  def train(self, stop_after: Optional[int] = None) -> TrainState:
    """Train to `train.steps`, resuming from the workdir's latest checkpoint.

    `stop_after` ends this call after that many steps, with a checkpoint, as a preemption would.
    A resumed run goes on as if it had never stopped: early stopping counts on from the
    checkpoint's state, and the metrics logged after the checkpoint are dropped (those steps are
    run and logged again; see `metrics_lib.MetricsWriter`).
    """
    config, tc = self.config, self.config.train
    state, data_state = self.restore_or_init()
    start = int(state.step)
    stopper = EarlyStopping(tc.get("early_stopping_patience", 0), tc.best_metric,
                            tc.get("best_mode", "min"))
    stopper.load_state_dict(self.checkpointer.loop_state(start).get("early_stopping"))
    if stopper.should_stop:
      logging.info("early stopping ended this run at step %d: nothing to train (raise "
                   "train.early_stopping_patience, or set it to 0, to train on)", start)
      return state
    seq_len, batch = config.data.seq_len, config.data.global_batch_size
    train_iter = iter(self._dataset("train", seq_len, batch, train=True))
    if data_state is not None:
      train_iter.set_state(data_state)
    writer = metrics_lib.MetricsWriter(self.workdir, is_primary=jax.process_index() == 0,
                                       start_step=start)
    progress = metrics_lib.Progress(tc.steps, every=tc.log_every, start=start)
    preempted = checkpointing.install_preemption_handler()
    flops_per_token = flops.decoder_flops_per_token(self.cfg, seq_len)
    peak = flops.peak_flops_per_device(jax.devices()[0])
    logging.info("%s: %.2fM parameters (%d trained: peft %s), %s, mesh %s", self.family,
                 self.trainable.num_params / 1e6, self.trainable.num_trainable, self.peft.method,
                 self.cfg.pe, dict(self.mesh.shape))

    step_fn, last_log, last_log_step = None, time.perf_counter(), start
    stopping = was_preempted = False
    for step in range(start, tc.steps):
      batch_arrays = self._global(next(train_iter))
      if step_fn is None:
        t0 = time.perf_counter()
        step_fn = self.trainable.train_step.lower(state, batch_arrays).compile()
        # At the first step it serves, like every record of this call (all after `start`).
        writer.write_scalars(step + 1, {"compile_seconds": time.perf_counter() - t0})
        last_log = time.perf_counter()
      state, metrics = step_fn(state, batch_arrays)
      done = step + 1
      was_preempted = preempted(done)
      stopping = was_preempted or (stop_after is not None and done - start >= stop_after)
      is_last = done == tc.steps or stopping
      if done % tc.log_every == 0 or is_last:
        metrics = jax.device_get(metrics)
        self._check_finite(metrics["loss"], done)
        elapsed = time.perf_counter() - last_log
        steps_since = done - last_log_step
        tokens = batch * seq_len * steps_since
        scalars = {"train/loss": metrics["loss"], "train/perplexity": np.exp(metrics["loss"]),
                   "train/grad_norm": metrics["grad_norm"],
                   "train/learning_rate": metrics["learning_rate"],
                   "perf/step_seconds": elapsed / steps_since,
                   "perf/tokens_per_second": tokens / elapsed}
        model_flops = flops_per_token * tokens / elapsed
        scalars["perf/model_tflops_per_second"] = model_flops / 1e12
        if peak:
          scalars["perf/mfu"] = flops.mfu(tokens / elapsed, flops_per_token, jax.device_count(),
                                          peak)
        writer.write_scalars(done, scalars)
        progress.update(done, scalars, force=is_last)
        last_log, last_log_step = time.perf_counter(), done
      eval_metrics = None
      # Only the scheduled evaluations count for early stopping and "best": not the extra one of
      # an interrupted run, which an uninterrupted run would not have made.
      scheduled = done % tc.eval_every == 0
      if scheduled or is_last:
        eval_metrics = self.validate(state)
        writer.write_scalars(done, eval_metrics)
        progress.message(f"step {done}: validation " + ", ".join(
            f"{k.split('/')[-1]} {v:.4f}" for k, v in eval_metrics.items()))
        if scheduled and stopper.update(eval_metrics) and not is_last:
          progress.message(f"early stopping: {tc.best_metric} has not improved on "
                           f"{stopper.best:.4f} for {stopper.patience} evaluations")
          stopping = is_last = True
        last_log, last_log_step = time.perf_counter(), done  # eval time is not step time
      if done % tc.checkpoint_every == 0 or is_last:
        if eval_metrics is None:
          self._check_finite(jax.device_get(metrics["loss"]), done)
        ranked = scheduled or done == tc.steps
        self.checkpointer.save(done, state, data_state=train_iter.get_state(),
                               metrics=eval_metrics if ranked else None, force=True,
                               loop_state={"early_stopping": stopper.state_dict()})
      if stopping:
        progress.message(f"stopping at step {done}; the checkpoint is saved")
        break
    self.checkpointer.wait()
    preempted.uninstall()
    progress.close()
    writer.close()
    if stopping and was_preempted:
      # The process was asked to stop (SIGTERM): leave now, also from inside a sweep.
      raise SystemExit(f"stopped on SIGTERM at step {done}; the checkpoint is saved and a rerun "
                       "with the same --workdir resumes from it")
    return state

  def _check_finite(self, loss, step):
    if not np.isfinite(loss):
      self.checkpointer.wait()
      raise FloatingPointError(
          f"the training loss is {loss} at step {step}: stopping. The last checkpoint "
          f"(step {self.checkpointer.latest_step()}) is intact; lower train.learning_rate, "
          "raise train.warmup_steps or check the data, then rerun to resume from it")

  # Evaluation ---------------------------------------------------------------------------------

  def validate(self, state) -> dict[str, float]:
    """The periodic validation metrics (`eval/...`) at the training length."""
    seq_len = self.config.data.seq_len
    if self.kind is not None:
      report = self.evaluate_labelled(state, "validation", seq_len)
      return {f"eval/{k}": v for k, v in labelled_metrics(report).items()}
    result = self.evaluate_length(state, seq_len, self.config.eval.num_batches)
    return {"eval/loss": result.loss, "eval/perplexity": result.perplexity,
            "eval/accuracy": result.accuracy}

  def evaluate_labelled(self, state, split: str, seq_len: int) -> dict:
    """Loss, accuracy, macro-F1 and the per-class report (and entity scores for tagging) of the
    whole `split`, with passages of at most `seq_len` tokens."""
    totals, rows = {"loss_sum": 0.0, "weight_sum": 0.0}, []
    batch_size = self.config.eval.batch_size
    for host_batch in self._dataset(split, seq_len, batch_size, train=False):
      batch = self._global(host_batch)
      out = self.trainable.predict_step(state.params, state.rest, batch)
      for k in totals:
        totals[k] += float(jax.device_get(out[k]))
      rows.append(process_allgather({"predictions": out["predictions"],
                                     "targets": batch["targets"], "weights": batch["weights"]},
                                    tiled=True))
    rows = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    names = self.passages(split, seq_len).label_names
    if self.kind == "token":
      report = classification.tagging_report(rows["predictions"], rows["targets"],
                                             rows["weights"], names)
    else:
      keep = rows["weights"] > 0
      report = classification.class_report(rows["predictions"][keep], rows["targets"][keep],
                                            len(names))
    report["loss"] = totals["loss_sum"] / max(totals["weight_sum"], 1.0)
    report["examples"] = len(self.passages(split, seq_len))
    return report

  def evaluate_length(self, state, seq_len: int, num_batches: int) -> LengthResult:
    """Validation loss over non-overlapping windows of `seq_len` tokens."""
    batch_size = self.config.eval.batch_size
    totals = {"loss_sum": 0.0, "weight_sum": 0.0, "correct_sum": 0.0}
    for i, host_batch in enumerate(self._dataset("validation", seq_len, batch_size, train=False)):
      if num_batches and i >= num_batches:
        break
      out = jax.device_get(self.trainable.eval_step(state.params, state.rest,
                                           self._global(host_batch)))
      for k in totals:
        totals[k] += float(out[k])
    if totals["weight_sum"] == 0:
      raise ValueError(f"the validation split has no window of {seq_len} tokens to evaluate")
    loss = totals["loss_sum"] / totals["weight_sum"]
    return LengthResult(seq_len, seq_len / self.config.data.seq_len, loss, float(np.exp(loss)),
                        totals["correct_sum"] / totals["weight_sum"], int(totals["weight_sum"]))

  def report(self, state) -> str:
    """The run's final evaluation, written under the workdir; returns it as Markdown.

    LM and MLM: validation loss and perplexity at each `eval.length_multipliers` × seq_len
    (`eval_by_length.md`). Fine-tuning: the best checkpoint (by `train.best_metric`) on the
    validation split, and on the test split with passages up to each multiplier × seq_len
    (`finetune_report.md`, and everything in `finetune_results.json`).
    """
    config = self.config
    if self.kind is None:
      table = length_table(self.evaluate_lengths(state))
      with open(os.path.join(self.workdir, "eval_by_length.md"), "w") as f:
        f.write(table + "\n")
      return (f"Validation by evaluation length ({config.model.pe}, trained at "
              f"{config.data.seq_len} tokens):\n{table}")
    best = self.checkpointer.best_step()
    if best is not None and best != int(state.step):
      state, _ = self.checkpointer.restore(self.trainable.abstract_state, step=best)
    step, seq_len = int(state.step), config.data.seq_len
    rows = [dict(split="validation", seq_len=seq_len, multiplier=1.0,
                 **self.evaluate_labelled(state, "validation", seq_len))]
    if config.data.get("test_split", "test"):
      for m in config.eval.length_multipliers:
        rows.append(dict(split="test", seq_len=int(seq_len * m), multiplier=float(m),
                         **self.evaluate_labelled(state, "test", int(seq_len * m))))
    names = self.passages("validation", seq_len).label_names
    detail = rows[1] if len(rows) > 1 else rows[0]  # test at the training length, if any
    text = (f"{config.data.name}: {self.cfg.pe}, peft {self.peft.method} "
            f"({self.trainable.num_trainable:,} of {self.trainable.num_params:,} parameters "
            f"trained), checkpoint of step {step}\n\n{labelled_table(rows)}\n\n"
            f"Per class, {detail['split']} at {detail['seq_len']} tokens:\n\n"
            + classification.format_report(detail, names))
    summary = dict(pe=self.cfg.pe, peft=self.peft.method, step=step, labels=list(names),
                   trainable_params=self.trainable.num_trainable,
                   total_params=self.trainable.num_params, results=rows)
    with open(os.path.join(self.workdir, "finetune_report.md"), "w") as f:
      f.write(text + "\n")
    with open(os.path.join(self.workdir, "finetune_results.json"), "w") as f:
      json.dump(summary, f, indent=1)
    return text

  def evaluate_lengths(self, state) -> list[LengthResult]:
    """Validation at each `eval.length_multipliers` × seq_len on the same text: at k × L, the
    evaluation takes num_batches / k batches (rounded up), i.e. the same number of tokens from the
    start of the same validation stream (exactly the same when k divides num_batches)."""
    ec = self.config.eval
    return [self.evaluate_length(state, int(self.config.data.seq_len * m),
                                 math.ceil(ec.num_batches / m) if ec.num_batches else 0)
            for m in ec.length_multipliers]


def labelled_table(rows: list[dict]) -> str:
  """A Markdown table of labelled evaluations: split, length, examples, scores."""
  entity = any("entity" in r for r in rows)
  lines = ["| split | max tokens | × train length | examples | accuracy | macro-F1 |"
           + (" entity F1 |" if entity else ""),
           "|---|---:|---:|---:|---:|---:|" + ("---:|" if entity else "")]
  for r in rows:
    line = (f"| {r['split']} | {r['seq_len']} | {r['multiplier']:g} | {r['examples']} | "
            f"{r['accuracy']:.4f} | {r['macro_f1']:.4f} |")
    lines.append(line + (f" {r['entity']['f1']:.4f} |" if entity else ""))
  return "\n".join(lines)


def labelled_metrics(report: dict) -> dict[str, float]:
  """The scalars of a labelled-evaluation report: loss, accuracy, macro_f1 (and entity_f1)."""
  metrics = {k: float(report[k]) for k in ("loss", "accuracy", "macro_f1")}
  if "entity" in report:
    metrics["entity_f1"] = float(report["entity"]["f1"])
  return metrics


class EarlyStopping:
  """Stop when `metric` has not improved for `patience` evaluations in a row (0: never)."""

  def __init__(self, patience: int, metric: str, mode: str = "min"):
    self.patience, self.metric, self.mode = patience, metric, mode
    self.sign = 1.0 if mode == "min" else -1.0
    self.best, self._since = None, 0

  def update(self, metrics: dict) -> bool:
    """Record one evaluation; True when training should stop."""
    if not self.patience or not self.metric or self.metric not in metrics:
      return False
    value = float(metrics[self.metric])
    if self.best is None or self.sign * value < self.sign * self.best:
      self.best, self._since = value, 0
    else:
      self._since += 1
    return self.should_stop

  @property
  def should_stop(self) -> bool:
    return bool(self.patience) and self._since >= self.patience

  def state_dict(self) -> dict:
    """What a checkpoint keeps, so that a resumed run stops where an uninterrupted one would."""
    return {"metric": self.metric, "mode": self.mode, "best": self.best,
            "evaluations_since_best": self._since}

  def load_state_dict(self, state: Optional[dict]) -> None:
    """Go on from a checkpoint's `state_dict()`; start afresh without one (a fresh run, an older
    checkpoint) or when it ranked by another metric or direction."""
    if state and (state["metric"], state["mode"]) == (self.metric, self.mode):
      self.best, self._since = state["best"], int(state["evaluations_since_best"])


def length_table(results: list[LengthResult]) -> str:
  """A Markdown table of validation loss and perplexity by evaluation length."""
  lines = ["| length | × train length | val loss | val perplexity | val accuracy | tokens |",
           "|---:|---:|---:|---:|---:|---:|"]
  for r in results:
    lines.append(f"| {r.seq_len} | {r.multiplier:g} | {r.loss:.4f} | {r.perplexity:.3f} | "
                 f"{r.accuracy:.3f} | {r.tokens} |")
  return "\n".join(lines)
