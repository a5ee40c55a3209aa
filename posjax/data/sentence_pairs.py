"""Sentence pairs for next-sentence prediction (NSP), BERT's second pretraining task.

Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding" (NAACL), section 3.1, task #2: each example is `[CLS] A [SEP] B [SEP]`, where B
is the text that follows A in its document half of the time (IsNext, label 0) and a random
passage of the corpus otherwise (NotNext, label 1); A's tokens have token type (segment) 0 and
B's 1, and the masked-LM corruption applies to both. Label 0 = IsNext follows the released code
and HF's `BertForPreTraining`.

How a pair is made here (the paper's recipe, `create_pretraining_data.py`, simplified):

- A split's documents are cut into sentences (after `.`, `!` or `?`, and a closing quote, followed
  by white space and not by a lower-case letter; runs of white space become one space), without
  stage directions in brackets or heading lines (a speaker's name, an act or scene title), and
  each sentence is tokenized alone, with a trailing space.
- An example starts from an anchor sentence (every sentence that has a successor in its document
  is one, so an epoch visits each once). A takes whole sentences from the anchor until it holds
  at least a target drawn uniformly from 1..budget-1 tokens (budget = seq_len - 3), stopping
  early so that its document still has a sentence after it.
- With probability 1/2 B starts at the sentence right after A (IsNext); otherwise at a sentence
  drawn uniformly from ANOTHER document of the same split (from the same one, at least two
  sentences away from A's end, when the split has only one). B takes whole sentences until A and
  B together fill the budget or its document ends.
- Truncation to the budget removes tokens from the longer of the two, one at a time, A from its
  start and B from its end, so that the junction of an IsNext pair stays adjacent text.

Rows hold one pair each, padded to seq_len: `inputs` (masked), `targets`, `weights` (MLM, 1 on
the chosen tokens), `positions` (0.. from [CLS]), `segment_ids` (1 on the pair, 0 on padding),
`token_types` (0 on [CLS] A [SEP], 1 on B [SEP], 0 on padding), all `[b, L]`, and
`nsp_labels` (int32) and `nsp_weights` (float32, 0 for a padding row) `[b]`.

[CLS] and [SEP]: a tokenizer with its own (WordPiece) keeps them; any other gets two ids after
its vocabulary (`PairTokenizer`), so that no existing id moves: the byte tokenizer's 259 ids stay
as they are, with [CLS] = 259 and [SEP] = 260 (a vocabulary of 261).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import grain
import numpy as np

from posjax.data import masking, sources
from posjax.data.tokenizers import check_token_ids

IS_NEXT, NOT_NEXT = 0, 1
MIN_SEQ_LEN = 8  # [CLS] A [SEP] B [SEP] with room for a few tokens of each
_PAIR_SEED_SALT = 0x6E7370  # keeps the pair stream apart from the masking and shuffling ones
_MASK_SEED_SALT = 0x6D61736B
# After `.`, `!` or `?` (and a closing quote or bracket), white space, then not a lower-case
# letter: "How now! what news?" is one sentence, as Shakespeare's punctuation means it.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'’”)]))\s+(?![a-z])")
_STAGE_DIRECTION = re.compile(r"\[[^\]]*\]")


def _is_heading(line: str) -> bool:
  """A speaker's name or a title on a line of its own: "ROMEO.", "ACT I. SCENE 1." (all its
  letters upper-case, at most 40 characters, ending with a full stop)."""
  text = line.strip()
  return (len(text) <= 40 and text.endswith(".") and any(c.isalpha() for c in text)
          and not any(c.islower() for c in text))


class PairTokenizer:
  """`base` with [CLS] and [SEP] ids: its own if it has them (WordPiece), else the next two ids
  after its vocabulary. Everything else (encode, pad, eos, mask) is the base's."""

  def __init__(self, base):
    self.base = base
    self.name = base.name
    self.pad_id, self.eos_id, self.mask_id = base.pad_id, base.eos_id, base.mask_id
    if hasattr(base, "cls_id") and hasattr(base, "sep_id"):
      self.cls_id, self.sep_id, self.vocab_size = base.cls_id, base.sep_id, base.vocab_size
    else:
      self.cls_id, self.sep_id = base.vocab_size, base.vocab_size + 1
      self.vocab_size = base.vocab_size + 2

  @property
  def special_ids(self) -> tuple[int, ...]:
    return tuple(dict.fromkeys(tuple(self.base.special_ids) + (self.cls_id, self.sep_id)))

  def encode(self, text: str) -> np.ndarray:
    return self.base.encode(text)

  def decode(self, ids) -> str:
    """The text of `ids`; [CLS] and [SEP] are dropped like the base's special ids."""
    ids = np.asarray(ids).reshape(-1)
    check_token_ids(ids, self.vocab_size)
    return self.base.decode(ids[~np.isin(ids, (self.cls_id, self.sep_id))])

  def fingerprint(self) -> str:
    return f"{self.base.fingerprint()}+cls{self.cls_id}+sep{self.sep_id}"


