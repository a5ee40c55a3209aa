"""Classification metrics against hand-worked values (conlleval's definitions for entities)."""

import numpy as np
import pytest

from posjax.run import classification


def test_class_report_hand_worked():
  # targets 0 0 1 1 2 ; predictions 0 1 1 1 0
  # class 0: TP 1, predicted 2, gold 2 -> P 1/2, R 1/2, F1 1/2
  # class 1: TP 2, predicted 3, gold 2 -> P 2/3, R 1, F1 0.8
  # class 2: TP 0, predicted 0, gold 1 -> P 0, R 0, F1 0
  report = classification.class_report([0, 1, 1, 1, 0], [0, 0, 1, 1, 2], 3)
  assert report["accuracy"] == pytest.approx(3 / 5)
  f1s = [c["f1"] for c in report["per_class"]]
  np.testing.assert_allclose(f1s, [0.5, 0.8, 0.0])
  assert report["per_class"][1]["precision"] == pytest.approx(2 / 3)
  assert [c["support"] for c in report["per_class"]] == [2, 2, 1]
  assert report["macro_f1"] == pytest.approx(1.3 / 3)


def test_bio_spans_follow_conlleval():
  tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-PER", "B-PER"]
  # an I- after O starts an entity; an I- of another type starts a new one
  assert classification.bio_spans(tags) == {
      ("PER", 0, 2), ("LOC", 3, 5), ("LOC", 5, 6), ("PER", 6, 7), ("PER", 7, 8)}
  assert classification.bio_spans(["O", "O"]) == set()


def test_entity_scores_hand_worked():
  gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-PER", "O", "O"]]
  predicted = [["B-PER", "I-PER", "O", "B-PER"],   # PER 0-2 right; 3-4 has the wrong type
               ["O", "B-PER", "I-PER", "O"]]       # PER 1-3: the wrong end
  scores = classification.entity_scores(predicted, gold)
  # predicted PER 0-2, PER 3-4, PER 1-3; gold PER 0-2, LOC 3-4, PER 1-2; 1 correct
  assert (scores["predicted"], scores["gold"], scores["correct"]) == (3, 3, 1)
  assert scores["precision"] == pytest.approx(1 / 3)
  assert scores["recall"] == pytest.approx(1 / 3)
  assert scores["f1"] == pytest.approx(1 / 3)
  one_more_gold = classification.entity_scores(predicted, gold[:1] + [["B-LOC", "B-PER", "O", "O"]])
  # gold now LOC 0-1 and PER 1-2 in row 2: 4 gold, still 1 correct -> R 1/4, F1 2/7
  assert one_more_gold["f1"] == pytest.approx(2 / 7)


def test_tagging_report_ignores_padding():
  names = ("O", "B-PER", "I-PER")
  targets = np.array([[0, 1, 2, 0], [1, 2, 0, 0]])
  predictions = np.array([[0, 1, 2, 1], [1, 2, 0, 2]])
  weights = np.array([[1, 1, 1, 0], [1, 1, 1, 0]])  # the last column is padding
  report = classification.tagging_report(predictions, targets, weights, names)
  assert report["accuracy"] == 1.0
  assert report["entity"]["f1"] == 1.0
  text = classification.format_report(report, names)
  assert "B-PER" in text and "entities: precision 1.0000" in text
