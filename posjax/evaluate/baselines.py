"""Non-neural baselines for the labelled tasks: what a table of fine-tuned models must beat.

- `majority`: every passage gets the most frequent training class (for tagging: `O` everywhere,
  entity F1 0).
- `naive_bayes`: multinomial naive Bayes over a passage's lower-cased words (Manning, Raghavan &
  Schütze 2008, §13.2): class c = argmax log P(c) + Σ_w n_w log P(w | c), with
  P(w | c) = (count(w, c) + α) / (Σ_v count(v, c) + α |V|), α = 1 (Laplace), V the training words;
  unseen words are ignored.
- `gazetteer`: tag every word that is tagged as a name somewhere in the training passages, where
  it is capitalised, by the rule that made the embedded gold tags (`shakespeare_tasks.tag_names`).
  The held-out plays have their own casts, so its recall measures how many names the plays share;
  a model must go past it by reading context.

All take `shakespeare_tasks.Passages` and score with `posjax.run.classification`, as the
fine-tunes are scored; the tagging scores are over characters (one byte each in these ASCII texts,
as the byte tokenizer sees them).
"""

from __future__ import annotations

import collections
from typing import Iterable

import numpy as np

from posjax.data import labelled, shakespeare_tasks
from posjax.data.shakespeare_tasks import Passages
from posjax.data.word_tokenizer import split_words
from posjax.run import classification


def majority_class(train: Passages) -> int:
  """The most frequent class of the training passages (the lowest index on a tie)."""
  counts = np.bincount(np.asarray(train.labels, np.int64), minlength=len(train.label_names))
  return int(np.argmax(counts))


class NaiveBayes:
  """Multinomial naive Bayes over words (see the module docstring)."""

  def __init__(self, train: Passages, *, alpha: float = 1.0):
    if alpha <= 0:
      raise ValueError(f"alpha must be positive, got {alpha}")
    num_classes = len(train.label_names)
    counts = [collections.Counter() for _ in range(num_classes)]
    for text, label in zip(train.texts, train.labels):
      counts[int(label)].update(split_words(text))
    self.vocab = {w: i for i, w in enumerate(sorted(set().union(*counts)))}
    table = np.zeros((num_classes, len(self.vocab)), np.float64)
    for c, counter in enumerate(counts):
      for word, n in counter.items():
        table[c, self.vocab[word]] = n
    smoothed = table + alpha
    self.log_word_given_class = np.log(smoothed / smoothed.sum(axis=1, keepdims=True))
    prior = np.bincount(np.asarray(train.labels, np.int64), minlength=num_classes) + alpha
    self.log_prior = np.log(prior / prior.sum())

  def predict(self, texts: Iterable[str]) -> np.ndarray:
    out = []
    for text in texts:
      ids = [self.vocab[w] for w in split_words(text) if w in self.vocab]
      scores = self.log_prior + self.log_word_given_class[:, ids].sum(axis=1)
      out.append(int(np.argmax(scores)))
    return np.asarray(out, np.int64)


def classification_scores(train: Passages, evaluated: Passages) -> dict[str, dict]:
  """`{"majority": report, "naive_bayes": report}` on `evaluated` (accuracy, macro_f1, ...)."""
  targets = np.asarray(evaluated.labels, np.int64)
  n = len(train.label_names)
  majority = np.full_like(targets, majority_class(train))
  return {"majority": classification.class_report(majority, targets, n),
          "naive_bayes": classification.class_report(
              NaiveBayes(train).predict(evaluated.texts), targets, n)}


def training_names(train: Passages) -> frozenset[str]:
  """The (upper-cased) words tagged as part of a name anywhere in the training passages."""
  names = set()
  for text, tags in zip(train.texts, train.labels):
    tags = np.asarray(tags)
    for match in shakespeare_tasks.WORD.finditer(text):
      if tags[match.start()] != shakespeare_tasks.O:
        names.add(match.group().upper())
  return frozenset(names)


def tagging_scores(train: Passages, evaluated: Passages) -> dict[str, dict]:
  """`{"majority": ..., "gazetteer": ...}`: entity scores of `O` everywhere and of tagging the
  training names (`training_names`), against `evaluated`'s gold tags."""
  names = training_names(train)
  label_names = np.asarray(evaluated.label_names, dtype=object)
  gold = [label_names[np.asarray(t, np.int64)].tolist() for t in evaluated.labels]
  looked_up = [label_names[shakespeare_tasks.tag_names(text, names).astype(np.int64)].tolist()
               for text in evaluated.texts]
  outside = [["O"] * len(g) for g in gold]
  return {"majority": classification.entity_scores(outside, gold),
          "gazetteer": classification.entity_scores(looked_up, gold)}


def for_config(config) -> list[dict]:
  """The baselines on the passages a fine-tune with `config` (configs/finetune_*.py) is scored
  on: validation at `data.seq_len`, test at each `eval.length_multipliers` × seq_len. A row per
  baseline and evaluation: `{baseline, split, multiplier, accuracy, macro_f1}` for
  classification, `{..., entity_f1, precision, recall}` for tagging."""
  kind = labelled.KINDS[config.task]
  seq_len = int(config.data.seq_len)
  train = labelled.load_passages(config.data, "train", kind=kind)
  evaluations = [("validation", 1.0)] + [("test", float(m)) for m in config.eval.length_multipliers]
  rows = []
  for split, multiplier in evaluations:
    name = config.data[f"{split}_split"]
    if not name:
      continue
    evaluated = labelled.load_passages(config.data, name, kind=kind,
                                       seq_len=int(seq_len * multiplier))
    where = {"split": split, "multiplier": multiplier, "examples": len(evaluated)}
    if kind == "sequence":
      for baseline, r in classification_scores(train, evaluated).items():
        rows.append({"baseline": baseline, **where, "accuracy": r["accuracy"],
                     "macro_f1": r["macro_f1"]})
    else:
      for baseline, r in tagging_scores(train, evaluated).items():
        rows.append({"baseline": baseline, **where, "entity_f1": r["f1"],
                     "precision": r["precision"], "recall": r["recall"]})
  return rows
