"""Tokenizers: bytes by default, a SentencePiece model trained on the training split, or whole
words with a vocabulary from the training split (`posjax.data.word_tokenizer`).

Every tokenizer has `encode(str) -> int32 [n]`, `decode(ids) -> str`, `vocab_size` and the special
ids `pad_id` (padding, segment 0), `eos_id` (appended to every document) and `mask_id` (MLM).

`ByteTokenizer` layout: 0 = pad, 1 = eos (end of document), 2 = mask, byte b = b + 3; 259 ids.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Iterable, Sequence

import numpy as np

TOKENIZER_NAMES = ("byte", "sentencepiece", "bpe", "word")
MAX_TRAINING_DOCUMENTS = 100_000  # a trained tokenizer sees at most this many training documents


def check_token_ids(ids, vocab_size: int, *, what: str = "token ids") -> None:
  """Raise a ValueError naming the first id outside `[0, vocab_size)`.

  JAX clamps out-of-range gathers silently, so ids are checked on the host before they reach an
  embedding table.
  """
  ids = np.asarray(ids)
  if ids.size == 0:
    return
  bad = (ids < 0) | (ids >= vocab_size)
  if bad.any():
    first = ids.reshape(-1)[np.argmax(bad.reshape(-1))]
    raise ValueError(f"{what} contain id {int(first)} outside the vocabulary of size {vocab_size} "
                     f"(valid ids are 0..{vocab_size - 1}; the largest id seen is "
                     f"{int(ids.max())}): set config.model.vocab_size to 0 (the tokenizer's) or "
                     "at least the tokenizer's vocab_size")


class ByteTokenizer:
  """UTF-8 bytes, shifted by 3 to make room for pad (0), eos (1) and mask (2)."""

  pad_id = 0
  eos_id = 1
  mask_id = 2
  offset = 3
  vocab_size = 256 + offset
  name = "byte"

  @property
  def special_ids(self) -> tuple[int, ...]:
    return (self.pad_id, self.eos_id, self.mask_id)

  def encode(self, text: str) -> np.ndarray:
    """`str -> int32 [num_bytes]` (no eos; the pipeline appends it per document)."""
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + self.offset

  def decode(self, ids) -> str:
    """Ids back to text; special ids are dropped and invalid UTF-8 becomes U+FFFD."""
    ids = np.asarray(ids).reshape(-1)
    check_token_ids(ids, self.vocab_size)
    data = (ids[ids >= self.offset] - self.offset).astype(np.uint8).tobytes()
    return data.decode("utf-8", errors="replace")

  def fingerprint(self) -> str:
    return "byte"


class SentencePieceTokenizer:
  """A SentencePiece model (unigram or BPE) with pad 0, eos 1, unk 2 and `<mask>` 3.

  Text is kept as is (identity normalization, whitespace preserved) and characters outside the
  vocabulary fall back to bytes, so `decode(encode(s)) == s`.
  """

  name = "sentencepiece"

  def __init__(self, model_proto: bytes):
    import sentencepiece as spm
    self.model_proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = int(self._sp.get_piece_size())
    self.pad_id, self.eos_id = int(self._sp.pad_id()), int(self._sp.eos_id())
    self.mask_id = int(self._sp.piece_to_id("<mask>"))

  @property
  def special_ids(self) -> tuple[int, ...]:
    return (self.pad_id, self.eos_id, int(self._sp.unk_id()), self.mask_id)

  @classmethod
  def train(cls, texts: Iterable[str], *, vocab_size: int, model_type: str = "unigram",
            max_lines: int = 2_000_000) -> "SentencePieceTokenizer":
    """Train on the lines of `texts` (at most `max_lines` of them, sampled by SentencePiece)."""
    try:
      import sentencepiece as spm
    except ImportError:
      raise ImportError("config.data.tokenizer needs the sentencepiece package: "
                        "pip install sentencepiece (or use tokenizer=byte)") from None
    lines = (line for text in texts for line in text.splitlines() if line.strip())
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines, model_writer=model, vocab_size=vocab_size,
        model_type=model_type, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        user_defined_symbols=["<mask>"], byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, input_sentence_size=max_lines,
        shuffle_input_sentence=True, hard_vocab_limit=False, num_threads=os.cpu_count() or 1,
        minloglevel=2)
    return cls(model.getvalue())

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), np.int32)

  def decode(self, ids) -> str:
    ids = np.asarray(ids).reshape(-1)
    check_token_ids(ids, self.vocab_size)
    keep = ~np.isin(ids, (self.pad_id, self.eos_id, self.mask_id))
    return self._sp.decode([int(i) for i in ids[keep]])

  def fingerprint(self) -> str:
    return "sp-" + hashlib.sha256(self.model_proto).hexdigest()[:16]


def _cache_dir() -> str:
  from posjax.data.tfds_shakespeare import default_data_dir
  return os.path.join(os.path.dirname(default_data_dir()), "tokenizers")


def get_tokenizer(data_config, train_texts: Sequence[str] | None = None, *,
                  cache_dir: str | None = None):
  """The tokenizer named by `config.data.tokenizer`.

  `byte` needs nothing; `word` builds a word vocabulary from the training split (see
  `posjax.data.word_tokenizer`). `sentencepiece` (unigram) and `bpe` train a SentencePiece model of
  `config.data.vocab_size` pieces on `train_texts` (default: the training split of `config.data`)
  (at most `MAX_TRAINING_DOCUMENTS`, evenly spaced) and cache it under `cache_dir` (default
  `~/.cache/posjax/tokenizers`), keyed by a hash of the texts and options, so every host and every
  later run gets the same model.
  """
  from posjax.data.sources import documents
  name = data_config.tokenizer
  if name == "byte":
    return ByteTokenizer()
  if name not in TOKENIZER_NAMES:
    raise ValueError(f"unknown tokenizer {name!r}: use one of {', '.join(TOKENIZER_NAMES)}")
  if name == "word":  # whole words, vocabulary from the training split (no cache: fast)
    from posjax.data import word_tokenizer
    return word_tokenizer.from_config(data_config, train_texts)
  vocab_size = int(data_config.vocab_size)
  if vocab_size <= 0:
    raise ValueError(f"tokenizer={name} needs config.data.vocab_size > 0 (e.g. 4096)")
  model_type = "bpe" if name == "bpe" else "unigram"
  if train_texts is None:
    train_texts = documents(data_config, "train")
    if len(train_texts) > MAX_TRAINING_DOCUMENTS:  # evenly spaced, deterministic
      picks = np.linspace(0, len(train_texts) - 1, MAX_TRAINING_DOCUMENTS).astype(np.int64)
      train_texts = [train_texts[int(i)] for i in picks]
  digest = hashlib.sha256(f"{model_type}:{vocab_size}:".encode())
  for text in train_texts:
    digest.update(hashlib.sha256(text.encode("utf-8")).digest())
  path = os.path.join(cache_dir or _cache_dir(), f"{model_type}-{vocab_size}-"
                      f"{digest.hexdigest()[:16]}.model")
  if os.path.exists(path):
    with open(path, "rb") as f:
      return SentencePieceTokenizer(f.read())
  tokenizer = SentencePieceTokenizer.train(train_texts, vocab_size=vocab_size,
                                           model_type=model_type)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(tokenizer.model_proto)
  os.replace(tmp, path)
  return tokenizer
