"""Word vectors in a run: config checks before compiling, loading at init, freezing, end to end."""

import pathlib

import jax
import numpy as np
import pytest

from posjax.configs import load_config
from posjax.run import word_vectors
from posjax.run.experiment import Run

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORDS = ("the king queen and of a rook said to my lord good night sweet prince , . ! "
         "o'er").split()
DIM = 32  # configs/lm.py:tiny
# The vectors file: four words, one only in another case ("King": the lowercase fallback).
# Row k of the file is s_k · (1, -1, 1, -1, ...) with s = 1, 2, 1, 2, so its values are ±1 and ±2
# in equal numbers: mean 0, std sqrt((1 + 4) / 2) = sqrt(2.5).
FILE_WORDS, SCALES = ("the", "King", "queen", "rook"), (1, 2, 1, 2)
SIGNS = np.resize([1.0, -1.0], DIM)
FILE_STD = np.sqrt(2.5)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """`(corpus .txt, GloVe file)`: 400 lines of words from WORDS, and the vectors above."""
  root = tmp_path_factory.mktemp("word_vectors")
  rng = np.random.default_rng(0)
  lines = [" ".join(rng.choice(WORDS, size=8)) for _ in range(400)]
  corpus = root / "corpus.txt"
  corpus.write_text("\n".join(lines) + "\n")
  glove = root / "vectors.txt"
  glove.write_text("".join(f"{w} " + " ".join(f"{s * x:g}" for x in SIGNS) + "\n"
                           for w, s in zip(FILE_WORDS, SCALES)))
  return corpus, glove


def config(files, arg="tiny", **overrides):
  corpus, glove = files
  values = {"data.name": "text", "data.path": str(corpus), "data.tokenizer": "word",
            "model.word_vectors": str(glove), "model.tie_embeddings": False,
            "train.steps": 3, "train.log_every": 1}
  values.update(overrides)
  return load_config(f"{ROOT}/configs/lm.py:{arg}", **values)


def table(params):
  return np.asarray(jax.device_get(params["embedding"]["tokens"]["embedding"]))


def test_options_are_checked():
  base = load_config(f"{ROOT}/configs/lm.py:tiny")
  assert word_vectors.options(base) is None
  base.model.freeze_word_vectors = True
  with pytest.raises(ValueError, match="needs model.word_vectors"):
    word_vectors.options(base)
  base.model.update(word_vectors="x.txt", word_vectors_format="fasttext", word_vectors_std=-1.0)
  base.train.init_from = "runs/other"
  with pytest.raises(ValueError) as error:
    word_vectors.options(base)
  for part in ("init_from", "word_vectors_format='fasttext'", "word_vectors_std=-1.0"):
    assert part in str(error.value)


def test_input_errors_are_raised_before_compiling(files, tmp_path):
  with pytest.raises(ValueError, match="set data.tokenizer=word"):
    Run(config(files, **{"data.tokenizer": "byte"}), str(tmp_path / "a"))
  with pytest.raises(ValueError, match="no such file"):
    Run(config(files, **{"model.word_vectors": str(tmp_path / "none.txt")}), str(tmp_path / "b"))
  with pytest.raises(ValueError, match="32-dimensional vectors .* set model.dim=32"):
    Run(config(files, **{"model.dim": 48}), str(tmp_path / "c"))


@pytest.mark.parametrize("std", [0.02, pytest.param(0.0, marks=pytest.mark.slow)])
def test_init_loads_the_covered_rows_and_keeps_the_others_random(files, tmp_path, std):
  run = Run(config(files, **{"model.word_vectors_std": std}), str(tmp_path))
  # trainable.create(): the same seed's fresh parameters, before the vectors are loaded.
  loaded, random = table(run.init_state().params), table(run.trainable.create().params)
  tokens = run.tokenizer.tokens
  covered = [tokens.index(w) for w in ("the", "king", "queen", "rook")]
  factor = 0.02 / FILE_STD if std else 1.0
  for i, scale in zip(covered, SCALES):
    np.testing.assert_allclose(loaded[i], scale * SIGNS * factor, rtol=1e-6)
  others = [i for i in range(len(tokens)) if i not in covered]
  np.testing.assert_array_equal(loaded[others], random[others])  # same seed, untouched rows
  log = (tmp_path / "train.log").read_text()
  assert f"cover 4/{len(tokens)} vocabulary entries" in log and "3 exact, 1 by lower case" in log


