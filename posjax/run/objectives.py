"""What a run trains for: its data, its model head and its validation.

An objective is chosen by `config.task` and is the only place that knows the task:
  - `LanguageModeling` (`lm`: next token; `mlm`: masked tokens) reads a text corpus in windows of
    `data.seq_len` tokens and validates by loss, perplexity and accuracy on the validation split;
  - `Labelled` (`classify`: one label a passage; `tag`: one BIO tag a token) reads labelled
    passages and validates by loss, accuracy and macro-F1 (and entity F1 for tags);
  - `Algorithmic` (`algorithmic`) generates instances of a synthetic problem (`data.name`) at
    input lengths `data.min_train_length..max_train_length` and validates at those lengths by
    loss, token accuracy and sequence accuracy.
Each gives its tokenizer, its model head's options, its data (`dataset`), the checks of its
config fields (`problems`), its training length and its validation. The training loop, the final
report and the studies ask the objective, never the task name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import numpy as np
from absl import logging
from jax.experimental.multihost_utils import process_allgather

from posjax import data
from posjax.data import algorithmic, labelled
from posjax.data.shakespeare_tasks import describe
from posjax.run import classification
from posjax.run.config import table_limit, window_problems


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

  @property
  def train_seq_len(self) -> int:
    return self.config.data.seq_len

  def tokenizer(self):
    return data.get_tokenizer(self.config.data)

  def problems(self, cfg, num_data_shards: int) -> list[str]:
    del num_data_shards
    problems = window_problems(self.config, cfg)
    fraction = self.config.data.passkey_fraction
    if fraction and (self.config.task != "lm" or not 0 < fraction < 1):
      problems.append(f"data.passkey_fraction={fraction}: a fraction in [0, 1) of the rows of "
                      "task=lm (next-token) training")
    return problems

  def head_options(self) -> dict:
    return {}

  def dataset(self, tokenizer, split: str, seq_len: int, **pipeline):
    if self.config.task == "mlm":
      return data.make_mlm_dataset(self.config.data, split=split, seq_len=seq_len,
                                   tokenizer=tokenizer, **pipeline)
    mixture = self.config.data.passkey_fraction if split == "train" else 0.0
    return data.make_lm_dataset(self.config.data, split=split, seq_len=seq_len,
                                tokenizer=tokenizer, passkey_fraction=mixture, **pipeline)

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

  @property
  def train_seq_len(self) -> int:
    return self.config.data.seq_len

  def tokenizer(self):
    return data.get_tokenizer(self.config.data)

  def problems(self, cfg, num_data_shards: int) -> list[str]:
    del num_data_shards
    return window_problems(self.config, cfg)

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


POSITIONS = ("contiguous", "randomized")


class Algorithmic:
  """`task=algorithmic`: a synthetic problem (`data.name`; `posjax.data.algorithmic`), trained on
  input lengths drawn uniformly from `data.min_train_length..max_train_length`.

  Validation draws `eval.num_batches` batches of held-out examples (seed `eval.seed`) at the
  training lengths: loss and token accuracy over the output tokens, and sequence accuracy, the
  share of examples whose output tokens are all right (teacher forcing, argmax). The final
  report scores every test length (`posjax.evaluate.algorithmic`).
  """

  def __init__(self, config):
    self.config = config

  @property
  def train_seq_len(self) -> int:
    """The padded length of every training batch: the longest example, bucketed."""
    d = self.config.data
    return algorithmic.bucket(algorithmic.sequence_length(d.name, d.max_train_length), d.bucket)

  @property
  def eval_positions(self) -> str:
    """The positions of the evaluations: `eval.positions`, or training's for `train`."""
    mode = self.config.eval.positions
    return self.config.data.positions if mode == "train" else mode

  def tokenizer(self):
    return algorithmic.Vocabulary()

  def head_options(self) -> dict:
    return {}

  def problems(self, cfg, num_data_shards: int) -> list[str]:
    del num_data_shards  # check_run checks the batch sizes
    d, e = self.config.data, self.config.eval
    if d.name not in algorithmic.PROBLEMS:
      return [f"data.name={d.name!r}: choose a problem ({', '.join(algorithmic.PROBLEMS)})"]
    problems = []
    if d.positions not in POSITIONS:
      problems.append(f"data.positions={d.positions!r}: choose one of {POSITIONS}")
    if e.positions not in POSITIONS + ("train",):
      problems.append(f"eval.positions={e.positions!r}: choose train, contiguous or randomized")
    if not 1 <= d.min_train_length <= d.max_train_length:
      problems.append(f"training lengths {d.min_train_length}..{d.max_train_length}: need "
                      "1 <= data.min_train_length <= data.max_train_length")
    if e.num_batches < 1 or e.num_examples < 1 or e.max_length < 1 or d.bucket < 1:
      problems.append("eval.num_batches, eval.num_examples, eval.max_length and data.bucket "
                      "must be positive")
    if problems:
      return problems
    longest_train = algorithmic.sequence_length(d.name, d.max_train_length)
    if "randomized" in (d.positions, self.eval_positions) and longest_train > d.max_position:
      problems.append(f"randomized positions need data.max_position >= the longest training "
                      f"sequence ({longest_train} tokens for {d.name}); raise data.max_position")
    limit = table_limit(cfg)
    if limit is not None:  # out-of-table positions would embed as NaN, not fail
      if d.positions == "randomized" and d.max_position > limit:
        problems.append(f"randomized positions up to data.max_position={d.max_position} do not "
                        f"fit the {cfg.pe} table (max_len={limit}): raise model.pe_options "
                        "max_len")
      if longest_train > limit:
        problems.append(f"training sequences of {longest_train} tokens ({d.name} at length "
                        f"{d.max_train_length}) do not fit the {cfg.pe} table (max_len={limit})"
                        ": raise model.pe_options max_len")
    return problems

  def batches(self, *, lengths: tuple[int, int], batch_size: int, seed: int, pad_to: int,
              positions: str, process_index: int = 0,
              num_batches: Optional[int] = None) -> algorithmic.Batches:
    """Batches of this run's problem at input lengths `lengths[0]..lengths[1]`."""
    d = self.config.data
    return algorithmic.Batches(d.name, batch_size=batch_size, min_length=lengths[0],
                               max_length=lengths[1], seed=seed,
                               family=self.config.model.family, pad_to=pad_to,
                               randomized=positions == "randomized", max_position=d.max_position,
                               process_index=process_index, num_batches=num_batches)

  def dataset(self, tokenizer, split: str, seq_len: int, *, batch_size: int, seed: int,
              process_index: int = 0, **unused) -> algorithmic.Batches:
    """Training examples (`train`, endless, seed `seed`) or the held-out validation examples
    (`eval.num_batches` batches, seed `eval.seed`), at the training lengths."""
    del tokenizer, unused  # one vocabulary; examples are generated, never shuffled or repeated
    d, e = self.config.data, self.config.eval
    lengths = (d.min_train_length, d.max_train_length)
    if split == "train":
      return self.batches(lengths=lengths, batch_size=batch_size, seed=seed, pad_to=seq_len,
                          positions=d.positions, process_index=process_index)
    return self.batches(lengths=lengths, batch_size=batch_size, seed=e.seed, pad_to=seq_len,
                        positions=self.eval_positions, process_index=process_index,
                        num_batches=e.num_batches)

  def validate(self, run, state) -> dict[str, float]:
    totals = {"loss_sum": 0.0, "weight_sum": 0.0, "correct_sum": 0.0}
    right = examples = 0
    for host_batch in run.dataset("validation", self.train_seq_len,
                                  self.config.eval.batch_size, train=False):
      batch = run.global_batch(host_batch)
      out = run.trainable.predict_step(state.params, state.rest, batch)
      for k in totals:
        totals[k] += float(jax.device_get(out[k]))
      rows = process_allgather({"predictions": out["predictions"], "targets": batch["targets"],
                                "weights": batch["weights"]}, tiled=True)
      wrong = (rows["predictions"] != rows["targets"]) & (rows["weights"] > 0)
      right += int(np.sum(~wrong.any(axis=-1)))
      examples += len(wrong)
    return {"eval/loss": totals["loss_sum"] / totals["weight_sum"],
            "eval/token_accuracy": totals["correct_sum"] / totals["weight_sum"],
            "eval/seq_accuracy": right / examples}


def labelled_metrics(report: dict) -> dict[str, float]:
  """The scalars of a labelled-evaluation report: loss, accuracy, macro_f1 (and entity_f1)."""
  metrics = {k: float(report[k]) for k in ("loss", "accuracy", "macro_f1")}
  if "entity" in report:
    metrics["entity_f1"] = float(report["entity"]["f1"])
  return metrics


def for_config(config):
  """The objective of `config.task`."""
  if config.task == "mlm+nsp":  # BERT pretraining (imported here: it builds on this module)
    from posjax.run import next_sentence
    return next_sentence.MaskedLMAndNextSentence(config)
  if config.task == "algorithmic":
    return Algorithmic(config)
  return Labelled(config) if config.task in labelled.KINDS else LanguageModeling(config)
