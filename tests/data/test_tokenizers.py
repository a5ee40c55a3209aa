"""Tokenizers and the token-id range check."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from posjax import data
from posjax.data import tokenizers

from data_testing import data_config


def test_byte_tokenizer_layout_and_round_trip():
  tok = data.ByteTokenizer()
  assert (tok.vocab_size, tok.pad_id, tok.eos_id, tok.mask_id) == (259, 0, 1, 2)
  text = "To be, or not to be — é, 日本, 🎭\n\t"
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and ids.min() >= 3 and ids.max() < 259
  assert len(ids) == len(text.encode("utf-8"))
  assert tok.encode("A")[0] == ord("A") + 3
  assert tok.decode(ids) == text
  assert tok.decode(np.concatenate([[1], ids, [2, 0, 0]])) == text  # specials dropped


def test_check_token_ids():
  tokenizers.check_token_ids(np.arange(259), 259)
  with pytest.raises(ValueError, match="id 300 outside the vocabulary of size 259"):
    tokenizers.check_token_ids(np.array([[5, 300], [7, 8]]), 259)
  with pytest.raises(ValueError, match="id -1 outside"):
    tokenizers.check_token_ids(np.array([-1]), 259)
  with pytest.raises(ValueError, match="outside the vocabulary of size 259"):
    data.ByteTokenizer().decode([259])


def test_get_tokenizer_errors():
  with pytest.raises(ValueError, match="unknown tokenizer 'words'.*byte"):
    data.get_tokenizer(data_config(tokenizer="words"))
  with pytest.raises(ValueError, match="vocab_size > 0"):
    data.get_tokenizer(data_config(tokenizer="bpe", vocab_size=0), ["x"])


@pytest.mark.skipif(importlib.util.find_spec("sentencepiece") is None,
                    reason="sentencepiece is an optional extra")
@pytest.mark.parametrize("name", ["bpe", "sentencepiece"])
def test_sentencepiece_trained_on_given_texts(tmp_path, name):
  from posjax.data import shakespeare
  texts = [shakespeare.texts()[w] for w in shakespeare.split_works("train")[:6]]
  config = data_config(tokenizer=name, vocab_size=600)
  tok = data.get_tokenizer(config, train_texts=texts, cache_dir=str(tmp_path))
  assert tok.vocab_size == 600 and (tok.pad_id, tok.eos_id, tok.mask_id) == (0, 1, 3)
  text = "Now is the winter of our discontent  é 日本\n"
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and ids.max() < 600 and tok.decode(ids) == text
  assert len(list(tmp_path.iterdir())) == 1
  again = data.get_tokenizer(config, train_texts=texts, cache_dir=str(tmp_path))
  assert again.fingerprint() == tok.fingerprint()


@pytest.mark.skipif(importlib.util.find_spec("sentencepiece") is None,
                    reason="sentencepiece is an optional extra")
def test_sentencepiece_defaults_to_the_training_split(tfds_dir, tmp_path):
  config = data_config(data_dir=tfds_dir, tokenizer="bpe", vocab_size=512)
  tok = data.get_tokenizer(config, cache_dir=str(tmp_path))
  batch = next(data.make_lm_dataset(config, split="validation", seq_len=64, batch_size=2,
                                    tokenizer=tok, shuffle=False, repeat=False))
  assert batch["inputs"].max() < 512
  assert data.load_texts(config, "validation")[0].startswith(tok.decode(batch["inputs"][0]))
