"""`task=mlm+nsp`: BERT pretraining, the masked LM and next-sentence prediction together.

Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding" (NAACL): section 3.1 (tasks #1 and #2) and appendix A.2, "the training loss is
the sum of the mean masked LM likelihood and the mean next sentence prediction likelihood":

  L = Σ_masked xent(mlm) / #masked  +  Σ_pairs xent(nsp) / #pairs

The model (`models.EncoderForPreTraining`, family `pretraining`) reads sentence pairs `[CLS] A
[SEP] B [SEP]` with token types 0 / 1 (`posjax.data.sentence_pairs`) and returns both heads'
logits. Metrics: `train/mlm_loss`, `train/mlm_accuracy`, `train/nsp_loss`,
`train/nsp_accuracy` (and `loss`, their sum); `eval/loss` (the sum), `eval/mlm_loss`,
`eval/perplexity` and `eval/accuracy` (of the masked tokens), `eval/nsp_loss`,
`eval/nsp_accuracy`. The final report scores the masked LM by length, as for `task=mlm`.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from posjax import data
from posjax.data import sentence_pairs
from posjax.run.objectives.text import LengthResult, TextObjective, summed_evaluation
from posjax.run.steps import token_losses

TASK = "mlm+nsp"
FAMILY = "pretraining"
SUMS = ("mlm_loss_sum", "mlm_weight_sum", "mlm_correct_sum", "nsp_loss_sum", "nsp_weight_sum",
        "nsp_correct_sum")


class PretrainingLoss:
  """The sum of the mean masked-LM and the mean NSP cross-entropies (the loss protocol of
  `posjax.run.steps.make_loss_train_step`)."""

  def forward(self, model, batch):
    return model(batch["inputs"], batch["positions"], batch["segment_ids"],
                 batch["token_types"])

  def sums(self, outputs, batch) -> dict[str, jax.Array]:
    mlm_logits_BLV, nsp_logits_B2 = outputs
    mlm = token_losses(mlm_logits_BLV, batch["targets"], batch["weights"])
    nsp = token_losses(nsp_logits_B2, batch["nsp_labels"], batch["nsp_weights"])
    return dict(zip(SUMS, mlm + nsp))

  def normalizers(self, batch) -> dict[str, jax.Array]:
    return {"mlm": jnp.sum(batch["weights"].astype(jnp.float32)),
            "nsp": jnp.sum(batch["nsp_weights"].astype(jnp.float32))}

  def value(self, sums, normalizers) -> jax.Array:
    return (sums["mlm_loss_sum"] / jnp.maximum(normalizers["mlm"], 1.0)
            + sums["nsp_loss_sum"] / jnp.maximum(normalizers["nsp"], 1.0))

  def metrics(self, sums, normalizers, prefix: str = "train/") -> dict[str, Any]:
    mlm, nsp = jnp.maximum(normalizers["mlm"], 1.0), jnp.maximum(normalizers["nsp"], 1.0)
    return {f"{prefix}mlm_loss": sums["mlm_loss_sum"] / mlm,
            f"{prefix}mlm_accuracy": sums["mlm_correct_sum"] / mlm,
            f"{prefix}nsp_loss": sums["nsp_loss_sum"] / nsp,
            f"{prefix}nsp_accuracy": sums["nsp_correct_sum"] / nsp}


class MaskedLMAndNextSentence(TextObjective):
  """`task=mlm+nsp` (`model.family=pretraining`): sentence pairs from `data.name`'s splits."""

  loss = PretrainingLoss()

  def __init__(self, config):
    super().__init__(config)
    data.documents(config.data, "validation")  # an unknown or unreadable dataset fails here
    self._sentences: dict[tuple[str, str], sentence_pairs.Sentences] = {}
    self._last: Optional[tuple[Any, tuple[int, int], dict[str, float]]] = None

  def tokenizer(self) -> sentence_pairs.PairTokenizer:
    return sentence_pairs.PairTokenizer(super().tokenizer())

  def problems(self, cfg, num_data_shards: int) -> list[str]:
    problems = super().problems(cfg, num_data_shards)
    if self.config.data.seq_len < sentence_pairs.MIN_SEQ_LEN:
      problems.append(f"task={TASK} needs data.seq_len >= {sentence_pairs.MIN_SEQ_LEN} "
                      f"([CLS] A [SEP] B [SEP]), got {self.config.data.seq_len}")
    if cfg.num_token_types < 2:
      problems.append(f"task={TASK} gives the two segments token types 0 and 1: set "
                      f"model.num_token_types=2 (it is {cfg.num_token_types})")
    return problems

  def sentences(self, split: str, tokenizer) -> sentence_pairs.Sentences:
    """The split's tokenized sentences (cached: validation reads them at every evaluation)."""
    key = (split, tokenizer.fingerprint())
    if key not in self._sentences:
      self._sentences[key] = sentence_pairs.tokenize_sentences(
          data.documents(self.config.data, split), tokenizer)
    return self._sentences[key]

  def dataset(self, tokenizer, split: str, seq_len: int, **pipeline):
    return sentence_pairs.make_pair_dataset(
        self.config.data, split=split, seq_len=seq_len, tokenizer=tokenizer,
        sentences=self.sentences(split, tokenizer), **pipeline)

  def evaluate(self, run, state, seq_len: int, num_batches: int) -> dict[str, float]:
    """Both heads' scores on the validation pairs of `seq_len` tokens (the first
    `num_batches` batches; 0: the whole split): `loss` (their sum), `mlm_loss`, `perplexity`,
    `accuracy` (masked tokens), `nsp_loss`, `nsp_accuracy`, `tokens` (masked), `pairs`."""
    key = (seq_len, num_batches)
    if self._last is not None and self._last[0] is state.params and self._last[1] == key:
      return self._last[2]
    totals = summed_evaluation(run, state, seq_len, num_batches, SUMS)
    if totals["nsp_weight_sum"] == 0 or totals["mlm_weight_sum"] == 0:
      raise ValueError(f"the validation split has no sentence pair of {seq_len} tokens with a "
                       "masked token to evaluate")
    mlm_loss = totals["mlm_loss_sum"] / totals["mlm_weight_sum"]
    nsp_loss = totals["nsp_loss_sum"] / totals["nsp_weight_sum"]
    result = {"loss": mlm_loss + nsp_loss, "mlm_loss": mlm_loss,
              "perplexity": float(np.exp(mlm_loss)),
              "accuracy": totals["mlm_correct_sum"] / totals["mlm_weight_sum"],
              "nsp_loss": nsp_loss,
              "nsp_accuracy": totals["nsp_correct_sum"] / totals["nsp_weight_sum"],
              "tokens": int(totals["mlm_weight_sum"]), "pairs": int(totals["nsp_weight_sum"])}
    self._last = (state.params, key, result)
    return result

  def validate(self, run, state) -> dict[str, float]:
    result = self.evaluate(run, state, self.config.data.seq_len, self.config.eval.num_batches)
    return {f"eval/{k}": float(v) for k, v in result.items() if k not in ("tokens", "pairs")}

  def evaluate_length(self, run, state, seq_len: int, num_batches: int) -> LengthResult:
    """The masked LM's scores on pairs of `seq_len` tokens (the final report's rows)."""
    r = self.evaluate(run, state, seq_len, num_batches)
    return LengthResult(seq_len, seq_len / self.config.data.seq_len, r["mlm_loss"],
                        r["perplexity"], r["accuracy"], r["tokens"])
