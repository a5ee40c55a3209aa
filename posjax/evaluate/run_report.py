"""The final report of a run: what `posjax.main` prints and writes after training or with
`mode=eval`.

Language modelling (LM, MLM): validation loss and perplexity at each `eval.length_multipliers` ×
seq_len, on the same text (`eval_by_length.md`). Labelled fine-tuning: the best checkpoint (by
`train.best_metric`) on the validation split, and on the test split with passages up to each
multiplier × seq_len (`finetune_report.md`, and everything in `finetune_results.json`).
Algorithmic problems: accuracy at every test input length (`posjax.evaluate.algorithmic`).
"""

from __future__ import annotations

import json
import math
import os

from posjax.evaluate import algorithmic
import jax

from posjax.run import classification, objectives
from posjax.run.experiment import Run
from posjax.run.objectives import LengthResult


def report(run: Run, state) -> str:
  """Evaluate `state` as the run's final report, write it under the workdir, return it."""
  if isinstance(run.objective, objectives.Labelled):
    return labelled_report(run, state)
  if isinstance(run.objective, objectives.Algorithmic):
    return algorithmic.report(run, state)
  table = length_table(evaluate_lengths(run, state))
  if jax.process_index() == 0:
    with open(os.path.join(run.workdir, "eval_by_length.md"), "w") as f:
      f.write(table + "\n")
  return (f"Validation by evaluation length ({run.cfg.pe}, trained at "
          f"{run.config.data.seq_len} tokens):\n{table}")


def evaluate_lengths(run: Run, state) -> list[LengthResult]:
  """Validation at each `eval.length_multipliers` × seq_len on the same text: at k × L, the
  evaluation takes num_batches / k batches (rounded up), i.e. the same number of tokens from the
  start of the same validation stream (exactly the same when k divides num_batches)."""
  ec, seq_len = run.config.eval, run.config.data.seq_len
  return [run.objective.evaluate_length(run, state, int(seq_len * m),
                                        math.ceil(ec.num_batches / m) if ec.num_batches else 0)
          for m in ec.length_multipliers]


def labelled_report(run: Run, state) -> str:
  """The best checkpoint on validation, and on test passages up to each multiplier × seq_len."""
  config, objective = run.config, run.objective
  best = run.checkpointer.best_step()
  if best is not None and best != int(state.step):
    state, _ = run.restore(best)
  step, seq_len = int(state.step), config.data.seq_len
  rows = [dict(split="validation", seq_len=seq_len, multiplier=1.0,
               **objective.evaluate(run, state, "validation", seq_len))]
  if config.data.test_split:
    for m in config.eval.length_multipliers:
      rows.append(dict(split="test", seq_len=int(seq_len * m), multiplier=float(m),
                       **objective.evaluate(run, state, "test", int(seq_len * m))))
  names = objective.label_names
  detail = rows[1] if len(rows) > 1 else rows[0]  # test at the training length, if any
  trainable = run.trainable
  text = (f"{config.data.name}: {run.cfg.pe}, peft {run.peft.method} "
          f"({trainable.num_trainable:,} of {trainable.num_params:,} parameters "
          f"trained), checkpoint of step {step}\n\n{labelled_table(rows)}\n\n"
          f"Per class, {detail['split']} at {detail['seq_len']} tokens:\n\n"
          + classification.format_report(detail, names))
  summary = dict(pe=run.cfg.pe, peft=run.peft.method, step=step, labels=list(names),
                 trainable_params=trainable.num_trainable, total_params=trainable.num_params,
                 results=rows)
  if jax.process_index() == 0:
    with open(os.path.join(run.workdir, "finetune_report.md"), "w") as f:
      f.write(text + "\n")
    with open(os.path.join(run.workdir, "finetune_results.json"), "w") as f:
      json.dump(summary, f, indent=1)
  return text


def labelled_table(rows: list[dict]) -> str:
  """A Markdown table of labelled evaluations: split, length, examples, scores."""
  entity = any("entity" in r for r in rows)
  lines = ["| split | max tokens | × train length | examples | accuracy | macro-F1 |"
           + (" entity F1 |" if entity else ""),
           "|---|---:|---:|---:|---:|---:|" + ("---:|" if entity else "")]
  for r in rows:
    line = (f"| {r['split']} | {r['seq_len']} | {r['multiplier']:g} | {r['examples']} | "
            f"{r['accuracy']:.4f} | {r['macro_f1']:.4f} |")
    lines.append(line + (f" {r['entity']['f1']:.4f} |" if entity else ""))
  return "\n".join(lines)


def length_table(results: list[LengthResult]) -> str:
  """A Markdown table of validation loss and perplexity by evaluation length."""
  lines = ["| length | × train length | val loss | val perplexity | val accuracy | tokens |",
           "|---:|---:|---:|---:|---:|---:|"]
  for r in results:
    lines.append(f"| {r.seq_len} | {r.multiplier:g} | {r.loss:.4f} | {r.perplexity:.3f} | "
                 f"{r.accuracy:.3f} | {r.tokens} |")
  return "\n".join(lines)
