"""Classification metrics: accuracy, macro-F1, a per-class report, and entity-level F1 for BIO tags.

Per class c: precision = TP / (TP + FP), recall = TP / (TP + FN), F1 their harmonic mean (0 when
undefined); macro-F1 is the unweighted mean of F1 over the classes.

Entities (`bio_spans`) follow conlleval (Tjong Kim Sang & De Meulder, CoNLL-2003): an entity starts
at `B-x`, or at `I-x` whose previous tag is not of type x, and continues over the `I-x` that follow;
a predicted entity counts only if its type, start and end all match a gold one.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _f1(precision: float, recall: float) -> float:
  return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _ratio(a: float, b: float) -> float:
  return a / b if b else 0.0


def class_report(predictions, targets, num_classes: int) -> dict:
  """`{accuracy, macro_f1, per_class: [{precision, recall, f1, support}]}` over 1-d arrays."""
  predictions, targets = np.asarray(predictions).ravel(), np.asarray(targets).ravel()
  per_class = []
  for c in range(num_classes):
    tp = float(np.sum((predictions == c) & (targets == c)))
    precision = _ratio(tp, float(np.sum(predictions == c)))
    recall = _ratio(tp, float(np.sum(targets == c)))
    per_class.append({"precision": precision, "recall": recall, "f1": _f1(precision, recall),
                      "support": int(np.sum(targets == c))})
  return {"accuracy": _ratio(float(np.sum(predictions == targets)), predictions.size),
          "macro_f1": float(np.mean([p["f1"] for p in per_class])), "per_class": per_class}


def bio_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
  """`{(type, start, end)}` (end exclusive) of the entities in one sequence of BIO tag names."""
  spans, start, kind = set(), None, None
  for i, tag in enumerate(list(tags) + ["O"]):
    prefix, _, label = tag.partition("-")
    continues = prefix == "I" and kind == label
    if start is not None and not continues:
      spans.add((kind, start, i))
      start = kind = None
    if prefix in ("B", "I") and not continues:
      start, kind = i, label
  return spans


def entity_scores(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict:
  """Entity-level `{precision, recall, f1, predicted, gold, correct}` over sequences of tags."""
  n_pred = n_gold = n_correct = 0
  for p, g in zip(predicted, gold, strict=True):
    p_spans, g_spans = bio_spans(p), bio_spans(g)
    n_pred += len(p_spans)
    n_gold += len(g_spans)
    n_correct += len(p_spans & g_spans)
  precision, recall = _ratio(n_correct, n_pred), _ratio(n_correct, n_gold)
  return {"precision": precision, "recall": recall, "f1": _f1(precision, recall),
          "predicted": n_pred, "gold": n_gold, "correct": n_correct}


def tagging_report(predictions_BL, targets_BL, weights_BL, label_names: Sequence[str]) -> dict:
  """Token accuracy and macro-F1 over weighted tokens, plus entity-level scores per row."""
  weights = np.asarray(weights_BL) > 0
  report = class_report(np.asarray(predictions_BL)[weights], np.asarray(targets_BL)[weights],
                        len(label_names))
  names = np.asarray(label_names, dtype=object)
  predicted, gold = [], []
  for p, t, w in zip(np.asarray(predictions_BL), np.asarray(targets_BL), weights):
    predicted.append(names[p[w]].tolist())
    gold.append(names[t[w]].tolist())
  report["entity"] = entity_scores(predicted, gold)
  return report


def format_report(report: dict, label_names: Sequence[str]) -> str:
  """A Markdown table of the per-class scores, then accuracy, macro-F1 (and entity scores)."""
  lines = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
  for name, c in zip(label_names, report["per_class"]):
    lines.append(f"| {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | "
                 f"{c['support']} |")
  lines.append(f"\naccuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}")
  if "entity" in report:
    e = report["entity"]
    lines.append(f"entities: precision {e['precision']:.4f}, recall {e['recall']:.4f}, "
                 f"F1 {e['f1']:.4f} ({e['correct']} correct of {e['predicted']} predicted, "
                 f"{e['gold']} gold)")
  return "\n".join(lines)
