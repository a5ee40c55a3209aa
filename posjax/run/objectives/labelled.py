"""`Labelled`: fine-tuning on labelled passages (`task=classify`: a label per passage; `tag`: a BIO
tag per token), validated by loss, accuracy and macro-F1 (and entity F1 for tags)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental.multihost_utils import process_allgather

from posjax.data import labelled
from posjax.data.shakespeare_tasks import describe
from posjax.run import classification
from posjax.run.objectives.text import TextObjective


class Labelled(TextObjective):
  """`task=classify` (a label per passage) or `task=tag` (a BIO tag per token)."""

  def __init__(self, config):
    super().__init__(config)
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
