"""What a run trains for: its data, its model head and its validation.

An objective is chosen by `config.task` and is the only place that knows the task:
  - `LanguageModeling` (`lm`: next token; `mlm`: masked tokens) reads a text corpus in windows of
    `data.seq_len` tokens and validates by loss, perplexity and accuracy on the validation split;
  - `Labelled` (`classify`: one label a passage; `tag`: one BIO tag a token) reads labelled
    passages and validates by loss, accuracy and macro-F1 (and entity F1 for tags).
The training loop, the final report and the studies ask the objective, never the task name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import numpy as np
from absl import logging
from jax.experimental.multihost_utils import process_allgather

from posjax import data
from posjax.data import labelled
from posjax.data.shakespeare_tasks import describe
from posjax.run import classification


@dataclasses.dataclass
class LengthResult:
  """Next-token (or masked-token) scores over windows of `seq_len` tokens."""
  seq_len: int
  multiplier: float
  loss: float
  perplexity: float
  accuracy: float
  tokens: int


class LanguageModeling:
  """`task=lm` (next token, decoder) or `task=mlm` (masked tokens, encoder)."""

  def __init__(self, config):
    self.config = config
    data.documents(config.data, "validation")  # an unknown or unreadable dataset fails here
    # The last evaluation and the parameters it scored: the final validation of a run is also
    # the ×1 row of its report, which then costs nothing.
    self._last: Optional[tuple[Any, tuple[int, int], LengthResult]] = None

  def head_options(self) -> dict:
    return {}

  def dataset(self, tokenizer, split: str, seq_len: int, **pipeline):
    make = data.make_mlm_dataset if self.config.task == "mlm" else data.make_lm_dataset
    return make(self.config.data, split=split, seq_len=seq_len, tokenizer=tokenizer, **pipeline)

  def validate(self, run, state) -> dict[str, float]:
    result = self.evaluate_length(run, state, self.config.data.seq_len,
                                  self.config.eval.num_batches)
    return {"eval/loss": result.loss, "eval/perplexity": result.perplexity,
            "eval/accuracy": result.accuracy}

  def evaluate_length(self, run, state, seq_len: int, num_batches: int) -> LengthResult:
    """Validation loss over non-overlapping windows of `seq_len` tokens (the first
    `num_batches` batches; 0: the whole split)."""
    key = (seq_len, num_batches)
    if self._last is not None and self._last[0] is state.params and self._last[1] == key:
      return self._last[2]
    totals = {"loss_sum": 0.0, "weight_sum": 0.0, "correct_sum": 0.0}
    batches = run.dataset("validation", seq_len, self.config.eval.batch_size, train=False)
    for i, host_batch in enumerate(batches):
      if num_batches and i >= num_batches:
        break
      out = jax.device_get(run.trainable.eval_step(state.params, state.rest,
                                                   run.global_batch(host_batch)))
      for k in totals:
        totals[k] += float(out[k])
    if totals["weight_sum"] == 0:
      raise ValueError(f"the validation split has no window of {seq_len} tokens to evaluate")
    loss = totals["loss_sum"] / totals["weight_sum"]
    result = LengthResult(seq_len, seq_len / self.config.data.seq_len, loss, float(np.exp(loss)),
                          totals["correct_sum"] / totals["weight_sum"], int(totals["weight_sum"]))
    self._last = (state.params, key, result)  # holding the params keeps their identity unique
    return result


class Labelled:
  """`task=classify` (a label per passage) or `task=tag` (a BIO tag per token)."""

  def __init__(self, config):
    self.config = config
    self.kind = labelled.KINDS[config.task]
    self._passages: dict[tuple[str, int], labelled.Passages] = {}
    seq_len = config.data.seq_len
    for split in ("train", "validation"):  # built now, so bad data fails before compiling
      logging.info("%s %s: %s", config.data.name, split, describe(self.passages(split, seq_len)))
    self.label_names = self.passages("train", seq_len).label_names

  @property
  def cls_pooling(self) -> bool:
    return self.config.head.pooling == "cls"

  def passages(self, split: str, seq_len: int) -> labelled.Passages:
    """The labelled examples of `split` at most `seq_len` tokens long (cached)."""
    if (split, seq_len) not in self._passages:
      name = self.config.data[f"{split}_split"] if split != "train" else "train"
      self._passages[split, seq_len] = labelled.load_passages(
          self.config.data, name, kind=self.kind, seq_len=seq_len)
    return self._passages[split, seq_len]

  def head_options(self) -> dict:
    options = {"representation_layer": bool(self.config.head.representation_layer)}
    if self.kind == "sequence":
      return dict(options, num_classes=len(self.label_names), pooling=self.config.head.pooling)
    return dict(options, num_labels=len(self.label_names))

  def dataset(self, tokenizer, split: str, seq_len: int, **pipeline):
    return labelled.make_labelled_dataset(self.passages(split, seq_len), tokenizer,
                                          seq_len=seq_len, cls=self.cls_pooling, **pipeline)

  def validate(self, run, state) -> dict[str, float]:
    report = self.evaluate(run, state, "validation", self.config.data.seq_len)
    return {f"eval/{k}": v for k, v in labelled_metrics(report).items()}

  def evaluate(self, run, state, split: str, seq_len: int) -> dict[str, Any]:
    """Loss, accuracy, macro-F1 and the per-class report (and entity scores for tagging) of the
    whole `split`, with passages of at most `seq_len` tokens."""
    totals, rows = {"loss_sum": 0.0, "weight_sum": 0.0}, []
    for host_batch in run.dataset(split, seq_len, self.config.eval.batch_size, train=False):
      batch = run.global_batch(host_batch)
      out = run.trainable.predict_step(state.params, state.rest, batch)
      for k in totals:
        totals[k] += float(jax.device_get(out[k]))
      rows.append(process_allgather({"predictions": out["predictions"],
                                     "targets": batch["targets"], "weights": batch["weights"]},
                                    tiled=True))
    rows = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    if self.kind == "token":
      report = classification.tagging_report(rows["predictions"], rows["targets"],
                                             rows["weights"], self.label_names)
    else:
      keep = rows["weights"] > 0
      report = classification.class_report(rows["predictions"][keep], rows["targets"][keep],
                                            len(self.label_names))
    report["loss"] = totals["loss_sum"] / max(totals["weight_sum"], 1.0)
    report["examples"] = len(self.passages(split, seq_len))
    return report


def labelled_metrics(report: dict) -> dict[str, float]:
  """The scalars of a labelled-evaluation report: loss, accuracy, macro_f1 (and entity_f1)."""
  metrics = {k: float(report[k]) for k in ("loss", "accuracy", "macro_f1")}
  if "entity" in report:
    metrics["entity_f1"] = float(report["entity"]["f1"])
  return metrics


def for_config(config):
  """The objective of `config.task`."""
  return Labelled(config) if config.task in labelled.KINDS else LanguageModeling(config)
