"""Labelled rows for fine-tuning: tags through tokenization, padding, sharding, and input errors."""

import importlib.util

import numpy as np
import pytest

from posjax.data import labelled
from posjax.data.shakespeare_tasks import Passages
from posjax.data.tokenizers import ByteTokenizer

from data_testing import data_config

NAMES = ("O", "B-LOC", "I-LOC")


def test_word_tags_to_char_tags():
  text, tags = labelled.word_tags_to_char_tags(["New", "York", "is", "big"],
                                               ["B-LOC", "I-LOC", "O", "O"])
  assert text == "New York is big"
  assert list(tags) == (["B-LOC", "I-LOC", "I-LOC", "I-LOC"] + ["I-LOC"] * 4 + ["O"] * 7)
  # two entities side by side: the space between them belongs to neither
  _, tags = labelled.word_tags_to_char_tags(["Paris", "Rome"], ["B-LOC", "B-LOC"])
  assert list(tags) == ["B-LOC"] + ["I-LOC"] * 4 + ["O"] + ["B-LOC"] + ["I-LOC"] * 3


def test_byte_tags_continue_a_character_over_its_bytes():
  inside = labelled.inside_map(NAMES)
  assert inside == {0: 0, 1: 2, 2: 2}
  # "é" is two bytes: B then I; "ë" inside a name continues it; "ß" outside stays O
  out = labelled.char_tags_to_byte_tags("éZoëß", np.array([1, 1, 2, 2, 0]), inside)
  np.testing.assert_array_equal(out, [1, 2, 1, 2, 2, 2, 0, 0])


def _passages(kind):
  texts = ["abc", "hello world", "xy", "tag me", "z"]
  if kind == "sequence":
    return Passages(texts, [0, 1, 2, 1, 0], ("a", "b", "c"), "sequence", ["w"] * 5)
  labels = [np.array([1, 2, 0]), np.zeros(11, np.int8), np.array([0, 1]),
            np.array([1, 2, 2, 0, 0, 0]), np.array([1])]
  return Passages(texts, labels, NAMES, "token", ["w"] * 5)


def test_sequence_rows_with_cls_and_padding():
  tok = ByteTokenizer()
  it = labelled.make_labelled_dataset(_passages("sequence"), tok, seq_len=8, batch_size=4,
                                      cls=True, shuffle=False, repeat=False,
                                      drop_remainder=False)
  first, second = list(it)
  assert first["inputs"].shape == (4, 8) and first["targets"].shape == (4,)
  assert first["inputs"][0, 0] == tok.eos_id                       # the CLS token
  np.testing.assert_array_equal(first["inputs"][0, 1:4], tok.encode("abc"))
  np.testing.assert_array_equal(first["segment_ids"][1], [1] * 8)  # "hello world": truncated
  np.testing.assert_array_equal(first["targets"], [0, 1, 2, 1])
  np.testing.assert_array_equal(second["weights"], [1, 0, 0, 0])   # one example, 3 padding rows
  np.testing.assert_array_equal(second["segment_ids"][1:], 0)


def test_token_rows_carry_tags_per_token():
  tok = ByteTokenizer()
  batch = next(labelled.make_labelled_dataset(_passages("token"), tok, seq_len=8, batch_size=5,
                                              shuffle=False, repeat=False))
  np.testing.assert_array_equal(batch["targets"][3], [1, 2, 2, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(batch["weights"][3], [1] * 6 + [0] * 2)
  np.testing.assert_array_equal(batch["positions"][0], [0, 1, 2, 0, 0, 0, 0, 0])


def test_processes_get_disjoint_rows_and_state_resumes():
  tok = ByteTokenizer()
  make = lambda i: labelled.make_labelled_dataset(
      _passages("sequence"), tok, seq_len=4, batch_size=1, seed=3, process_index=i,
      process_count=2)
  a, b = make(0), make(1)
  rows_a = [tuple(next(a)["inputs"][0]) for _ in range(2)]
  rows_b = [tuple(next(b)["inputs"][0]) for _ in range(2)]
  assert not set(rows_a) & set(rows_b)
  state = a.get_state()
  expected = next(a)
  resumed = make(0)
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["inputs"], expected["inputs"])


def test_input_errors():
  config = data_config("finetune_cls.py", seq_len=64)
  with pytest.raises(ValueError, match="task=classify"):
    labelled.load_passages(config, "train", kind="token")
  config.name = "shakespeare"
  with pytest.raises(ValueError, match="unlabelled text"):
    labelled.load_passages(config, "train", kind="sequence")

  class WordPieces:  # any tokenizer without byte offsets
    eos_id, vocab_size = 1, 259
    encode = ByteTokenizer().encode

  with pytest.raises(ValueError, match="tokenizer=byte"):
    labelled.encode_passages(_passages("token"), WordPieces(), cls=False)


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                    reason="with TensorFlow installed, preparing would try the network")
def test_catalog_sets_offline_say_what_to_do(tmp_path):
  config = data_config("finetune_cls.py", name="imdb_reviews", data_dir=str(tmp_path))
  with pytest.raises(RuntimeError, match="not prepared.*tfds build imdb_reviews"):
    labelled.load_passages(config, "train", kind="sequence")
  config.label_key = "sentiment"  # said before anything is prepared
  with pytest.raises(ValueError, match="no feature 'sentiment'.*text, label"):
    labelled.load_passages(config, "train", kind="sequence")
  config.name = "glue/sst2"  # registered only with TensorFlow installed
  with pytest.raises(ValueError, match="catalog"):
    labelled.load_passages(config, "train", kind="sequence")
