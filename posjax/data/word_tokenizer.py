"""A word-level tokenizer whose vocabulary is built from the training split (for word vectors).

Words: a text is split into runs of letters and digits, with inner apostrophes and hyphens kept
(`o'er`, `well-a-day`), and into single punctuation characters; whitespace separates and is
dropped. With `lowercase`, every word is lower-cased first (the case policy); otherwise case is
kept, so `King` and `king` are two entries.

Vocabulary: the specials first, then every word seen at least `min_count` times in the training
texts, most frequent first (ties in code-point order), capped at `max_size` entries in all
(specials included; 0: no cap). Ids:

    0 [PAD]  1 [EOS]  2 [MASK]  3 [UNK]  4 [CLS]  5 [SEP]  6... words

`[EOS]` ends every document of the LM pipeline, `[MASK]` is the MLM corruption, `[CLS]`/`[SEP]`
wrap a labelled example (`posjax.data.labelled`), and a word outside the vocabulary becomes
`[UNK]`. `decode` joins the words with single spaces (the original spacing is not kept).

Truncation and padding of one example to `length` ids (`truncate`, `pad`, `encode_batch`):
`truncation="end"` keeps the first words, `"start"` the last; `padding="end"` puts `[PAD]` after
the words, `"start"` before them. The labelled pipeline truncates with the tokenizer's own policy
(`config.data.truncation`) and pads at the end, to `data.seq_len` (its rows start at position 0).
"""

from __future__ import annotations

import collections
import hashlib
import re
from typing import Iterable, Sequence

import numpy as np

PAD, EOS, MASK, UNK, CLS, SEP = "[PAD]", "[EOS]", "[MASK]", "[UNK]", "[CLS]", "[SEP]"
SPECIALS = (PAD, EOS, MASK, UNK, CLS, SEP)
TRUNCATION = ("end", "start")
PADDING = ("end", "start")
_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*|[^\w\s]|_")


