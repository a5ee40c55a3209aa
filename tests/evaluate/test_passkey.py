"""Passkey retrieval: prompts checked by hand, and scoring checked on forced models."""

from __future__ import annotations

import dataclasses

import matplotlib.image
import numpy as np
import pytest

from posjax.data import ByteTokenizer
from posjax.data import passkey as prompts
from posjax.evaluate import passkey as pk
from posjax.evaluate.extrapolation import Scorer

TOK = ByteTokenizer()
KEY = "The pass key is 12345. Remember it. 12345 is the pass key. "   # 59 bytes
QA = "What is the pass key? The pass key is 12345"                   # 37 + 6 bytes
LINE = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
        "There and back again. ")                                     # 90 bytes


def text(prompt) -> str:
  return TOK.decode(prompt.tokens)


def test_the_shortest_prompt_is_key_question_answer():
  assert prompts.min_length(TOK) == 59 + 43 - 1 == 101
  prompt = prompts.make_prompt(TOK, 101, 0.5, 12345)
  assert text(prompt) == KEY + QA
  assert prompt.length == 101 and prompt.tokens.size == 102
  assert prompt.key_start == 0 and prompt.filler_len == 0
  np.testing.assert_array_equal(prompt.answer_positions, [97, 98, 99, 100, 101])  # digits only
  with pytest.raises(ValueError, match="at least 101 input tokens"):
    prompts.make_prompt(TOK, 100, 0.5, 12345)


@pytest.mark.parametrize("depth, expected", [
    (0.0, KEY + LINE + QA),
    (0.5, LINE[:37] + KEY + LINE[37:] + QA),     # boundaries 0 20 37 56 68 90; 45 -> 37
    (0.6, LINE[:56] + KEY + LINE[56:] + QA),     # 54 -> 56
    (1.0, LINE + KEY + QA),
])
def test_key_goes_at_the_sentence_boundary_nearest_the_depth(depth, expected):
  prompt = prompts.make_prompt(TOK, 101 + 90, depth, "12345")
  assert text(prompt) == expected
  assert prompt.length == 191
  assert prompt.key_start == expected.index(KEY)
  assert text(prompt)[prompt.key_start:prompt.key_start + prompt.key_len] == KEY


def test_a_partial_first_sentence_and_a_header():
  prompt = prompts.make_prompt(TOK, 101 + 20, 0.0, 12345)
  assert text(prompt) == KEY + "ere and back again. " + QA  # the last 20 filler bytes
  header = "Find the key. "
  prompt = prompts.make_prompt(TOK, 101 + 14 + 20, 1.0, 12345, header=header)
  assert text(prompt) == header + "ere and back again. " + KEY + QA
  assert prompt.key_start == 34 and prompt.actual_depth == 1.0


@pytest.mark.parametrize("length", [128, 500, 1024, 4096])
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.33, 0.5, 0.9, 1.0])
def test_target_length_is_met_and_depth_is_close(length, depth):
  prompt = prompts.make_prompt(TOK, length, depth, 99999)
  assert prompt.tokens.size == length + 1
  assert abs(prompt.actual_depth - depth) * prompt.filler_len <= 22 / 2 + 1  # half a sentence
  assert text(prompt).endswith("What is the pass key? The pass key is 99999")
  assert text(prompt).count("99999") == 3


def test_bad_keys_and_depths():
  with pytest.raises(ValueError, match="digits"):
    prompts.make_prompt(TOK, 200, 0.5, "12a45")
  with pytest.raises(ValueError, match="depth"):
    prompts.make_prompt(TOK, 200, 1.5, 12345)


def always(char: str):
  """A fake model that predicts byte `char` at every position."""
  def logits_fn(inputs_BW):
    logits = np.zeros(inputs_BW.shape + (TOK.vocab_size,))
    logits[..., TOK.encode(char)[0]] = 1.0
    return logits
  return Scorer.from_logits_fn(logits_fn, tokens_per_batch=512)


class Oracle(Scorer):
  """Predicts every target (optionally wrong at one offset from the end)."""

  def __init__(self, wrong_from_end=None):
    super().__init__(lambda b: b)
    self.wrong = wrong_from_end

  def __call__(self, inputs, targets):
    prediction = np.array(targets)
    if self.wrong is not None:
      prediction[:, -self.wrong] += 1
    return np.zeros(prediction.shape, np.float32), prediction


def test_scoring_with_forced_models():
  cases = [prompts.make_prompt(TOK, 150, 0.5, key) for key in ("11111", "12345", "21111")]
  scores = pk.score_prompts(always("1"), cases)
  assert [s.retrieved for s in scores] == [True, False, False]
  assert [s.digit_accuracy for s in scores] == [1.0, 0.2, 0.8]
  assert all(s.retrieved for s in pk.score_prompts(Oracle(), cases))
  last_digit_wrong = pk.score_prompts(Oracle(wrong_from_end=1), cases)
  assert [(s.retrieved, s.digit_accuracy) for s in last_digit_wrong] == [(False, 0.8)] * 3
  # The prediction before the answer's space is not scored.
  assert all(s.retrieved for s in pk.score_prompts(Oracle(wrong_from_end=6), cases))


