"""The WordPiece tokenizer against ids from Hugging Face's BertTokenizer (a stored fixture)."""

import json
import pathlib

import numpy as np
import pytest

from posjax.data.wordpiece import WordPieceTokenizer

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "wordpiece"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.mark.parametrize("casing", ["lower", "cased"])
def test_ids_match_bert_tokenizer(casing):
  tok = WordPieceTokenizer(str(FIXTURES / "vocab.txt"), lower_case=casing == "lower")
  for case in EXPECTED[casing]:
    np.testing.assert_array_equal(tok.encode(case["text"]), case["ids"], err_msg=case["text"])


def test_offsets_point_at_each_tokens_first_character():
  tok = WordPieceTokenizer(str(FIXTURES / "vocab.txt"))
  text = "O Romeo, wherefore"
  ids, starts = tok.encode_with_offsets(text)
  pieces = [tok.tokens[i] for i in ids]
  assert pieces == ["o", "romeo", ",", "where", "##fore"]  # longest prefix first
  assert starts.tolist() == [0, 2, 7, 9, 14]
  assert tok.decode(ids) == "o romeo , wherefore"


def test_missing_vocabulary_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="vocab.txt"):
    WordPieceTokenizer(str(tmp_path / "vocab.txt"))
  (tmp_path / "vocab.txt").write_text("a\nb\n")
  with pytest.raises(ValueError, match="special tokens"):
    WordPieceTokenizer(str(tmp_path / "vocab.txt"))
