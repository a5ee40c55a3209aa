"""Algorithmic length generalisation (Ruoss et al. 2023; Kazemnejad et al. 2023): train on short
instances of a synthetic problem, score every longer input length.

  python -m posjax.main --config=configs/algorithmic.py:reverse,alibi --workdir=runs/reverse_alibi
  python -m experiments.algorithmic --config=configs/algorithmic.py --problems=reverse,parity \
      --schemes=nope,rope,alibi --seeds=0,1,2 --workdir=runs/algorithmic

The fields are configs/lm.py's (see there) except `data` and `eval`, which describe the problem
and its evaluation by input length; `task=algorithmic`, and `data.name` names the problem
(`posjax.data.algorithmic.PROBLEMS`). The argument is a comma-separated list of words: a problem,
a positional scheme (`posjax.encodings.names()`), `decoder` or `mlm` (the model family: causal
`[input, SEP, output]`, or bidirectional with the outputs predicted at BLANK placeholders),
`randomized` (Ruoss et al.'s randomized positions in training), and `tiny` (seconds on a CPU;
the tests). E.g. `configs/algorithmic.py:reverse,alibi,tiny`.
"""

import os

import ml_collections

from posjax import encodings
from posjax.configs import load_config
from posjax.data import algorithmic

_LM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lm.py")


def get_config(arg=None):
  words = [w for w in (arg or "").split(",") if w]
  config = load_config(_LM)
  config.task = "algorithmic"
  # Ruoss et al. 2023 use 5 layers, width 64, 8 heads for every scheme.
  config.model.update(family="decoder", dim=64, num_layers=5, num_heads=8, mlp_dim=256,
                      embed_scale=1.0)

  config.data = ml_collections.ConfigDict(dict(
      name="reverse",                 # the problem: one of posjax.data.algorithmic.PROBLEMS
      min_train_length=1,             # input lengths drawn uniformly from min..max per example
      max_train_length=40,
      global_batch_size=128,          # examples per step, summed over all devices and hosts
      bucket=64,                      # training sequences are padded to a multiple of this
      positions="contiguous",         # contiguous (0..n-1) or randomized (Ruoss et al.: a sorted
                                      # sample from [0, max_position) per example)
      max_position=2048,              # randomized positions' range; >= the longest test sequence
      seed=0,                         # the training examples
  ))

  config.train.update(steps=10_000, learning_rate=1e-3, warmup_steps=500, weight_decay=0.01,
                      b2=0.98, log_every=100, eval_every=1000, checkpoint_every=1000,
                      best_metric="")

  config.eval = ml_collections.ConfigDict(dict(
      num_batches=4,                  # validation: batches of held-out examples at the training
                                      # lengths (loss, token and sequence accuracy)
      batch_size=64,                  # examples per evaluation batch, global
      lengths=(),                     # input lengths of the final report; () for the grid below
      max_length=500,                 # the grid: every length_stride-th length up to max_length,
      length_stride=10,               # plus 1, max_train_length and max_train_length + 1
      num_examples=128,               # per length in the final report (whole batches)
      bucket=64,                      # evaluation sequences are padded to a multiple of this
      positions="train",              # train (as trained, like Ruoss et al.), contiguous or
                                      # randomized
      attention_backend="chunked",    # query blocks: long inputs never hold [B, H, L, L]
      chunk_size=256,                 # queries per block
      seed=1,                         # the held-out examples
  ))

  for word in words:
    if word == "tiny":
      config.model.update(dim=32, num_layers=2, num_heads=4, mlp_dim=64)
      config.data.update(max_train_length=8, global_batch_size=16, bucket=16, max_position=128)
      config.train.update(steps=40, warmup_steps=5, log_every=10, eval_every=20,
                          checkpoint_every=20, learning_rate=3e-3)
      config.eval.update(num_batches=1, max_length=16, length_stride=4, num_examples=16,
                         batch_size=16, bucket=16, chunk_size=16)
    elif word in ("decoder", "mlm"):
      config.model.family = word
    elif word == "randomized":
      config.data.positions = "randomized"
    elif word in algorithmic.PROBLEMS:
      config.data.name = word
    elif word in encodings.names():
      config.model.pe = word
    else:
      raise ValueError(f"unknown config argument {word!r}: use a problem "
                       f"({', '.join(algorithmic.PROBLEMS)}), a scheme "
                       f"({', '.join(encodings.names())}), decoder, mlm, randomized or tiny")
  if config.model.pe == "learned":
    # The table covers every position that randomized training or the final report can reach.
    config.model.pe_options = f'{{"max_len": {config.data.max_position}}}'
  return config
