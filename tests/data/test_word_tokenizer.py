"""The word-level tokenizer: vocabulary, case, [UNK], truncation and padding, the pipelines."""

import numpy as np
import pytest

from posjax.data import labelled, shakespeare, shakespeare_tasks, tokenizers, word_tokenizer
from posjax.data.shakespeare_tasks import Passages
from posjax.data.word_tokenizer import SPECIALS, WordTokenizer

from data_testing import data_config

TEXT = "The cat sat. the cat ran!\nA dog sat, The end"


def test_words_split_punctuation_and_keep_inner_apostrophes():
  assert word_tokenizer.split_words("O'er the well-a-day, 'tis 12 o'clock!", lowercase=False) == [
      "O'er", "the", "well-a-day", ",", "'", "tis", "12", "o'clock", "!"]
  assert word_tokenizer.split_words("ROMEO:  Hi\n", lowercase=True) == ["romeo", ":", "hi"]


def test_vocabulary_counts_min_count_and_order():
  # Lower-cased counts, by hand: the 3, cat 2, sat 2, . 1, ! 1, a 1, dog 1, , 1, end 1, ran 1.
  tok = WordTokenizer.build([TEXT], min_count=2)
  assert tok.tokens == list(SPECIALS) + ["the", "cat", "sat"]  # count desc, ties by string
  tok = WordTokenizer.build([TEXT], min_count=1)
  assert tok.tokens[6:] == ["the", "cat", "sat", "!", ",", ".", "a", "dog", "end", "ran"]
  assert tok.vocab_size == 16
  capped = WordTokenizer.build([TEXT], min_count=1, max_size=8)
  assert capped.tokens[6:] == ["the", "cat"] and capped.vocab_size == 8


def test_case_policy():
  kept = WordTokenizer.build([TEXT], min_count=1, lowercase=False)
  # "The" 2, "the" 1: two entries when case is kept.
  assert kept.tokens[6:9] == ["The", "cat", "sat"] and "the" in kept.vocab
  assert kept.encode("THE")[0] == kept.unk_id
  lower = WordTokenizer.build([TEXT], min_count=1)
  np.testing.assert_array_equal(lower.encode("THE The the"), [6, 6, 6])


def test_unknown_words_and_round_trip():
  tok = WordTokenizer.build([TEXT], min_count=2)
  ids = tok.encode("The cat flew.")
  np.testing.assert_array_equal(ids, [6, 7, tok.unk_id, tok.unk_id])  # "flew" and "." rare
  assert tok.decode(ids) == "the cat [UNK] [UNK]"
  full = WordTokenizer.build([TEXT], min_count=1)
  assert full.decode(full.encode("the cat sat. a dog ran!")) == "the cat sat . a dog ran !"
  # Specials other than [UNK] are dropped by decode.
  assert full.decode([full.pad_id, 6, full.eos_id, full.mask_id, full.cls_id, 7, full.sep_id]) == (
      "the cat")
  with pytest.raises(ValueError, match="outside the vocabulary"):
    full.decode([full.vocab_size])


def test_offsets_point_at_each_words_first_character():
  tok = WordTokenizer.build([TEXT], min_count=1)
  text = "the  cat, dog"
  ids, starts = tok.encode_with_offsets(text)
  np.testing.assert_array_equal(starts, [0, 5, 8, 10])
  assert [text[s] for s in starts] == ["t", "c", ",", "d"]
  assert len(ids) == 4


def test_truncation_and_padding_policies():
  tok = WordTokenizer.build([TEXT], min_count=1)
  ids = np.arange(10, 15)
  np.testing.assert_array_equal(tok.truncate(ids, 3), [10, 11, 12])
  start = WordTokenizer(tok.tokens[6:], truncation="start")
  np.testing.assert_array_equal(start.truncate(ids, 3), [12, 13, 14])
  np.testing.assert_array_equal(tok.truncate(ids, 9), ids)
  padded, mask = tok.pad([7, 8], 4)
  np.testing.assert_array_equal(padded, [7, 8, 0, 0])
  np.testing.assert_array_equal(mask, [True, True, False, False])
  padded, mask = tok.pad([7, 8], 4, padding="start")
  np.testing.assert_array_equal(padded, [0, 0, 7, 8])
  np.testing.assert_array_equal(mask, [False, False, True, True])
  with pytest.raises(ValueError, match="truncate them first"):
    tok.pad([1, 2, 3], 2)
  batch, mask = tok.encode_batch(["the cat sat", "dog"], 2)
  np.testing.assert_array_equal(batch, [[6, 7], [13, 0]])
  np.testing.assert_array_equal(mask, [[True, True], [True, False]])
  with pytest.raises(ValueError, match="truncation"):
    WordTokenizer(["a"], truncation="middle")


