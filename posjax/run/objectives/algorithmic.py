"""`Algorithmic`: a synthetic problem trained on short inputs (`task=algorithmic`)."""

from __future__ import annotations

from typing import Optional

from posjax.data import algorithmic
from posjax.run.config import table_limit
from posjax.run.objectives.text import exact_match_evaluation


POSITIONS = ("contiguous", "randomized")


class Algorithmic:
  """`task=algorithmic`: a synthetic problem (`data.name`; `posjax.data.algorithmic`), trained on
  input lengths drawn uniformly from `data.min_train_length..max_train_length`.

  Validation draws `eval.num_batches` batches of held-out examples (seed `eval.seed`) at the
  training lengths: loss and token accuracy over the output tokens, and sequence accuracy, the
  share of examples whose output tokens are all right (teacher forcing, argmax). The final
  report scores every test length (`posjax.evaluate.algorithmic`).
  """

  loss = None  # the token-level cross-entropy over the output tokens

  def __init__(self, config):
    self.config = config

  @property
  def train_seq_len(self) -> int:
    """The padded length of every training batch: the longest example, bucketed."""
    d = self.config.data
    return algorithmic.bucket(algorithmic.sequence_length(d.name, d.max_train_length), d.bucket)

  @property
  def eval_positions(self) -> str:
    """The positions of the evaluations: `eval.positions`, or training's for `train`."""
    mode = self.config.eval.positions
    return self.config.data.positions if mode == "train" else mode

  def tokenizer(self):
    return algorithmic.Vocabulary()

  def head_options(self) -> dict:
    return {}

  def problems(self, cfg, num_data_shards: int) -> list[str]:
    del num_data_shards  # check_run checks the batch sizes
    d, e = self.config.data, self.config.eval
    if d.name not in algorithmic.PROBLEMS:
      return [f"data.name={d.name!r}: choose a problem ({', '.join(algorithmic.PROBLEMS)})"]
    problems = []
    if d.positions not in POSITIONS:
      problems.append(f"data.positions={d.positions!r}: choose one of {POSITIONS}")
    if e.positions not in POSITIONS + ("train",):
      problems.append(f"eval.positions={e.positions!r}: choose train, contiguous or randomized")
    if not 1 <= d.min_train_length <= d.max_train_length:
      problems.append(f"training lengths {d.min_train_length}..{d.max_train_length}: need "
                      "1 <= data.min_train_length <= data.max_train_length")
    if e.num_batches < 1 or e.num_examples < 1 or e.max_length < 1 or d.bucket < 1:
      problems.append("eval.num_batches, eval.num_examples, eval.max_length and data.bucket "
                      "must be positive")
    if problems:
      return problems
    longest_train = algorithmic.sequence_length(d.name, d.max_train_length)
    if "randomized" in (d.positions, self.eval_positions) and longest_train > d.max_position:
      problems.append(f"randomized positions need data.max_position >= the longest training "
                      f"sequence ({longest_train} tokens for {d.name}); raise data.max_position")
    limit = table_limit(cfg)
    if limit is not None:  # out-of-table positions would embed as NaN, not fail
      if d.positions == "randomized" and d.max_position > limit:
        problems.append(f"randomized positions up to data.max_position={d.max_position} do not "
                        f"fit the {cfg.pe} table (max_len={limit}): raise model.pe_options "
                        "max_len")
      if longest_train > limit:
        problems.append(f"training sequences of {longest_train} tokens ({d.name} at length "
                        f"{d.max_train_length}) do not fit the {cfg.pe} table (max_len={limit})"
                        ": raise model.pe_options max_len")
    return problems

  def batches(self, *, lengths: tuple[int, int], batch_size: int, seed: int, pad_to: int,
              positions: str, process_index: int = 0,
              num_batches: Optional[int] = None) -> algorithmic.Batches:
    """Batches of this run's problem at input lengths `lengths[0]..lengths[1]`."""
    d = self.config.data
    return algorithmic.Batches(d.name, batch_size=batch_size, min_length=lengths[0],
                               max_length=lengths[1], seed=seed,
                               family=self.config.model.family, pad_to=pad_to,
                               randomized=positions == "randomized", max_position=d.max_position,
                               process_index=process_index, num_batches=num_batches)

  def dataset(self, tokenizer, split: str, seq_len: int, *, batch_size: int, seed: int,
              process_index: int = 0, **unused) -> algorithmic.Batches:
    """Training examples (`train`, endless, seed `seed`) or the held-out validation examples
    (`eval.num_batches` batches, seed `eval.seed`), at the training lengths."""
    del tokenizer, unused  # one vocabulary; examples are generated, never shuffled or repeated
    d, e = self.config.data, self.config.eval
    lengths = (d.min_train_length, d.max_train_length)
    if split == "train":
      return self.batches(lengths=lengths, batch_size=batch_size, seed=seed, pad_to=seq_len,
                          positions=d.positions, process_index=process_index)
    return self.batches(lengths=lengths, batch_size=batch_size, seed=e.seed, pad_to=seq_len,
                        positions=self.eval_positions, process_index=process_index,
                        num_batches=e.num_batches)

  def validate(self, run, state) -> dict[str, float]:
    totals, right, examples = exact_match_evaluation(
        run, state, run.dataset("validation", self.train_seq_len, self.config.eval.batch_size,
                                train=False))
    return {"eval/loss": totals["loss_sum"] / totals["weight_sum"],
            "eval/token_accuracy": totals["correct_sum"] / totals["weight_sum"],
            "eval/seq_accuracy": right / examples}
