"""Each process reads its own rows, and together they are the single-process batch: the LM, MLM
and labelled pipelines with process_index/process_count (in this process, no JAX processes; the
real 2-process runs are in test_training.py and test_evaluation.py)."""

from __future__ import annotations

import numpy as np
import pytest

from posjax import data
from posjax.configs import load_config
from posjax.run import objectives

CONFIGS = {"lm": "configs/lm.py:tiny", "mlm": "configs/mlm.py:tiny",
           "labelled": "configs/finetune_cls.py:tiny"}
STEPS = 3


def _batches(config, process_index: int, process_count: int, split: str = "train"):
  """One process's first STEPS training batches (or all its validation batches), and its
  iterator's state after them."""
  train = split == "train"
  tokenizer = data.get_tokenizer(config.data)
  iterator = objectives.for_config(config).dataset(
      tokenizer, split, config.data.seq_len, seed=config.data.seed, shuffle=train, repeat=train,
      batch_size=config.data.global_batch_size // process_count, drop_remainder=train,
      process_index=process_index, process_count=process_count)
  batches = [next(iterator) for _ in range(STEPS)] if train else list(iterator)
  return batches, iterator.get_state()


def _rows(batch: dict) -> list[tuple]:
  """The batch's rows, each with all its fields, in a canonical order."""
  keys = sorted(batch)
  return sorted(tuple(np.asarray(batch[k][i]).tobytes() for k in keys)
                for i in range(len(batch[keys[0]])))


@pytest.mark.parametrize("pipeline", sorted(CONFIGS))
@pytest.mark.parametrize("split", ["train", "validation"])
def test_processes_read_disjoint_rows_that_make_the_single_process_batch(pipeline, split):
  config = load_config(CONFIGS[pipeline])
  single, single_state = _batches(config, 0, 1, split)
  halves = [_batches(config, i, 2, split) for i in range(2)]
  assert len(halves[0][0]) == len(halves[1][0]) == len(single)
  for step in range(len(single)):
    mine, theirs = (_rows(halves[i][0][step]) for i in range(2))
    assert len(mine) == len(theirs) == config.data.global_batch_size // 2
    assert mine != theirs
    # As a multiset: a small set can hold one row twice in a batch that crosses an epoch.
    assert sorted(mine + theirs) == _rows(single[step]), f"step {step}"
  # Every process's state is the single process's: the global batch index (what lets a
  # checkpoint resume with another process count).
  assert halves[0][1] == halves[1][1] == single_state == {"next_index": len(single)}