def test_grid_rows_skips_and_heatmap(tmp_path):
  rows = pk.passkey_grid(Oracle(), TOK, [64, 128, 256, 512], (0.0, 1.0), trials=2,
                         max_len=256)
  by_length = {}
  for r in rows:
    by_length.setdefault(r["length"], []).append(r)
  assert [r["accuracy"] for r in by_length[128] + by_length[256]] == [1.0] * 4
  assert all(r["accuracy"] is None and "needs" in r["note"] for r in by_length[64])
  assert all(r["accuracy"] is None and "max_len=256" in r["note"] for r in by_length[512])
  paths = pk.write_report(rows, str(tmp_path), name="oracle")
  depths, lengths, values = pk.accuracy_matrix(rows)
  assert depths == [0.0, 1.0] and lengths == [64, 128, 256, 512]
  assert np.isnan(values[:, 0]).all() and (values[:, 1:3] == 1).all()
  image = matplotlib.image.imread(paths["png"])
  assert image.ndim == 3 and min(image.shape[:2]) > 100
  assert "passkey.csv" in paths["csv"]


def test_keys_are_five_digits_and_reproducible():
  keys = prompts.passkey_keys(4, seed=3)
  assert keys == prompts.passkey_keys(4, seed=3) and all(len(k) == 5 and k.isdigit() for k in keys)


def test_a_real_model_scores_between_zero_and_one(tmp_path):
  from test_extrapolation import fresh_run
  run = fresh_run(tmp_path)
  rows = pk.run_passkey(run, (4,), depths=(0.0, 1.0), trials=2, out_dir=str(tmp_path / "pk"))
  assert [r["length"] for r in rows] == [128, 128]
  assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
  assert (tmp_path / "pk" / "passkey.png").exists()


def test_training_mixture_replaces_a_fraction_of_rows_with_prompts():
  tok = ByteTokenizer()
  mixer = prompts.PasskeyRows(tok, 128, 0.25)
  text_row = dict(inputs=np.full([128], 7, np.int32), targets=np.full([128], 8, np.int32),
                  positions=np.arange(128, dtype=np.int32), segment_ids=np.ones([128], np.int32),
                  weights=np.ones([128], np.float32))
  rows = [mixer(text_row, np.random.default_rng(i)) for i in range(2000)]
  mixed = [r for r in rows if r is not text_row]
  assert abs(len(mixed) / len(rows) - 0.25) < 0.03  # binomial sd ≈ 0.01
  held_out = set(prompts.passkey_keys(64, 0))
  for row in mixed[:50]:
    text = tok.decode(np.r_[row["inputs"], row["targets"][-1:]])
    assert text.endswith(prompts.QUESTION + prompts.ANSWER.format(key=text[-5:]))
    assert f"The pass key is {text[-5:]}." in text and text[-5:] not in held_out
    np.testing.assert_array_equal(row["targets"][:-1], row["inputs"][1:])
    assert row["inputs"].shape == (128,) and row["weights"].sum() == 128
  again = [mixer(text_row, np.random.default_rng(i)) for i in range(50)]
  for a, b in zip(rows[:50], again):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
  with pytest.raises(ValueError, match=r"passkey_fraction must be in \[0, 1\)"):
    prompts.PasskeyRows(tok, 128, 1.0)
  with pytest.raises(ValueError, match="needs data.seq_len >= 101"):
    prompts.PasskeyRows(tok, 96, 0.1)


def test_training_keys_may_be_longer_than_the_evaluation_keys():
  import re
  tok = ByteTokenizer()
  row = dict(inputs=np.zeros([128], np.int32))
  mixer = prompts.PasskeyRows(tok, 128, 0.999, max_digits=12)
  lengths = set()
  for i in range(400):
    out = mixer(row, np.random.default_rng(i))
    if out is row:
      continue
    text = tok.decode(np.r_[out["inputs"], out["targets"][-1:]])
    key = re.search(r"The pass key is (\d+)\. Remember it\. (\d+) is the pass key", text)
    assert key and key[1] == key[2] and key[1][0] != "0"
    assert text.endswith(prompts.QUESTION + " " + key[1])
    lengths.add(len(key[1]))
  assert lengths == set(range(5, 13))  # every length in [5, 12] drawn
  with pytest.raises(ValueError, match="seq_len >= 134"):  # 101 + 3 copies × 11 more digits
    prompts.PasskeyRows(tok, 128, 0.1, max_digits=16)
  with pytest.raises(ValueError, match=r"passkey_max_digits must be in \[5, 18\]"):
    prompts.PasskeyRows(tok, 128, 0.1, max_digits=4)