def _train_steps(run, steps=3):
  state = run.init_state()
  before = jax.device_get(state.params)
  batches = iter(run.dataset("train", run.config.data.seq_len,
                             run.config.data.global_batch_size, train=True))
  for _ in range(steps):
    state, _ = run.trainable.train_step(state, run.global_batch(next(batches)))
  return before, jax.device_get(state.params)


@pytest.mark.parametrize("scheme", [
    "rope", pytest.param("sinusoidal", marks=pytest.mark.slow),
    pytest.param("alibi", marks=pytest.mark.slow), pytest.param("shaw", marks=pytest.mark.slow)])
def test_frozen_vectors_do_not_move_and_the_rest_trains(files, tmp_path, scheme):
  # One scheme of each hook kind: embed (sinusoidal), rotate (rope), bias (alibi), content (shaw).
  run = Run(config(files, f"tiny,{scheme}", **{"model.freeze_word_vectors": True}),
            str(tmp_path))
  assert run.trainable.trainable["embedding"]["tokens"]["embedding"] is False
  before, after = _train_steps(run)
  np.testing.assert_array_equal(table(after), table(before))
  leaves = lambda t: {jax.tree_util.keystr(k): np.asarray(v)
                      for k, v in jax.tree_util.tree_leaves_with_path(t)}
  moved = [k for k, v in leaves(after).items() if not np.array_equal(v, leaves(before)[k])]
  assert any("blocks" in k for k in moved) and any("head" in k or "out" in k for k in moved)
  assert all("tokens" not in k for k in moved)


@pytest.mark.slow
def test_fine_tuned_vectors_move(files, tmp_path):
  run = Run(config(files), str(tmp_path))
  assert run.trainable.trainable["embedding"]["tokens"]["embedding"] is True
  before, after = _train_steps(run)
  the = run.tokenizer.vocab["the"]
  assert not np.array_equal(table(after)[the], table(before)[the])


@pytest.mark.slow
def test_language_model_end_to_end_with_frozen_word_vectors(files, tmp_path):
  from posjax.evaluate import run_report
  from posjax.train import loop
  run = Run(config(files, **{"model.freeze_word_vectors": True, "train.steps": 6}),
            str(tmp_path))
  state = loop.train(run)
  text = run_report.report(run, state)
  assert "model.word_vectors=" in (tmp_path / "train.log").read_text()
  assert "perplexity" in text.lower() and (tmp_path / "eval_by_length.md").exists()
  np.testing.assert_array_equal(table(jax.device_get(state.params)),
                                table(run.init_state().params))


@pytest.mark.slow
def test_genre_classifier_end_to_end_with_word_vectors(files, tmp_path):
  from posjax.evaluate import run_report
  from posjax.train import loop
  run = Run(load_config(f"{ROOT}/configs/finetune_cls.py:tiny", **{
      "data.tokenizer": "word", "data.seq_len": 64, "model.word_vectors": str(files[1])}),
      str(tmp_path))
  the = run.tokenizer.vocab["the"]
  init = np.asarray(jax.device_get(run.init_state().params["encoder"]["embedding"]["tokens"][
      "embedding"]))
  np.testing.assert_allclose(init[the], SIGNS * 0.02 / FILE_STD, rtol=1e-6)
  state = loop.train(run)
  text = run_report.report(run, state)
  assert "cover 4/" in (tmp_path / "train.log").read_text() and "macro-F1" in text
