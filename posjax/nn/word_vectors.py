"""Pretrained word vectors (word2vec text or binary, GloVe text) aligned to a vocabulary.

Formats (`FORMATS`; `auto` tells them apart from the first bytes):
- `word2vec_text`: a header line `count dim`, then one line per word: `word v1 ... vdim`.
- `word2vec_binary`: the same header, then per word its UTF-8 bytes, one space and `dim`
  little-endian float32 values (Mikolov et al.'s `word2vec -binary 1`; the C tool ends each
  vector with a newline, gensim does not: both are read).
- `glove`: no header; one line per word, `word v1 ... vdim` (a word may contain spaces: the
  vector is always the last `dim` fields).
A path ending in `.gz` is read through gzip.

OOV policy: a vocabulary entry takes the vector of the same string in the file; failing that, if
`lowercase_fallback`, the vector of the first word in the file equal to it ignoring case; failing
that, it is not covered and keeps the model's own random initialisation (the caller decides; here
its row is zero and `covered` False). `scale_to_std` rescales the covered rows together (one
factor) to that standard deviation, e.g. the embedding's init std, so that they mix with the
random rows and meet the positional terms at the same scale as a random embedding would.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
from typing import BinaryIO, Callable, Optional, Sequence

import numpy as np

FORMATS = ("auto", "word2vec_text", "word2vec_binary", "glove")


@dataclasses.dataclass(frozen=True)
class WordVectors:
  matrix: np.ndarray     # [vocab, dim] float32; zeros where not covered
  covered: np.ndarray    # [vocab] bool
  num_covered: int
  dim: int
  exact: int = 0         # entries matched exactly (the others covered: by the lowercase fallback)

  def summary(self) -> str:
    total = len(self.covered)
    return (f"word vectors cover {self.num_covered}/{total} vocabulary entries "
            f"({100.0 * self.num_covered / max(total, 1):.1f}%; {self.exact} exact, "
            f"{self.num_covered - self.exact} by lower case), dim {self.dim}")


def _opener(source) -> Callable[[], BinaryIO]:
  """A function that opens `source` (a path, or a stream read once) from its start."""
  if isinstance(source, io.TextIOBase):
    data = source.read().encode("utf-8")
    return lambda: io.BytesIO(data)
  if isinstance(source, (io.BufferedIOBase, io.RawIOBase)):
    data = source.read()
    return lambda: io.BytesIO(data)
  path = os.fspath(source)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no word-vector file at {path}")
  return lambda: gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _header(line: bytes) -> Optional[tuple[int, int]]:
  fields = line.split()
  if len(fields) == 2 and all(f.isdigit() for f in fields):
    return int(fields[0]), int(fields[1])
  return None


def detect_format(source) -> tuple[str, int]:
  """`(format, dim)` of a word-vector file (a path or an opener), from its first lines only."""
  opener = source if callable(source) else _opener(source)
  with opener() as stream:
    first = stream.readline()
    header = _header(first)
    if header is None:
      fields = first.decode("utf-8", errors="replace").split()
      if len(fields) < 2:
        raise ValueError("the first line is neither a word2vec header `count dim` "
                         "nor a GloVe line `word v1 ... vdim`")
      dim = 1
      while dim < len(fields) and _is_float(fields[-dim - 1]):
        dim += 1  # GloVe: the longest all-number tail (a word is never only a number here)
      return "glove", dim
    dim = header[1]
    rest = stream.read(64 + 32 * dim)
  # Text: the first entry is `word` and dim numbers on one line; binary: raw float32 bytes.
  try:
    line = rest.split(b"\n", 1)[0].decode("utf-8")
    fields = line.split()
    if len(fields) > dim and all(_is_float(f) for f in fields[-dim:]):
      return "word2vec_text", dim
  except UnicodeDecodeError:
    pass
  return "word2vec_binary", dim


def _is_float(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def _text_entries(stream: BinaryIO, dim: int, first_line: int = 1):
  """`(word, vector)` of every line of a text file (word2vec text or GloVe)."""
  for number, raw in enumerate(stream, start=first_line):
    line = raw.decode("utf-8").rstrip("\r\n").rstrip(" ")
    if not line.strip():
      continue
    parts = line.split(" ")
    word, values = " ".join(parts[:-dim]), parts[-dim:]
    if len(parts) < dim + 1 or not word:
      raise ValueError(f"line {number}: expected a word and {dim} numbers, got {len(parts)} "
                       "fields")
    try:
      yield word, np.asarray(values, dtype=np.float32)
    except ValueError:
      raise ValueError(f"line {number}: the vector of {word!r} is not {dim} numbers") from None


def _binary_entries(stream: BinaryIO, count: int, dim: int):
  """`(word, vector)` of each of the `count` entries after a word2vec binary header."""
  size = 4 * dim
  for number in range(1, count + 1):
    word = bytearray()
    while True:
      byte = stream.read(1)
      if not byte:
        raise ValueError(f"the binary file ends inside entry {number} of {count} (its header "
                         "promises more words than it holds)")
      if byte == b" ":
        break
      if byte == b"\n" and not word:
        continue  # the C tool's newline after the previous vector
      word += byte
    data = stream.read(size)
    if len(data) != size:
      raise ValueError(f"the binary file ends inside the vector of entry {number} "
                       f"({bytes(word).decode('utf-8', errors='replace')!r})")
    yield bytes(word).decode("utf-8", errors="replace"), np.frombuffer(data, "<f4").copy()


def load_word_vectors(source, vocabulary: Sequence[str], *, file_format: str = "auto",
                      lowercase_fallback: bool = True,
                      scale_to_std: Optional[float] = None) -> WordVectors:
  """Vectors for `vocabulary` from a word-vector file (a path, or a binary stream).

  See the module docstring for the formats and the OOV policy.
  """
  if file_format not in FORMATS:
    raise ValueError(f"word-vector format {file_format!r}: choose one of {FORMATS}")
  opener = _opener(source)
  detected, detected_dim = detect_format(opener)
  if file_format == "auto":
    file_format = detected
  elif (file_format == "glove") != (detected == "glove"):
    raise ValueError(f"the file looks like {detected}, not {file_format} (a word2vec file starts "
                     "with a header `count dim`, a GloVe file does not)")
  index = {word: i for i, word in enumerate(vocabulary)}
  lower: dict[str, list[int]] = {}
  if lowercase_fallback:
    for word, i in index.items():
      lower.setdefault(word.lower(), []).append(i)
  found: dict[int, np.ndarray] = {}
  from_lower: dict[int, np.ndarray] = {}
  with opener() as stream:
    if file_format == "glove":
      dim = detected_dim
      entries = _text_entries(stream, dim)
    else:
      header = _header(stream.readline())
      if header is None:
        raise ValueError(f"a {file_format} file starts with a header `count dim`")
      count, dim = header
      entries = (_binary_entries(stream, count, dim) if file_format == "word2vec_binary"
                 else _text_entries(stream, dim, first_line=2))
    for word, vector in entries:
      if word in index:
        found[index[word]] = vector
      for i in lower.get(word.lower(), ()):
        from_lower.setdefault(i, vector)
  matrix = np.zeros((len(vocabulary), dim), np.float32)
  covered = np.zeros(len(vocabulary), bool)
  for i, vector in {**from_lower, **found}.items():
    matrix[i], covered[i] = vector, True
  if scale_to_std is not None and covered.any():
    matrix[covered] *= scale_to_std / max(float(matrix[covered].std()), 1e-12)
  return WordVectors(matrix, covered, int(covered.sum()), dim, exact=len(found))
