"""The non-neural baselines, against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from posjax.data.shakespeare_tasks import B, I, O, TAG_NAMES, Passages
from posjax.evaluate import baselines


def _classes(texts, labels):
  return Passages(list(texts), list(labels), ("a", "b"), "sequence", ["w"] * len(texts))


TRAIN = _classes(["sun sun moon", "sun star", "rain rain cloud"], [0, 0, 1])


def test_naive_bayes_posteriors_are_the_textbook_ones():
  """Vocabulary {cloud, moon, rain, star, sun}; class a has 5 words (sun 3, moon 1, star 1),
  class b 3 (rain 2, cloud 1). With α = 1: P(sun|a) = 4/10, P(sun|b) = 1/8, P(rain|a) = 1/10,
  P(rain|b) = 3/8; priors (2+1)/5 and (1+1)/5."""
  model = baselines.NaiveBayes(TRAIN)
  np.testing.assert_allclose(np.exp(model.log_prior), [3 / 5, 2 / 5])
  sun, rain = model.vocab["sun"], model.vocab["rain"]
  np.testing.assert_allclose(np.exp(model.log_word_given_class[:, sun]), [4 / 10, 1 / 8])
  np.testing.assert_allclose(np.exp(model.log_word_given_class[:, rain]), [1 / 10, 3 / 8])
  # "sun rain": a scores 3/5 · 4/10 · 1/10 = 0.024, b scores 2/5 · 1/8 · 3/8 = 0.01875 → a.
  # "rain, unseen": the unseen word is ignored; a 3/5 · 1/10 = 0.06 < b 2/5 · 3/8 = 0.15 → b.
  assert model.predict(["Sun rain", "rain, unseen"]).tolist() == [0, 1]


def test_classification_scores_majority_and_naive_bayes():
  evaluated = _classes(["sun", "rain", "cloud sun sun"], [0, 1, 1])
  scores = baselines.classification_scores(TRAIN, evaluated)
  # Majority (a) everywhere: accuracy 1/3; F1(a) = 2·(1/3·1)/(1/3+1) = 0.5, F1(b) = 0.
  assert scores["majority"]["accuracy"] == pytest.approx(1 / 3)
  assert scores["majority"]["macro_f1"] == pytest.approx(0.25)
  # Naive Bayes: a, b, and "cloud sun sun" → a (3/5·(1/10)·(4/10)² > 2/5·(2/8)·(1/8)²).
  assert scores["naive_bayes"]["accuracy"] == pytest.approx(2 / 3)


def _tagged(text, names):
  """BIO tags for `text`, marking the given (start, end) spans by hand."""
  tags = np.full(len(text), O, np.int8)
  for start, end in names:
    tags[start], tags[start + 1:end] = B, I
  return tags


def test_gazetteer_tags_the_names_seen_in_training_only():
  train_text = "Good morrow, Romeo. And Tybalt too."
  train = Passages([train_text], [_tagged(train_text, [(13, 18), (24, 30)])], TAG_NAMES, "token",
                   ["w"])
  assert baselines.training_names(train) == {"ROMEO", "TYBALT"}
  text = "Romeo met Juliet; romeo is lower."
  evaluated = Passages([text], [_tagged(text, [(0, 5), (10, 16)])], TAG_NAMES, "token", ["w"])
  scores = baselines.tagging_scores(train, evaluated)
  # Found: Romeo (not the lower-case "romeo"); missed: Juliet. P = 1, R = 1/2, F1 = 2/3.
  assert (scores["gazetteer"]["correct"], scores["gazetteer"]["predicted"],
          scores["gazetteer"]["gold"]) == (1, 1, 2)
  assert scores["gazetteer"]["f1"] == pytest.approx(2 / 3)
  assert scores["majority"]["f1"] == 0.0 and scores["majority"]["gold"] == 2
