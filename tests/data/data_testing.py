"""Helpers for the data tests: a tokenizer whose ids say where each token came from."""

from __future__ import annotations

import numpy as np

from posjax.configs import load_config


class IntTokenizer:
  """A test tokenizer: a document is space-separated integers, each a token id.

  With distinct integers in every document, each target identifies where it came from.
  """

  pad_id, eos_id, mask_id = 0, 1, 2
  special_ids = (0, 1, 2)
  vocab_size = 1_000_000

  def encode(self, text):
    return np.asarray([int(w) for w in text.split()], np.int32)

  def decode(self, ids):
    return " ".join(str(int(i)) for i in ids if i > 2)


def int_documents(lengths, start=3):
  """Documents of the given lengths with distinct ids `start, start + 1, ...`."""
  docs, next_id = [], start
  for n in lengths:
    docs.append(" ".join(str(i) for i in range(next_id, next_id + n)))
    next_id += n
  return docs


def data_config(config_file: str = "lm.py", **fields):
  """`config.data` as `config_file` declares it, with `fields` set (each must be declared)."""
  config = load_config(config_file).data
  for name, value in fields.items():
    if name not in config:
      raise KeyError(f"{config_file} declares no data.{name}")
    config[name] = value
  return config
