"""BERT's WordPiece tokenizer, read from a checkpoint's `vocab.txt` (for fine-tuning HF BERT).

Two stages, as in Devlin et al. 2019 (and the original BERT release's `tokenization.py`):
1. basic: drop control characters, map whitespace to spaces, put spaces around CJK ideographs;
   if `lower_case`, lower-case and strip accents (NFD, drop combining marks); split on
   whitespace, then split off every punctuation character (ASCII symbols and Unicode `P*`).
2. WordPiece: each word greedily becomes the longest vocabulary prefix, then the longest `##`
   continuation, and so on; a word that cannot be covered (or is over 100 characters) is [UNK].

`encode_with_offsets` also returns each token's first character in the original text, so
character-level tags (NER) become token tags.
"""

from __future__ import annotations

import os
import unicodedata

import numpy as np

MAX_WORD_CHARS = 100


def _is_punctuation(ch: str) -> bool:
  cp = ord(ch)
  if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
    return True
  return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
  return any(lo <= cp <= hi for lo, hi in (
      (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
      (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


def _is_control(ch: str) -> bool:
  if ch in "\t\n\r":
    return False
  return unicodedata.category(ch) in ("Cc", "Cf")


class WordPieceTokenizer:
  """`vocab.txt` (one token a line, id = line number) with BERT's special tokens."""

  name = "wordpiece"

  def __init__(self, vocab_file: str, *, lower_case: bool = True):
    if not os.path.exists(vocab_file):
      raise ValueError(f"no WordPiece vocabulary at {vocab_file} (a BERT checkpoint directory "
                       "holds vocab.txt)")
    with open(vocab_file, encoding="utf-8") as f:
      tokens = [line.rstrip("\n") for line in f]
    self.vocab = {t: i for i, t in enumerate(tokens)}
    self.tokens = tokens
    self.lower_case = lower_case
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t not in self.vocab]
    if missing:
      raise ValueError(f"{vocab_file} lacks the special tokens {missing}")
    self.pad_id, self.unk_id = self.vocab["[PAD]"], self.vocab["[UNK]"]
    self.cls_id, self.sep_id = self.vocab["[CLS]"], self.vocab["[SEP]"]
    self.mask_id = self.vocab["[MASK]"]
    self.eos_id = self.sep_id  # ends a sequence, as [SEP] does
    self.vocab_size = len(tokens)
    self._fingerprint = f"wordpiece-{len(tokens)}-{int(lower_case)}"

  @property
  def special_ids(self) -> tuple[int, ...]:
    return (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id)

  def fingerprint(self) -> str:
    return self._fingerprint

  def _words(self, text: str) -> list[tuple[str, int]]:
    """Basic tokenization: `(word, offset of its first character in text)`."""
    words, current, start = [], [], 0

    def flush():
      if current:
        words.append(("".join(current), start))
        current.clear()

    for i, ch in enumerate(text):
      cp = ord(ch)
      if cp == 0 or cp == 0xFFFD or _is_control(ch):
        continue
      if ch.isspace() or unicodedata.category(ch) == "Zs":
        flush()
        continue
      if self.lower_case:
        ch = "".join(c for c in unicodedata.normalize("NFD", ch.lower())
                     if unicodedata.category(c) != "Mn")
        if not ch:
          continue
      if _is_punctuation(ch) or _is_cjk(cp):
        flush()
        words.append((ch, i))
        continue
      if not current:
        start = i
      current.append(ch)
    flush()
    return words

  def _pieces(self, word: str) -> list[tuple[int, int]]:
    """WordPiece: `(id, offset within the word)`, or [UNK] for the whole word."""
    if len(word) > MAX_WORD_CHARS:
      return [(self.unk_id, 0)]
    pieces, begin = [], 0
    while begin < len(word):
      end = len(word)
      while end > begin:
        piece = word[begin:end] if begin == 0 else "##" + word[begin:end]
        if piece in self.vocab:
          pieces.append((self.vocab[piece], begin))
          break
        end -= 1
      if end == begin:
        return [(self.unk_id, 0)]
      begin = end
    return pieces

  def encode_with_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    """`(ids, start character of each token in text)`, int32, no [CLS]/[SEP]."""
    ids, starts = [], []
    for word, offset in self._words(text):
      for token, within in self._pieces(word):
        ids.append(token)
        # Lower-casing/accent stripping keeps one character per character, except when a
        # character decomposes: the offset is then approximate within the word.
        starts.append(min(offset + within, len(text) - 1))
    return np.asarray(ids, np.int32), np.asarray(starts, np.int32)

  def encode(self, text: str) -> np.ndarray:
    return self.encode_with_offsets(text)[0]

  def decode(self, ids) -> str:
    words = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if i in self.special_ids:
        continue
      token = self.tokens[i]
      if token.startswith("##") and words:
        words[-1] += token[2:]
      else:
        words.append(token)
    return " ".join(words)
