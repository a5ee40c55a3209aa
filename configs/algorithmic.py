"""Algorithmic length generalisation (Ruoss et al. 2023; Kazemnejad et al. 2023).

  python -m experiments.tasks --tasks=reverse,parity --schemes=nope,rope,alibi --workdir=runs/tasks

`get_config(arg)` takes a comma-separated list of words: a task (`posjax.data.tasks.TASKS`), a
positional scheme (`posjax.encodings.names()`), `decoder` or `encoder` (the model family),
`randomized` (Ruoss et al.'s randomized positions in training), and `tiny` (seconds on a CPU; the
tests). E.g. `get_config("reverse,alibi,tiny")`.
"""

from __future__ import annotations

import ml_collections

from posjax import encodings
from posjax.data import tasks as task_data


def get_config(arg=None):
  words = [w for w in (arg or "").split(",") if w]
  config = ml_collections.ConfigDict()
  config.task = "reverse"             # one of posjax.data.tasks.TASKS
  config.seed = 0                     # model initialisation

  # Ruoss et al. 2023 use 5 layers, width 64, 8 heads for every scheme.
  config.model = ml_collections.ConfigDict(dict(
      family="decoder",               # decoder ([input, SEP, output], causal) or encoder
                                      # (input then BLANK placeholders, bidirectional)
      vocab_size=0,                   # 0: the task vocabulary (posjax.data.tasks.VOCAB_SIZE)
      dim=64,                         # model width
      num_layers=5,
      num_heads=8,
      mlp_dim=256,                    # 0: 4 * dim
      activation="gelu",              # gelu, relu, silu, swiglu, ...
      dropout=0.0,
      pe="rope",                      # positional scheme, by name
      pe_options="{}",                # the scheme's options as JSON (learned: set to
                                      # '{"max_len": data.max_position}' below)
      attention_backend="auto",       # training backend: auto, xla, chunked, cudnn
  ))

  config.data = ml_collections.ConfigDict(dict(
      min_train_length=1,             # input lengths drawn uniformly from min..max per example
      max_train_length=40,
      batch_size=128,                 # examples per step, global (all devices and hosts)
      bucket=64,                      # sequences are padded to a multiple of this
      positions="contiguous",         # contiguous (0..n-1) or randomized (Ruoss et al.: a sorted
                                      # sample from [0, max_position) per example)
      max_position=2048,              # randomized positions' range; >= the longest test sequence
      seed=0,                         # the training examples
  ))

  config.train = ml_collections.ConfigDict(dict(
      steps=10_000,
      learning_rate=1e-3,
      warmup_steps=500,
      schedule="cosine",              # cosine or linear decay after warmup, to end_lr_fraction
      end_lr_fraction=0.1,
      weight_decay=0.01,              # not on biases, norms, embeddings or positional parameters
      b1=0.9,
      b2=0.98,
      grad_clip_norm=1.0,
      grad_accum_steps=1,             # micro-batches per optimizer step
      log_every=100,                  # training loss logged (and kept) every this many steps
  ))

  config.eval = ml_collections.ConfigDict(dict(
      lengths=(),                     # input lengths to test; () for the grid below
      max_length=500,                 # the grid: every length_stride-th length up to max_length,
      length_stride=10,               # plus 1, max_train_length and max_train_length + 1
      num_examples=128,               # per length (rounded up to whole batches)
      batch_size=64,                  # examples per evaluation batch, global
      bucket=64,                      # evaluation sequences are padded to a multiple of this
      positions="train",              # train (as trained, like Ruoss et al.), contiguous or
                                      # randomized
      attention_backend="chunked",    # query blocks: long inputs never hold [B, H, L, L]
      chunk_size=256,                 # queries per block
      seed=1,                         # the test examples
  ))

  config.mesh = ml_collections.ConfigDict(dict(
      data=-1,                        # data-parallel axis; -1: all devices left over
      fsdp=1,                         # parameters and optimizer state sharded over this axis
      tensor=1,                       # heads and MLP width sharded over this axis
  ))

  for word in words:
    if word == "tiny":
      config.model.update(dim=32, num_layers=2, num_heads=4, mlp_dim=64)
      config.data.update(max_train_length=8, batch_size=16, bucket=16, max_position=128)
      config.train.update(steps=40, warmup_steps=5, log_every=10, learning_rate=3e-3)
      config.eval.update(max_length=16, length_stride=4, num_examples=16, batch_size=16,
                         bucket=16, chunk_size=16)
    elif word in ("decoder", "encoder"):
      config.model.family = word
    elif word == "randomized":
      config.data.positions = "randomized"
    elif word in task_data.TASKS:
      config.task = word
    elif word in encodings.names():
      config.model.pe = word
    else:
      raise ValueError(f"unknown config argument {word!r}: use a task "
                       f"({', '.join(task_data.TASKS)}), a scheme ({', '.join(encodings.names())})"
                       ", decoder, encoder, randomized or tiny")
  if config.model.pe == "learned":
    # The table covers every position that randomized training or the tests can reach.
    config.model.pe_options = f'{{"max_len": {config.data.max_position}}}'
  return config