class WordTokenizer:
  """Whole words from a fixed vocabulary (see the module docstring).

  Args:
    words: the vocabulary's words, without the specials, in id order (ids from `len(SPECIALS)`).
    lowercase: lower-case text before looking words up.
    truncation: which end of a too-long example is dropped (`"end"` or `"start"`).
  """

  name = "word"
  pad_id, eos_id, mask_id, unk_id, cls_id, sep_id = range(len(SPECIALS))

  def __init__(self, words: Sequence[str], *, lowercase: bool = True, truncation: str = "end"):
    if truncation not in TRUNCATION:
      raise ValueError(f"truncation={truncation!r}: choose one of {TRUNCATION}")
    clash = sorted(set(words) & set(SPECIALS))
    if clash or len(set(words)) != len(words):
      raise ValueError(f"the word list repeats an entry or a special token ({clash or 'repeat'})")
    self.tokens = list(SPECIALS) + list(words)
    self.vocab = {t: i for i, t in enumerate(self.tokens)}
    self.vocab_size = len(self.tokens)
    self.lowercase, self.truncation = lowercase, truncation

  @classmethod
  def build(cls, texts: Iterable[str], *, min_count: int = 1, max_size: int = 0,
            lowercase: bool = True, truncation: str = "end") -> "WordTokenizer":
    """The vocabulary of `texts` (words seen at least `min_count` times; see the docstring)."""
    if min_count < 1:
      raise ValueError(f"min_count={min_count} must be at least 1")
    if max_size and max_size <= len(SPECIALS):
      raise ValueError(f"a word vocabulary of {max_size} entries leaves no room for words "
                       f"beside the {len(SPECIALS)} specials; use 0 (no cap) or more")
    counts = collections.Counter()
    for text in texts:
      counts.update(split_words(text, lowercase=lowercase))
    for special in SPECIALS:
      counts.pop(special, None)
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    if max_size:
      words = words[:max_size - len(SPECIALS)]
    if not words:
      raise ValueError(f"no word occurs {min_count} times or more in the training texts: lower "
                       "data.min_count")
    return cls(words, lowercase=lowercase, truncation=truncation)

  @property
  def special_ids(self) -> tuple[int, ...]:
    return tuple(range(len(SPECIALS)))

  def words(self, text: str) -> list[str]:
    """The words of `text` under this tokenizer's case policy (before vocabulary look-up)."""
    return split_words(text, lowercase=self.lowercase)

  def encode(self, text: str) -> np.ndarray:
    """`str -> int32 [num_words]` (unknown words → `[UNK]`; no eos, no truncation)."""
    return self.encode_with_offsets(text)[0]

  def encode_with_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    """`(ids, offset of each word's first character in text)`, for character-level tags."""
    ids, starts = [], []
    for match in _WORD.finditer(text):
      word = match.group()
      ids.append(self.vocab.get(word.lower() if self.lowercase else word, self.unk_id))
      starts.append(match.start())
    return np.asarray(ids, np.int32), np.asarray(starts, np.int64)

  def decode(self, ids) -> str:
    """The words of `ids` joined by single spaces; pad, eos, mask, cls and sep are dropped."""
    from posjax.data.tokenizers import check_token_ids
    ids = np.asarray(ids).reshape(-1)
    check_token_ids(ids, self.vocab_size)
    dropped = {self.pad_id, self.eos_id, self.mask_id, self.cls_id, self.sep_id}
    return " ".join(self.tokens[i] for i in ids.tolist() if i not in dropped)

  def truncate(self, ids, length: int) -> np.ndarray:
    """At most `length` of `ids`, dropping the end or the start (the truncation policy)."""
    ids = np.asarray(ids)
    if length < 0:
      raise ValueError(f"cannot truncate to {length} tokens")
    if len(ids) <= length:
      return ids
    return ids[:length] if self.truncation == "end" else ids[len(ids) - length:]

  def pad(self, ids, length: int, *, padding: str = "end") -> tuple[np.ndarray, np.ndarray]:
    """`(ids padded with [PAD] to length, mask of the real ids)`; `ids` must fit."""
    if padding not in PADDING:
      raise ValueError(f"padding={padding!r}: choose one of {PADDING}")
    ids = np.asarray(ids, np.int32)
    if len(ids) > length:
      raise ValueError(f"{len(ids)} ids do not fit in {length}: truncate them first")
    out, mask = np.full(length, self.pad_id, np.int32), np.zeros(length, bool)
    where = slice(0, len(ids)) if padding == "end" else slice(length - len(ids), length)
    out[where], mask[where] = ids, True
    return out, mask

  def encode_batch(self, texts: Sequence[str], length: int, *,
                   padding: str = "end") -> tuple[np.ndarray, np.ndarray]:
    """`(ids [n, length], mask [n, length])`: each text encoded, truncated and padded."""
    rows = [self.pad(self.truncate(self.encode(t), length), length, padding=padding)
            for t in texts]
    if not rows:
      return np.zeros((0, length), np.int32), np.zeros((0, length), bool)
    ids, mask = zip(*rows)
    return np.stack(ids), np.stack(mask)

  def fingerprint(self) -> str:
    digest = hashlib.sha256("\n".join(self.tokens).encode("utf-8")).hexdigest()[:16]
    return f"word-{self.vocab_size}-{int(self.lowercase)}-{digest}"


def split_words(text: str, *, lowercase: bool = True) -> list[str]:
  """The words of `text` (see the module docstring), lower-cased if `lowercase`."""
  words = _WORD.findall(text)
  return [w.lower() for w in words] if lowercase else words


def training_texts(data_config) -> Sequence[str]:
  """The texts a word vocabulary is built from: the training split of `config.data`; for the
  embedded labelled sets, the whole texts of the task's training works (never a held-out one)."""
  from posjax.data import shakespeare, shakespeare_tasks, sources
  name = data_config.name
  if name == "shakespeare_genre":
    return [shakespeare.texts()[w] for w in shakespeare_tasks.genre_split_works("train")]
  if name == "shakespeare_characters":
    return [shakespeare.texts()[w] for w in shakespeare_tasks.play_split_works("train")]
  return sources.documents(data_config, "train")


def from_config(data_config, train_texts: Sequence[str] | None = None) -> WordTokenizer:
  """`WordTokenizer.build` with `config.data`'s options (min_count, lowercase, vocab_size as the
  cap, truncation) on `train_texts` (default: `training_texts(data_config)`)."""
  texts = training_texts(data_config) if train_texts is None else train_texts
  return WordTokenizer.build(
      texts, min_count=int(data_config.min_count),
      max_size=int(data_config.vocab_size),
      lowercase=bool(data_config.lowercase),
      truncation=data_config.truncation)