def split_sentences(text: str) -> list[str]:
  """Sentences of `text`: bracketed stage directions and heading lines (`_is_heading`) removed,
  cut where `_SENTENCE_END` matches; white space runs become one space; empty pieces dropped."""
  text = _STAGE_DIRECTION.sub(" ", text)
  text = "\n".join(line for line in text.splitlines() if not _is_heading(line))
  pieces = (" ".join(piece.split()) for piece in _SENTENCE_END.split(text))
  return [piece for piece in pieces if piece]


@dataclasses.dataclass(frozen=True)
class Sentences:
  """A split's sentences, tokenized: sentence i is `tokens[bounds[i]:bounds[i + 1]]`, from
  document `doc[i]`; documents are contiguous runs of sentences."""
  tokens: np.ndarray   # int32 [total tokens]
  bounds: np.ndarray   # int64 [n + 1]
  doc: np.ndarray      # int64 [n]

  def __len__(self) -> int:
    return len(self.doc)

  def length(self, i: int) -> int:
    return int(self.bounds[i + 1] - self.bounds[i])

  def anchors(self) -> np.ndarray:
    """The sentences with a successor in their document: where examples start."""
    return np.flatnonzero(self.doc[:-1] == self.doc[1:])


def tokenize_sentences(documents: Sequence[str], tokenizer) -> Sentences:
  """`Sentences` of `documents` (see `split_sentences`), each encoded with a trailing space so
  that consecutive sentences read as text; sentences that encode to nothing are dropped."""
  pieces, doc = [], []
  for d, text in enumerate(documents):
    for sentence in split_sentences(text):
      ids = np.asarray(tokenizer.encode(sentence + " "), np.int32)
      if len(ids):
        pieces.append(ids)
        doc.append(d)
  if not pieces:
    raise ValueError("the documents hold no sentence to make pairs of")
  tokens = np.concatenate(pieces)
  check_token_ids(tokens, tokenizer.vocab_size, what="tokenized sentences")
  bounds = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64)
  return Sentences(tokens, bounds, np.asarray(doc, np.int64))


