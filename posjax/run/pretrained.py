"""A fine-tuning run's backbone from a Hugging Face BERT directory (`train.init_from_hf`).

The model config comes from the checkpoint's `config.json` (dropout and the attention backend from
the run's config), the tokenizer from its `vocab.txt` (WordPiece; `do_lower_case` from
`tokenizer_config.json`, default True), and the weights through `posjax.interop`: every encoder
parameter is loaded; the task head is loaded only if the checkpoint has one of the same shape
(e.g. the same number of labels), otherwise it starts fresh. A posjax pretraining checkpoint
(`train.init_from`) goes through `init_from.restore_pretrained` instead.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import numpy as np

from posjax.data.wordpiece import WordPieceTokenizer
from posjax.interop import loader
from posjax.interop.checkpoint import read_config
from posjax.models import TransformerConfig
from posjax.nn import peft
from posjax.run import checkpointing


def hf_backbone(model_config, path: str) -> tuple[WordPieceTokenizer, TransformerConfig]:
  """`(tokenizer, model config)` of the BERT checkpoint directory `path`."""
  hf_config = read_config(path)
  if hf_config["model_type"] != "bert":
    raise ValueError(f"train.init_from_hf={path} is a {hf_config['model_type']!r} checkpoint; "
                     "fine-tuning from Hugging Face takes BERT encoders (model_type bert)")
  cfg = loader.config_from_hf(hf_config).replace(
      dropout=float(model_config.dropout), attention_backend=model_config.attention_backend,
      dtype=model_config.dtype)
  lower_case = True
  settings = os.path.join(path, "tokenizer_config.json")
  if os.path.exists(settings):
    with open(settings, encoding="utf-8") as f:
      lower_case = bool(json.load(f).get("do_lower_case", True))
  return WordPieceTokenizer(os.path.join(path, "vocab.txt"), lower_case=lower_case), cfg


def hf_params(path: str, family: str, abstract_params: Any,
              source_path: Callable[[tuple[str, ...]], tuple[str, ...]] = tuple
              ) -> tuple[dict[str, np.ndarray], list[str]]:
  """`({model path: array}, fresh model paths)` from the checkpoint at `path`; a shape mismatch
  outside the head, or a backbone parameter the checkpoint lacks, is a ValueError."""
  _, _, _, params = loader.convert_checkpoint(path, family)
  source = {"/".join(str(k) for k in key): value for key, value in params.items()}
  loaded, fresh, problems = {}, [], []
  for keys, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
    names = tuple(checkpointing.path_name(keys).split("/"))
    model_path, src = "/".join(names), "/".join(source_path(names))
    value = source.get(src)
    if value is not None and tuple(value.shape) == tuple(leaf.shape):
      loaded[model_path] = value
    elif names[0] == "head" or (value is None and peft.is_added(names)):
      fresh.append(model_path)
    else:
      problems.append(f"{src}: model {tuple(leaf.shape)}, checkpoint "
                      f"{'missing' if value is None else tuple(value.shape)}")
  if problems:
    raise ValueError(f"train.init_from_hf={path} does not fit the model:\n  - "
                     + "\n  - ".join(problems))
  return loaded, fresh