def test_bad_options_are_errors():
  with pytest.raises(ValueError, match="min_count"):
    WordTokenizer.build([TEXT], min_count=0)
  with pytest.raises(ValueError, match="no word occurs"):
    WordTokenizer.build([TEXT], min_count=100)
  with pytest.raises(ValueError, match="no room"):
    WordTokenizer.build([TEXT], max_size=6)


def _data_config(**values):
  return data_config(**{"tokenizer": "word", **values})


def test_get_tokenizer_builds_the_vocabulary_from_the_training_split_only():
  tok = tokenizers.get_tokenizer(_data_config(min_count=2))
  assert isinstance(tok, WordTokenizer) and tok.fingerprint().startswith("word-")
  train_words = set()
  for work in shakespeare.split_works("train"):
    train_words.update(word_tokenizer.split_words(shakespeare.texts()[work]))
  validation_words = set()
  for work in shakespeare.split_works("validation"):
    validation_words.update(word_tokenizer.split_words(shakespeare.texts()[work]))
  unseen = sorted(validation_words - train_words)
  assert unseen and all(w not in tok.vocab for w in unseen)
  assert set(tok.tokens[6:]) <= train_words
  # The genre task's vocabulary leaves out its held-out poems.
  genre = word_tokenizer.training_texts(_data_config(name="shakespeare_genre"))
  assert len(genre) == len(shakespeare_tasks.genre_split_works("train"))


def test_language_model_pipeline_runs_on_words():
  from posjax import data
  config = _data_config(min_count=3, seq_len=16, global_batch_size=4, seed=0, num_workers=0,
                        streaming=None, mlm_probability=0.15)
  tok = tokenizers.get_tokenizer(config)
  batch = next(data.make_lm_dataset(config, split="train", seq_len=16, tokenizer=tok,
                                    batch_size=4))
  assert batch["inputs"].shape == (4, 16) and batch["inputs"].max() < tok.vocab_size
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])


def test_masked_lm_pipeline_never_masks_a_special_word():
  from posjax import data
  config = _data_config(min_count=3, seq_len=32, global_batch_size=8, seed=0, num_workers=0,
                        streaming=None, mlm_probability=0.5)
  tok = tokenizers.get_tokenizer(config)
  batch = next(data.make_mlm_dataset(config, split="train", seq_len=32, tokenizer=tok,
                                     batch_size=8))
  chosen = batch["weights"] > 0
  assert chosen.any() and (batch["inputs"][chosen] == tok.mask_id).any()
  assert not np.isin(batch["targets"][chosen], tok.special_ids).any()  # [UNK] included
  # Unchosen positions are left as they were.
  np.testing.assert_array_equal(batch["inputs"][~chosen], batch["targets"][~chosen])


def test_labelled_pipeline_classifies_and_tags_words():
  tok = WordTokenizer.build([TEXT], min_count=1)
  sequence = Passages(["the cat sat", "a dog ran the end"], [1, 0], ("x", "y"), "sequence",
                      ["w", "w"])
  tokens, labels = labelled.encode_passages(sequence, tok, cls=False, seq_len=4)
  # [CLS] words... [SEP]: room for 2 words; truncation="end" keeps the first ones.
  np.testing.assert_array_equal(tokens[0], [tok.cls_id, 6, 7, tok.sep_id])
  np.testing.assert_array_equal(tokens[1], [tok.cls_id, 12, 13, tok.sep_id])
  assert labels == [1, 0]
  start = WordTokenizer(tok.tokens[6:], truncation="start")
  tokens, _ = labelled.encode_passages(sequence, start, cls=False, seq_len=4)
  np.testing.assert_array_equal(tokens[1], [tok.cls_id, 6, 14, tok.sep_id])  # "the end"
  # Character tags become word tags (each word's first character), truncated alike.
  text = "the dog ran"
  tags = np.zeros(len(text), np.int32)
  tags[4:7] = [1, 2, 2]  # "dog" is a B-PER
  token = Passages([text], [tags], ("O", "B-PER", "I-PER"), "token", ["w"])
  tokens, labels = labelled.encode_passages(token, start, cls=False, seq_len=4)
  np.testing.assert_array_equal(tokens[0], [tok.cls_id, 13, 15, tok.sep_id])  # "dog ran"
  np.testing.assert_array_equal(labels[0], [0, 1, 0, 0])