def truncate_pair(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
  """The lengths left after removing tokens one at a time from the longer of the two (from B
  when they are equal) until `len_a + len_b <= budget` (computed in closed form)."""
  excess = len_a + len_b - budget
  if excess <= 0:
    return len_a, len_b
  cut = min(excess, abs(len_a - len_b))  # first the longer down to the shorter
  if len_a > len_b:
    len_a -= cut
  else:
    len_b -= cut
  excess -= cut
  # Then, equal, alternately B, A, B, ...
  return len_a - excess // 2, len_b - (excess - excess // 2)


class PairMaker:
  """A grain `random_map` function: an anchor index (or a padding index >= the number of
  anchors) and an rng -> one row (see the module docstring)."""

  def __init__(self, sentences: Sentences, *, seq_len: int, cls_id: int, sep_id: int,
               pad_id: int):
    if seq_len < MIN_SEQ_LEN:
      raise ValueError(f"sentence pairs need seq_len >= {MIN_SEQ_LEN}, got {seq_len}")
    self.sentences, self.anchors = sentences, sentences.anchors()
    if not len(self.anchors):
      raise ValueError("no document has two sentences: there is no adjacent pair to make")
    self.seq_len, self.budget = seq_len, seq_len - 3
    self.cls_id, self.sep_id, self.pad_id = cls_id, sep_id, pad_id
    self.num_docs = len(np.unique(sentences.doc))  # documents that hold a sentence

  def __len__(self) -> int:
    return len(self.anchors)

  def _text(self, first: int, last: int) -> np.ndarray:
    s = self.sentences
    return s.tokens[s.bounds[first]:s.bounds[last + 1]]

  def _random_start(self, avoid_doc: int, a_first: int, a_last: int,
                    rng: np.random.Generator) -> int:
    s, n = self.sentences, len(self.sentences)
    if self.num_docs > 1:
      while True:
        i = int(rng.integers(n))
        if s.doc[i] != avoid_doc:
          return i
    for _ in range(1000):  # one document: away from A and from its true successor
      i = int(rng.integers(n))
      if not a_first - 1 <= i <= a_last + 2:
        return i
    raise ValueError("the only document is too short to draw a random second segment from")

  def pair(self, anchor: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """`(a_ids, b_ids, label)` starting at sentence `anchor`, truncated to the budget."""
    s, budget = self.sentences, self.budget
    doc = s.doc[anchor]
    target = int(rng.integers(1, budget))
    last, len_a = anchor, s.length(anchor)
    while (len_a < target and last + 2 < len(s) and s.doc[last + 2] == doc):
      last += 1
      len_a += s.length(last)
    label = IS_NEXT if rng.random() < 0.5 else NOT_NEXT
    b_first = last + 1 if label == IS_NEXT else self._random_start(doc, anchor, last, rng)
    b_last, len_b = b_first, s.length(b_first)
    while (len_a + len_b < budget and b_last + 1 < len(s)
           and s.doc[b_last + 1] == s.doc[b_first]):
      b_last += 1
      len_b += s.length(b_last)
    keep_a, keep_b = truncate_pair(len_a, len_b, budget)
    a = self._text(anchor, last)[len_a - keep_a:]  # A loses tokens from its start,
    b = self._text(b_first, b_last)[:keep_b]       # B from its end
    return a, b, label

  def row(self, a: np.ndarray, b: np.ndarray, label: int) -> dict[str, np.ndarray]:
    """`[CLS] a [SEP] b [SEP]` padded to seq_len, with its token types and NSP label."""
    L = self.seq_len
    ids = np.concatenate([[self.cls_id], a, [self.sep_id], b, [self.sep_id]]).astype(np.int32)
    n = len(ids)
    if n > L:
      raise ValueError(f"internal error: a pair of {n} tokens exceeds seq_len={L}")
    inputs = np.full(L, self.pad_id, np.int32)
    inputs[:n] = ids
    token_types = np.zeros(L, np.int32)
    token_types[len(a) + 2:n] = 1
    segment_ids = np.zeros(L, np.int32)
    segment_ids[:n] = 1
    positions = np.zeros(L, np.int32)
    positions[:n] = np.arange(n, dtype=np.int32)
    return {"inputs": inputs, "positions": positions, "segment_ids": segment_ids,
            "token_types": token_types, "nsp_labels": np.int32(label),
            "nsp_weights": np.float32(1.0)}

  def empty_row(self) -> dict[str, np.ndarray]:
    """A padding row: no tokens, no NSP weight (fills a last evaluation batch)."""
    zeros = np.zeros(self.seq_len, np.int32)
    return {"inputs": np.full(self.seq_len, self.pad_id, np.int32), "positions": zeros,
            "segment_ids": zeros, "token_types": zeros, "nsp_labels": np.int32(IS_NEXT),
            "nsp_weights": np.float32(0.0)}

  def __call__(self, index, rng: np.random.Generator) -> dict[str, np.ndarray]:
    index = int(index)
    if index >= len(self.anchors):
      return self.empty_row()
    return self.row(*self.pair(int(self.anchors[index]), rng))


def make_pair_dataset(data_config, *, split: str, seq_len: int, batch_size: int, tokenizer,
                      seed: int | None = None, shuffle: bool = True, repeat: bool = True,
                      process_index: int = 0, process_count: int = 1,
                      drop_remainder: bool = True, mlm_probability: float | None = None,
                      sentences: Sentences | None = None) -> grain.DatasetIterator:
  """An iterator over this process's batches of sentence pairs, MLM-masked (module docstring).

  Args are those of `posjax.data.pipeline.make_lm_dataset`; `tokenizer` must have `cls_id` and
  `sep_id` (a `PairTokenizer`), and `sentences` (default: the split of `data_config`, tokenized
  now) may be given to reuse them. An epoch makes one pair from each anchor sentence; the pair
  drawn from an anchor (its lengths, its label, its random B) changes from epoch to epoch and is
  fixed by `seed`, so the iterator's state is just the next batch index.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if seed is None:
    seed = int(data_config.seed)
  if sentences is None:
    sentences = tokenize_sentences(sources.documents(data_config, split), tokenizer)
  maker = PairMaker(sentences, seq_len=seq_len, cls_id=tokenizer.cls_id,
                    sep_id=tokenizer.sep_id, pad_id=tokenizer.pad_id)
  num_rows, global_batch = len(maker), batch_size * process_count
  if not repeat:
    if drop_remainder:
      if num_rows < global_batch:
        raise ValueError(f"split {split!r} makes {num_rows} sentence pairs, fewer than one "
                         f"global batch of {global_batch}")
      num_rows = num_rows // global_batch * global_batch
    else:
      num_rows = -(-num_rows // global_batch) * global_batch  # padded with empty rows
  dataset = grain.MapDataset.range(num_rows)
  if shuffle:
    dataset = dataset.shuffle(seed=seed)
  if repeat:
    dataset = dataset.repeat(None)
  dataset = dataset[process_index::process_count]
  dataset = dataset.random_map(maker, seed=(seed ^ _PAIR_SEED_SALT) % 2**31)
  dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
  if mlm_probability is None:
    mlm_probability = float(data_config.mlm_probability)
  dataset = dataset.random_map(
      masking.MaskBatch(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id,
                        special_ids=tokenizer.special_ids, probability=mlm_probability),
      seed=(seed ^ _MASK_SEED_SALT) % 2**31)
  num_threads = max(1, int(data_config.num_workers))
  return iter(dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)))