def test_evaluation_rows_weight_only_the_answer_digits():
  rows = prompts.evaluation_rows(TOK, 191, 2)
  assert rows["inputs"].shape == (10, 191)  # 5 depths × 2 keys
  for row, (depth, key) in enumerate((d, k) for d in prompts.DEFAULT_DEPTHS
                                     for k in prompts.passkey_keys(2)):
    assert TOK.decode(np.r_[rows["inputs"][row], rows["targets"][row, -1:]]) == text(
        prompts.make_prompt(TOK, 191, depth, key))
    assert TOK.decode(rows["targets"][row][rows["weights"][row] > 0]) == key


def lm_run(tmp_path, **overrides):
  import os
  from posjax.configs import load_config
  from posjax.run.experiment import Run
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  config = load_config(f"{root}/configs/lm.py:tiny", **{"data.seq_len": 128, **overrides})
  return Run(config, str(tmp_path))


def test_validation_passkey_counts_a_key_retrieved_only_with_all_its_digits(tmp_path):
  # A forced predict step: right on every digit of keys whose first digit's token id is odd,
  # wrong on the last digit of the others; 3 keys × 5 depths = 15 prompts in batches of 8, the last padded.
  import jax.numpy as jnp
  run = lm_run(tmp_path, **{"eval.passkey_trials": 3})
  state = run.init_state()
  keys = prompts.passkey_keys(3)

  def forced(params, rest, batch):
    targets, weights = batch["targets"], batch["weights"]
    first = jnp.argmax(weights > 0, axis=-1)
    odd = jnp.take_along_axis(targets, first[:, None], -1)[:, 0] % 2 == 1
    last = weights.shape[1] - 1 - jnp.argmax((weights > 0)[:, ::-1], axis=-1)
    wrong = (~odd)[:, None] & (jnp.arange(weights.shape[1])[None] == last[:, None])
    predictions = jnp.where(wrong, targets + 1, targets)
    return {"loss_sum": jnp.sum(weights), "weight_sum": jnp.sum(weights),
            "correct_sum": jnp.sum((predictions == targets) * weights),
            "predictions": predictions}

  run.trainable = dataclasses.replace(run.trainable, predict_step=forced)
  metrics = run.objective.passkey(run, state)
  odd = sum(TOK.encode(k)[0] % 2 for k in keys)
  assert 0 < odd < 3
  assert metrics["eval/passkey_accuracy"] == pytest.approx(odd / 3)
  assert metrics["eval/passkey_digit_accuracy"] == pytest.approx((5 * odd + 4 * (3 - odd)) / 15)


def test_validation_passkey_agrees_with_the_passkey_grid(tmp_path):
  # The metric logged while training (run's predict step) against posjax.evaluate.passkey (its
  # own scorer) on the same trained parameters.
  import json
  from posjax.evaluate import scoring
  from posjax.train import loop
  run = lm_run(tmp_path, **{"eval.passkey_trials": 2, "data.passkey_fraction": 0.5})
  state = loop.train(run)
  logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  final = [m for m in logged if "eval/passkey_accuracy" in m][-1]
  model = scoring.load_run(str(tmp_path))
  rows = pk.run_passkey(model, (1,), trials=2)
  assert final["eval/passkey_accuracy"] == pytest.approx(np.mean([r["accuracy"] for r in rows]))
  assert final["eval/passkey_digit_accuracy"] == pytest.approx(
      np.mean([r["digit_accuracy"] for r in rows]), abs=1e-6)
  # A tiny model may get no digit right: the predicted tokens themselves must agree too.
  prompt_rows = {k: v[:8] for k, v in prompts.evaluation_rows(TOK, 128, 2).items()}
  mine = np.asarray(run.trainable.predict_step(state.params, state.rest,
                                               run.global_batch(prompt_rows))["predictions"])
  _, theirs = scoring.make_scorer(model, attention_backend=None)(prompt_rows["inputs"],
                                                                 prompt_rows["targets"])
  scored = prompt_rows["weights"] > 0
  np.testing.assert_array_equal(mine[scored], theirs[scored])


def test_validation_passkey_needs_an_lm_run_long_enough_for_a_prompt(tmp_path):
  with pytest.raises(ValueError, match=r"a passkey prompt needs data.seq_len >= 101, got 64"):
    lm_run(tmp_path, **{"eval.passkey_trials": 2, "data.seq_len": 64})
  with pytest.raises(ValueError, match=r"keys per depth, 1 to 64 \(the evaluation keys"):
    lm_run(tmp_path, **{"eval.passkey_trials": 65})
