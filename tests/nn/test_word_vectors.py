"""Word-vector files: word2vec text and binary, GloVe, gzip, the OOV policy, errors.

Every fixture is written by hand here (no gensim), with known values; the gensim test at the end
only checks that files gensim writes read back the same, and is skipped without gensim.
"""

import gzip
import io
import pathlib
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from posjax import models
from posjax.nn import word_vectors
from posjax.nn.word_vectors import detect_format, load_word_vectors

GLOVE = "the 0.1 0.2 0.3\nKing 1.0 -1.0 0.5\nnew york 2.0 2.0 2.0\n"
WORD2VEC = "2 3\nqueen 0.5 0.5 0.5\nthe 0.1 0.2 0.3\n"
VOCAB = ["<pad>", "the", "king", "new york", "absent"]


def binary_file(entries, *, newline: bool) -> bytes:
  """word2vec binary: `count dim\\n`, then `word ` + float32 LE (+ `\\n` as the C tool writes)."""
  dim = len(entries[0][1])
  out = f"{len(entries)} {dim}\n".encode()
  for word, vector in entries:
    out += word.encode("utf-8") + b" " + struct.pack(f"<{dim}f", *vector)
    out += b"\n" if newline else b""
  return out


# Values exactly representable in float32, so equality is exact.
ENTRIES = [("king", (1.5, -2.0)), ("Queen", (0.25, 4.0)), ("né", (-0.5, 0.125))]


def test_glove_alignment_words_with_spaces_and_lowercase_fallback(tmp_path):
  path = tmp_path / "glove.txt"
  path.write_text(GLOVE)
  assert detect_format(path) == ("glove", 3)
  wv = load_word_vectors(path, VOCAB)
  assert wv.dim == 3 and wv.num_covered == 3 and wv.exact == 2
  np.testing.assert_array_equal(wv.covered, [False, True, True, True, False])
  np.testing.assert_allclose(wv.matrix[1], [0.1, 0.2, 0.3], rtol=1e-7)
  np.testing.assert_allclose(wv.matrix[2], [1.0, -1.0, 0.5])  # "King" via the fallback
  np.testing.assert_allclose(wv.matrix[3], [2.0, 2.0, 2.0])   # a word with a space
  np.testing.assert_array_equal(wv.matrix[[0, 4]], 0.0)       # OOV rows: not covered, zero
  assert "3/5" in wv.summary() and "2 exact, 1 by lower case" in wv.summary()
  strict = load_word_vectors(path, VOCAB, lowercase_fallback=False)
  assert strict.num_covered == 2 and not strict.covered[2]


def test_word2vec_text_header_and_exact_match_wins():
  assert detect_format(io.BytesIO(WORD2VEC.encode())) == ("word2vec_text", 3)
  wv = load_word_vectors(io.StringIO(WORD2VEC + "Queen 9 9 9\n"), ["Queen", "queen"])
  np.testing.assert_allclose(wv.matrix[0], [9, 9, 9])
  np.testing.assert_allclose(wv.matrix[1], [0.5, 0.5, 0.5])
  # The header's count line is not a word.
  assert load_word_vectors(io.StringIO(WORD2VEC), ["2"]).num_covered == 0


@pytest.mark.parametrize("newline", [True, False], ids=["c_tool", "gensim_style"])
def test_word2vec_binary_reads_known_values(tmp_path, newline):
  path = tmp_path / "vectors.bin"
  path.write_bytes(binary_file(ENTRIES, newline=newline))
  assert detect_format(path) == ("word2vec_binary", 2)
  wv = load_word_vectors(path, ["[PAD]", "king", "queen", "né", "rook"])
  np.testing.assert_array_equal(wv.covered, [False, True, True, True, False])
  np.testing.assert_array_equal(wv.matrix[1:4], [[1.5, -2.0], [0.25, 4.0], [-0.5, 0.125]])
  assert wv.exact == 2  # "queen" came from "Queen"
  explicit = load_word_vectors(path, ["king"], file_format="word2vec_binary")
  np.testing.assert_array_equal(explicit.matrix, [[1.5, -2.0]])


def test_gzip_files_are_read(tmp_path):
  path = tmp_path / "glove.txt.gz"
  with gzip.open(path, "wt") as f:
    f.write(GLOVE)
  np.testing.assert_allclose(load_word_vectors(path, ["the"]).matrix, [[0.1, 0.2, 0.3]],
                             rtol=1e-7)


def test_rescaling_keeps_directions_and_sets_the_std():
  # Covered values {1, -1, 3, -3}: mean 0, std sqrt((1 + 1 + 9 + 9) / 4) = sqrt(5).
  wv = load_word_vectors(io.StringIO("a 1 -1\nb 3 -3\n"), ["a", "b", "c"], scale_to_std=0.02)
  factor = 0.02 / np.sqrt(5.0)
  np.testing.assert_allclose(wv.matrix, [[factor, -factor], [3 * factor, -3 * factor], [0, 0]],
                             rtol=1e-6)


def test_malformed_files_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="line 2"):
    load_word_vectors(io.StringIO("a 1 2\nb 1 x\n"), ["a", "b"])
  with pytest.raises(ValueError, match="line 3: expected a word and 3 numbers"):
    load_word_vectors(io.StringIO("2 3\na 1 2 3\nb 1 2\n"), ["a"])
  short = binary_file(ENTRIES, newline=False)[:-3]
  with pytest.raises(ValueError, match="ends inside the vector"):
    load_word_vectors(io.BytesIO(short), ["king"])
  promised = binary_file(ENTRIES, newline=True).replace(b"3 2\n", b"4 2\n", 1)
  with pytest.raises(ValueError, match="promises more words"):
    load_word_vectors(io.BytesIO(promised), ["king"])
  with pytest.raises(ValueError, match="looks like word2vec_text, not glove"):
    load_word_vectors(io.StringIO(WORD2VEC), ["the"], file_format="glove")
  with pytest.raises(ValueError, match="format"):
    load_word_vectors(io.StringIO(GLOVE), ["the"], file_format="fasttext")
  with pytest.raises(FileNotFoundError, match="no word-vector file"):
    load_word_vectors(tmp_path / "missing.txt", ["the"])


def test_loading_into_the_input_layer_keeps_uncovered_rows():
  cfg = models.TransformerConfig(vocab_size=5, dim=3, num_heads=1, num_layers=1, pe="nope")
  model = models.build("decoder", cfg)
  before = np.asarray(model.embedding.tokens.embedding[...])
  wv = load_word_vectors(io.StringIO(GLOVE), VOCAB)
  model.embedding.load_word_vectors(jnp.asarray(wv.matrix), jnp.asarray(wv.covered))
  after = np.asarray(model.embedding.tokens.embedding[...])
  np.testing.assert_allclose(after[[0, 4]], before[[0, 4]])
  np.testing.assert_allclose(after[1:4], wv.matrix[1:4])


def test_files_gensim_writes_read_back_the_same():
  """Against gensim 4.4's own writer: files it wrote (tests/fixtures/make_word2vec_fixtures.py)."""
  fixtures = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "word2vec"
  for kind in ("binary", "text"):
    path = fixtures / f"gensim_{kind}.w2v"
    assert detect_format(path)[0] == f"word2vec_{kind}"
    wv = word_vectors.load_word_vectors(path, [w for w, _ in ENTRIES], lowercase_fallback=False)
    np.testing.assert_array_equal(wv.matrix, [v for _, v in ENTRIES])
