"""Objectives on text read in windows (or passages, or pairs) of `data.seq_len` tokens with the
tokenizer of `data.tokenizer`; `LanguageModeling` (`task=lm` or `mlm`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.experimental.multihost_utils import process_allgather

from posjax import data
from posjax.data import passkey
from posjax.run import sharding
from posjax.run.config import window_problems


@dataclasses.dataclass
class LengthResult:
  """Next-token (or masked-token) scores over windows of `seq_len` tokens."""
  seq_len: int
  multiplier: float
  loss: float
  perplexity: float
  accuracy: float
  tokens: int


def summed_evaluation(run, state, seq_len: int, num_batches: int,
                      keys: Sequence[str]) -> dict[str, float]:
  """The `keys` of the run's eval step summed over its validation batches of `seq_len` tokens
  (the first `num_batches`; 0: all)."""
  totals = dict.fromkeys(keys, 0.0)
  batches = run.dataset("validation", seq_len, run.config.eval.batch_size, train=False)
  for i, host_batch in enumerate(batches):
    if num_batches and i >= num_batches:
      break
    out = jax.device_get(run.trainable.eval_step(state.params, state.rest,
                                                 run.global_batch(host_batch)))
    for k in totals:
      totals[k] += float(out[k])
  return totals


def exact_match_evaluation(run, state, host_batches) -> tuple[dict[str, float], int, int]:
  """`(sums, right, rows)` of the run's predict step over `host_batches` (this process's share of
  each global batch): the eval step's sums, and how many of the rows with a weighted target have
  every weighted target predicted (teacher-forced argmax), of how many such rows."""
  totals = {"loss_sum": 0.0, "weight_sum": 0.0, "correct_sum": 0.0}
  right = rows = 0
  for host_batch in host_batches:
    batch = run.global_batch(host_batch)
    out = run.trainable.predict_step(state.params, state.rest, batch)
    for k in totals:
      totals[k] += float(jax.device_get(out[k]))
    gathered = process_allgather({"predictions": out["predictions"], "targets": batch["targets"],
                                  "weights": batch["weights"]}, tiled=True)
    scored = gathered["weights"] > 0
    wrong = (gathered["predictions"] != gathered["targets"]) & scored
    right += int(np.sum(~wrong.any(axis=-1) & scored.any(axis=-1)))
    rows += int(np.sum(scored.any(axis=-1)))
  return totals, right, rows


def host_batches(rows: dict[str, np.ndarray], batch_size: int, run):
  """This process's share of `rows` cut into global batches of `batch_size` rows, the last one
  padded with weightless copies of the last row."""
  index, count = sharding.batch_share(run.mesh)
  n = len(rows["inputs"])
  for start in range(0, n, batch_size):
    take = np.arange(start, start + batch_size)
    batch = {k: v[np.minimum(take, n - 1)] for k, v in rows.items()}
    batch["weights"] = np.where((take < n)[:, None], batch["weights"], 0.0).astype(np.float32)
    share = batch_size // count
    yield {k: v[index * share:(index + 1) * share] for k, v in batch.items()}


class TextObjective:
  """What the text objectives share: their training length is `data.seq_len`, their tokenizer
  `data.tokenizer`'s, their length checks `window_problems`; the token-level cross-entropy of
  `posjax.run.steps` (no `loss` of their own) and no head options."""

  loss = None

  def __init__(self, config):
    self.config = config

  @property
  def train_seq_len(self) -> int:
    return self.config.data.seq_len

  def tokenizer(self):
    return data.get_tokenizer(self.config.data)

  def problems(self, cfg, num_data_shards: int) -> list[str]:
    del num_data_shards  # check_run checks the batch sizes
    return window_problems(self.config, cfg)

  def head_options(self) -> dict:
    return {}


class LanguageModeling(TextObjective):
  """`task=lm` (next token, decoder) or `task=mlm` (masked tokens, encoder)."""

  def __init__(self, config):
    super().__init__(config)
    data.documents(config.data, "validation")  # an unknown or unreadable dataset fails here
    # The last evaluation and the parameters it scored: the final validation of a run is also
    # the ×1 row of its report, which then costs nothing.
    self._last: Optional[tuple[Any, tuple[int, int], LengthResult]] = None

  def problems(self, cfg, num_data_shards: int) -> list[str]:
    problems = super().problems(cfg, num_data_shards)
    fraction = self.config.data.passkey_fraction
    if fraction and (self.config.task != "lm" or not 0 < fraction < 1):
      problems.append(f"data.passkey_fraction={fraction}: a fraction in [0, 1) of the rows of "
                      "task=lm (next-token) training")
    digits = self.config.data.passkey_max_digits
    if fraction and not 5 <= digits <= 18:
      problems.append(f"data.passkey_max_digits={digits}: the mixture's keys have 5 to this many "
                      "digits, at most 18")
    trials = self.config.eval.get("passkey_trials", 0)
    if trials and self.config.task != "lm":
      problems.append(f"eval.passkey_trials={trials}: passkey retrieval is scored for task=lm "
                      "(next-token) runs")
    elif trials and not 0 < trials <= passkey.HELD_OUT_TRIALS:
      problems.append(f"eval.passkey_trials={trials}: keys per depth, 1 to "
                      f"{passkey.HELD_OUT_TRIALS} (the evaluation keys the training mixture "
                      "never uses)")
    elif trials:
      shortest = passkey.min_length(self.tokenizer())
      if self.config.data.seq_len < shortest:
        problems.append(f"eval.passkey_trials={trials}: a passkey prompt needs data.seq_len >= "
                        f"{shortest}, got {self.config.data.seq_len}")
    return problems

  def dataset(self, tokenizer, split: str, seq_len: int, **pipeline):
    if self.config.task == "mlm":
      return data.make_mlm_dataset(self.config.data, split=split, seq_len=seq_len,
                                   tokenizer=tokenizer, **pipeline)
    mixture = self.config.data.passkey_fraction if split == "train" else 0.0
    return data.make_lm_dataset(self.config.data, split=split, seq_len=seq_len,
                                tokenizer=tokenizer, passkey_fraction=mixture, **pipeline)

  def validate(self, run, state) -> dict[str, float]:
    result = self.evaluate_length(run, state, self.config.data.seq_len,
                                  self.config.eval.num_batches)
    metrics = {"eval/loss": result.loss, "eval/perplexity": result.perplexity,
               "eval/accuracy": result.accuracy}
    if self.config.eval.get("passkey_trials", 0):
      metrics.update(self.passkey(run, state))
    return metrics

  def passkey(self, run, state) -> dict[str, float]:
    """Passkey retrieval at the training length (`eval.passkey_trials` evaluation keys at each
    depth of `posjax.data.passkey.DEFAULT_DEPTHS`, never keys of the training mixture): the
    fraction of keys whose digits are all the teacher-forced argmax, and of digits."""
    rows = passkey.evaluation_rows(run.tokenizer, self.config.data.seq_len,
                                   int(self.config.eval.passkey_trials))
    totals, right, prompts = exact_match_evaluation(
        run, state, host_batches(rows, self.config.eval.batch_size, run))
    return {"eval/passkey_accuracy": right / prompts,
            "eval/passkey_digit_accuracy": totals["correct_sum"] / totals["weight_sum"]}

  def evaluate_length(self, run, state, seq_len: int, num_batches: int) -> LengthResult:
    """Validation loss over non-overlapping windows of `seq_len` tokens (the first
    `num_batches` batches; 0: the whole split)."""
    key = (seq_len, num_batches)
    if self._last is not None and self._last[0] is state.params and self._last[1] == key:
      return self._last[2]
    totals = summed_evaluation(run, state, seq_len, num_batches,
                               ("loss_sum", "weight_sum", "correct_sum"))
    if totals["weight_sum"] == 0:
      raise ValueError(f"the validation split has no window of {seq_len} tokens to evaluate")
    loss = totals["loss_sum"] / totals["weight_sum"]
    result = LengthResult(seq_len, seq_len / self.config.data.seq_len, loss, float(np.exp(loss)),
                          totals["correct_sum"] / totals["weight_sum"], int(totals["weight_sum"]))
    self._last = (state.params, key, result)  # holding the params keeps their identity unique
    return result
