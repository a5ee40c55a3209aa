"""Labelled data for fine-tuning: sequence classification and token classification (BIO tags).

`config.data.name` picks the set:
- `shakespeare_genre`: a passage → the genre of its work (`shakespeare_tasks.genre_passages`).
- `shakespeare_characters`: BIO tags of character names in dialogue (`character_passages`).
- a TFDS catalog name (needs the network, or a prepared copy under `config.data.data_dir`):
  sequence classification reads `config.data.text_key` and `label_key` (imdb_reviews: text, label;
  glue/sst2: sentence, label); token classification reads the words `tokens_key` and their tags
  `tags_key` (conll2003: tokens, ner; wikiann/en: tokens, tags), joined with single spaces.

Passages are at most `config.data.seq_len` characters long for the embedded sets (evaluating at
k × seq_len builds passages k times longer from the same held-out works). Token tags live on
characters and become one tag per byte (byte tokenizer) or per WordPiece token (its first
character's tag); other tokenizers cannot tag.

Batches are host-local numpy dicts: `inputs`, `positions`, `segment_ids` `[b, L]` (int32) and
`targets`, `weights`: `[b]` for sequence classification, `[b, L]` for tagging. Rows are single
examples padded to L (segment 0, weight 0); with `pooling=cls` each row starts with the tokenizer's
eos id, which serves as the CLS token (a WordPiece vocabulary wraps every example in [CLS] ...
[SEP], as BERT was trained).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import grain
import numpy as np

from posjax.data import shakespeare_tasks, sources
from posjax.data.shakespeare_tasks import B, I, O, Passages
from posjax.data.tokenizers import ByteTokenizer, check_token_ids

EMBEDDED = {"shakespeare_genre": ("sequence", shakespeare_tasks.genre_passages),
            "shakespeare_characters": ("token", shakespeare_tasks.character_passages)}
KINDS = {"classify": "sequence", "tag": "token"}


def word_tags_to_char_tags(words: list[str], word_tags: list[str]) -> tuple[str, np.ndarray]:
  """Words with BIO tags (`B-LOC`, `I-LOC`, `O`, ...) → `(text, tag per character)`, tag names
  kept as strings. Words are joined by single spaces; a space inside an entity (between a word and
  the next one tagged `I-` of the same type) is `I-`."""
  pieces, tags = [], []
  for i, (word, tag) in enumerate(zip(words, word_tags, strict=True)):
    if i:
      continues = tag.startswith("I-") and word_tags[i - 1][2:] == tag[2:] and word_tags[i - 1] != "O"
      pieces.append(" ")
      tags.append(tag if continues else "O")
    pieces.append(word)
    inside = "I-" + tag[2:] if tag != "O" else "O"
    tags.extend([tag] + [inside] * (len(word) - 1))
  return "".join(pieces), np.asarray(tags, dtype=object)


def char_tags_to_byte_tags(text: str, tags: np.ndarray, inside_of: dict[int, int]) -> np.ndarray:
  """One tag per UTF-8 byte: a character's later bytes continue it (`B-x` → `I-x`), so spans
  stay spans. `inside_of` maps each tag id to the id that continues it (O → O)."""
  lengths = np.fromiter((len(c.encode("utf-8")) for c in text), np.int64, len(text))
  if np.all(lengths == 1):
    return np.asarray(tags, np.int32)
  out = []
  for tag, n in zip(np.asarray(tags).tolist(), lengths.tolist()):
    out.extend([tag] + [inside_of[tag]] * (n - 1))
  return np.asarray(out, np.int32)


def inside_map(label_names: tuple[str, ...]) -> dict[int, int]:
  """`{tag id: id of the tag that continues it}` for BIO names."""
  index = {name: i for i, name in enumerate(label_names)}
  return {i: index.get("I-" + name[2:], i) if name.startswith("B-") else i
          for i, name in enumerate(label_names)}


def _catalog_passages(data_config, split: str, kind: str) -> Passages:
  name = data_config.name
  data_dir = data_config.data_dir or None
  text_key = data_config.text_key
  label_key = data_config.label_key
  tokens_key = data_config.tokens_key
  tags_key = data_config.tags_key
  required = (dict(text_key=text_key, label_key=label_key) if kind == "sequence"
              else dict(tokens_key=tokens_key, tags_key=tags_key))
  records, features = sources.catalog_source(name, split, data_dir=data_dir, required=required)
  if kind == "sequence":
    names = tuple(features[label_key].names)
    texts, labels = [], []
    for record in records:
      label = int(record[label_key])
      if label < 0:
        raise ValueError(f"TFDS dataset {name!r} split {split!r} has unlabelled examples "
                         f"(label {label}); use a split with labels")
      texts.append(sources.as_text(record[text_key]))
      labels.append(label)
    return Passages(texts, labels, names, kind, [name] * len(texts))
  names = tuple(features[tags_key].feature.names)
  index = {n: i for i, n in enumerate(names)}
  texts, labels = [], []
  for record in records:
    words = [sources.as_text(w) for w in record[tokens_key]]
    text, char_tags = word_tags_to_char_tags(words, [names[int(t)] for t in record[tags_key]])
    texts.append(text)
    labels.append(np.asarray([index[t] for t in char_tags], np.int32))
  return Passages(texts, labels, names, kind, [name] * len(texts))


def load_passages(data_config, split: str, *, kind: str, seq_len: Optional[int] = None) -> Passages:
  """The labelled examples of `split` (see the module docstring); `kind` is sequence or token."""
  name = data_config.name
  if name in EMBEDDED:
    expected, build = EMBEDDED[name]
    if expected != kind:
      raise ValueError(f"data.name={name} is a {expected}-labelling set, but the task needs "
                       f"{kind} labels: use {'task=classify' if expected == 'sequence' else 'task=tag'}")
    limit = int(data_config.max_per_work if split == "train"
                else data_config.eval_max_per_work) or None
    max_chars = (seq_len or data_config.seq_len) - 1  # room for the CLS token
    return build(split, max_chars=max_chars, max_per_work=limit)
  if name in sources.SOURCE_NAMES:
    raise ValueError(f"data.name={name} holds unlabelled text; fine-tuning needs "
                     f"{' or '.join(EMBEDDED)} or a labelled TFDS dataset")
  return _catalog_passages(data_config, split, kind)


@dataclasses.dataclass
class _RowMaker:
  """Example index → one padded row (see the module docstring)."""
  tokens: list[np.ndarray]
  labels: list
  kind: str
  seq_len: int
  pad_id: int

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    L = self.seq_len
    row = {"inputs": np.full(L, self.pad_id, np.int32), "positions": np.zeros(L, np.int32),
           "segment_ids": np.zeros(L, np.int32)}
    if self.kind == "token":
      row["targets"], row["weights"] = np.zeros(L, np.int32), np.zeros(L, np.float32)
    else:
      row["targets"], row["weights"] = np.zeros((), np.int32), np.zeros((), np.float32)
    if index < 0:  # padding row of an evaluation batch
      return row
    tokens = self.tokens[index][:L]
    n = len(tokens)
    row["inputs"][:n] = tokens
    row["positions"][:n] = np.arange(n)
    row["segment_ids"][:n] = 1
    if self.kind == "token":
      tags = self.labels[index][:n]
      row["targets"][:len(tags)] = tags
      row["weights"][:len(tags)] = 1.0
    else:
      row["targets"][()] = self.labels[index]
      row["weights"][()] = 1.0
    return row


def encode_passages(passages: Passages, tokenizer, *, cls: bool,
                    seq_len: Optional[int] = None) -> tuple[list, list]:
  """`(token ids per example, labels per example)`, at most `seq_len` tokens each.

  A tokenizer with `cls_id`/`sep_id` (WordPiece, for BERT) wraps every example as
  `[CLS] text [SEP]`; otherwise `cls` prepends the eos id as a CLS token. Character tags become
  token tags: one per byte for the byte tokenizer, each token's first character's tag for one
  with `encode_with_offsets`.
  """
  bert_style = hasattr(tokenizer, "cls_id") and hasattr(tokenizer, "sep_id")
  prefix = [tokenizer.cls_id] if bert_style else [tokenizer.eos_id] if cls else []
  suffix = [tokenizer.sep_id] if bert_style else []
  room = None if seq_len is None else seq_len - len(prefix) - len(suffix)
  inside = inside_map(passages.label_names)
  # A tokenizer with a truncation policy (posjax.data.word_tokenizer) decides which end goes.
  truncate = (lambda x: tokenizer.truncate(x, room)) if (
      hasattr(tokenizer, "truncate") and room is not None) else (lambda x: np.asarray(x)[:room])
  tokens, labels = [], []
  for text, label in zip(passages.texts, passages.labels):
    if passages.kind == "token":
      if isinstance(tokenizer, ByteTokenizer):
        ids, tags = tokenizer.encode(text), char_tags_to_byte_tags(text, label, inside)
      elif hasattr(tokenizer, "encode_with_offsets"):
        ids, starts = tokenizer.encode_with_offsets(text)
        tags = np.asarray(label, np.int32)[starts] if len(ids) else np.zeros(0, np.int32)
      else:
        raise ValueError("token classification needs character offsets: use data.tokenizer=byte "
                         "(or a BERT checkpoint's WordPiece vocabulary)")
      tags = np.concatenate([[O] * len(prefix), truncate(tags), [O] * len(suffix)])
      labels.append(tags.astype(np.int32))
    else:
      ids = tokenizer.encode(text)
      labels.append(int(label))
    ids = np.concatenate([prefix, truncate(ids), suffix]).astype(np.int32)
    check_token_ids(ids, tokenizer.vocab_size, what="a tokenized passage")
    tokens.append(ids)
  return tokens, labels


def make_labelled_dataset(passages: Passages, tokenizer, *, seq_len: int, batch_size: int,
                          cls: bool = False, seed: int = 0, shuffle: bool = True,
                          repeat: bool = True, process_index: int = 0, process_count: int = 1,
                          drop_remainder: bool = True) -> grain.DatasetIterator:
  """An iterator over this process's batches of `passages` (rows as in the module docstring);
  `get_state()`/`set_state()` as for the LM pipeline. Without `repeat` and `drop_remainder`, the
  last batch is padded with weightless rows so every process gets the same number of batches."""
  if not len(passages):
    raise ValueError("the labelled set is empty")
  tokens, labels = encode_passages(passages, tokenizer, cls=cls, seq_len=seq_len)
  maker = _RowMaker(tokens, labels, passages.kind, seq_len, tokenizer.pad_id)
  global_batch, num = batch_size * process_count, len(tokens)
  dataset = grain.MapDataset.range(num)
  if shuffle:
    dataset = dataset.shuffle(seed=seed)
  if repeat:
    dataset = dataset.repeat(None)
  elif drop_remainder:  # whole global batches, so every process gets as many
    dataset = dataset[:num // global_batch * global_batch]
  elif num % global_batch:
    padding = grain.MapDataset.source([-1] * (global_batch - num % global_batch))
    dataset = grain.MapDataset.concatenate([dataset, padding])
  dataset = dataset[process_index::process_count].map(maker)
  return iter(dataset.batch(batch_size, drop_remainder=drop_remainder))


__all__ = ["B", "I", "O", "Passages", "load_passages", "make_labelled_dataset",
           "encode_passages", "word_tags_to_char_tags", "char_tags_to_byte_tags", "inside_map"]
