"""Algorithmic length generalisation: score a trained run at every input length.

The protocol of Ruoss et al. 2023 ("Randomized Positional Encodings Boost Length Generalization of
Transformers", ACL) and Kazemnejad et al. 2023 ("The Impact of Positional Encoding on Length
Generalization in Transformers", NeurIPS): a model is trained (`posjax.train.loop`, objective
`task=algorithmic`) on instances of a problem (`posjax.data.algorithmic`) with input lengths drawn
uniformly from 1..40, then evaluated at each test length (41..500) by accuracy:

  - sequence accuracy: the share of examples whose output tokens are ALL right (the papers'
    metric for sequence outputs; for one-token outputs it equals token accuracy),
  - token accuracy: the share of output tokens that are right.

Outputs are scored with teacher forcing (the decoder reads the true earlier output tokens; the
encoder predicts all outputs at its BLANK placeholders at once), argmax per token. For the decoder
the sequence accuracy is exactly that of greedy decoding of the known number of output tokens
(greedy decoding is all right iff every teacher-forced argmax is right); its token accuracy is
the teacher-forced one, which can be higher than greedy decoding's.

Positions: contiguous 0..n-1, or randomized (Ruoss et al.: a sorted sample from
[0, max_position) per example) for training. At evaluation `eval.positions="train"` (the default)
uses what training used, as Ruoss et al. do (they sample random positions at test time too);
"contiguous" or "randomized" force one. A learned absolute table cannot embed positions at or past
its `max_len`: such test lengths are skipped (NaN accuracy) and named in the report's notes.
Evaluation runs the model with `eval.attention_backend` (chunked by default, so long inputs never
hold a full [B, H, L, L] array) on the trained parameters.

  run = Run(config, workdir); state = loop.train(run)
  rows = evaluate_lengths(run, state)          # one dict per length
  text = report(run, state)                    # the run's own tables and plot, in its workdir
  write_report(rows, workdir)                  # several runs' rows: algorithmic.csv/.md, plots
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from posjax import models
from posjax.data import algorithmic
from posjax.evaluate import report as report_lib
from posjax.run import sharding, steps
from posjax.run.config import table_limit
from posjax.run.experiment import Run


def scheme_label(config) -> str:
  """How a run appears in tables and legends: `rope`, `rope+rand`, `alibi (mlm)`."""
  label = config.model.pe + ("+rand" if config.data.positions == "randomized" else "")
  return label + (" (mlm)" if config.model.family == "mlm" else "")


def default_lengths(config) -> list[int]:
  """`eval.lengths`, or every `eval.length_stride`-th length up to `eval.max_length` together with
  1, the longest training length and the one after it."""
  if config.eval.lengths:
    return sorted({int(n) for n in config.eval.lengths})
  longest, stride = config.data.max_train_length, config.eval.length_stride
  grid = set(range(stride, config.eval.max_length + 1, stride))
  grid |= {1, longest, min(longest + 1, config.eval.max_length)}
  return sorted(n for n in grid if n <= config.eval.max_length)


def eval_pad_length(seq_len: int, multiple: int) -> int:
  """`seq_len` rounded up to a multiple of `multiple`, or of a quarter of the power of two below
  it if that is larger: at most about 4 shapes (compilations) per octave of test lengths, and
  under 25% padding."""
  coarse = (1 << max(int(seq_len).bit_length() - 1, 0)) // 4
  return algorithmic.bucket(seq_len, max(multiple, coarse))


def _make_scorer(run: Run):
  """A jitted `(params, rest, batch) -> (correct_B, total_B)` per-example output-token counts
  with the evaluation attention backend (the parameter tree does not depend on the backend)."""
  e = run.config.eval
  cfg = run.cfg.replace(attention_backend=e.attention_backend, chunk_size=e.chunk_size)
  _, eval_graphdef, _, _ = steps.split_model(
      nnx.eval_shape(lambda: models.build(run.family, cfg, seed=run.config.seed)))

  def score(params, rest, batch):
    logits, _ = steps.forward(eval_graphdef, params, rest, batch)
    weights = batch["weights"]
    right = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32)
    return jnp.sum(right * weights, axis=-1), jnp.sum(weights, axis=-1)

  sh = run.trainable.state_sharding
  return jax.jit(score, in_shardings=(sh.params, sh.rest, sharding.batch_sharding(run.mesh)))


def evaluate_lengths(run: Run, state, lengths: Optional[Sequence[int]] = None, *,
                     num_examples: Optional[int] = None) -> list[dict]:
  """Per-length accuracy of a trained algorithmic run.

  One row per input length: `problem, scheme, family, positions, seed, length, in_train (length
  within the training range), seq_accuracy, token_accuracy, examples, skipped`; a length whose
  positions a learned table cannot embed gets NaN accuracies and `skipped` set to the reason.
  Examples of length n come from their own generators (seed `(eval.seed, n)`; see
  `posjax.data.algorithmic.Batches`): the same examples whatever other lengths are scored.
  """
  config, objective = run.config, run.objective
  e, d = config.eval, config.data
  lengths = default_lengths(config) if lengths is None else sorted({int(n) for n in lengths})
  num_examples = int(num_examples or e.num_examples)
  num_batches = -(-num_examples // e.batch_size)
  positions = objective.eval_positions
  if positions == "randomized":
    too_long = [n for n in lengths if algorithmic.sequence_length(d.name, n) > d.max_position]
    if too_long:
      raise ValueError(f"randomized evaluation positions cannot cover lengths {too_long[:5]}... "
                       f"(sequences over data.max_position={d.max_position}): raise it")
  limit = table_limit(run.cfg)
  scorer = _make_scorer(run)
  share, shares = sharding.batch_share(run.mesh)  # this process's part of each global batch
  rows = []
  for n in lengths:
    seq_len = algorithmic.sequence_length(d.name, n)
    row = {"problem": d.name, "scheme": scheme_label(config), "family": config.model.family,
           "positions": positions, "seed": config.seed, "length": n,
           "in_train": d.min_train_length <= n <= d.max_train_length}
    highest = d.max_position - 1 if positions == "randomized" else seq_len - 1
    if limit is not None and highest >= limit:
      rows.append({**row, "seq_accuracy": float("nan"), "token_accuracy": float("nan"),
                   "examples": 0, "skipped": f"positions up to {highest} exceed the {run.cfg.pe} "
                                             f"table (max_len={limit})"})
      continue
    batches = objective.batches(lengths=(n, n), batch_size=e.batch_size // shares,
                                seed=(e.seed, n), pad_to=eval_pad_length(seq_len, e.bucket),
                                positions=positions, process_index=share,
                                num_batches=num_batches)
    seq_right = tok_right = tok_total = examples = 0.0
    for host in batches:
      correct, total = jax.device_get(scorer(state.params, state.rest,
                                             run.global_batch(host)))
      seq_right += float(np.sum(correct == total))
      tok_right += float(np.sum(correct))
      tok_total += float(np.sum(total))
      examples += len(total)
    rows.append({**row, "seq_accuracy": seq_right / examples,
                 "token_accuracy": tok_right / tok_total, "examples": int(examples),
                 "skipped": ""})
  return rows


def summarize(rows: Sequence[dict]) -> list[dict]:
  """One row per (problem, scheme): the mean sequence and token accuracy over the training
  lengths and over the longer test lengths (Ruoss et al. report the mean over test lengths
  41..500), as the mean ± std over seeds (`posjax.evaluate.report.over_seeds`)."""
  per_seed = []
  for (problem, scheme, seed), rs in _groups(rows, ("problem", "scheme", "seed")).items():
    def mean(key, inside):
      vals = [r[key] for r in rs if bool(r["in_train"]) == inside and not r.get("skipped")]
      return float(np.mean(vals)) if vals else float("nan")
    test = [r["length"] for r in rs if not r["in_train"]]
    per_seed.append({"problem": problem, "scheme": scheme,
                     "test_lengths": f"{min(test)}-{max(test)}" if test else "",
                     "train_seq_acc": mean("seq_accuracy", True),
                     "test_seq_acc": mean("seq_accuracy", False),
                     "test_token_acc": mean("token_accuracy", False)})
  return report_lib.over_seeds(per_seed, ("problem", "scheme", "test_lengths"),
                               ("train_seq_acc", "test_seq_acc", "test_token_acc"))


def _groups(rows: Sequence[dict], keys: Sequence[str]) -> dict[tuple, list[dict]]:
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault(tuple(r[k] for k in keys), []).append(r)
  return groups


def notes_for(rows: Sequence[dict]) -> list[str]:
  seeds = sorted({r["seed"] for r in rows})
  notes = ["sequence accuracy: all output tokens right (teacher forcing, argmax); token "
           "accuracy: share of output tokens right; `in_train`: inside the training lengths",
           f"seeds {', '.join(map(str, seeds))}: " + ("mean ± sample std over seeds; the plots "
           "shade the range over seeds" if len(seeds) > 1 else "one seed: no spread")]
  skipped = sorted({(r["scheme"], r["skipped"]) for r in rows if r.get("skipped")})
  for scheme, why in skipped:
    lengths = [r["length"] for r in rows if r["scheme"] == scheme and r.get("skipped") == why]
    notes.append(f"{scheme}: lengths {min(lengths)}-{max(lengths)} skipped: {why}")
  return notes


def write_report(rows: Sequence[dict], workdir: str, *, name: str = "algorithmic",
                 title: str = "Algorithmic length generalisation") -> dict[str, str]:
  """`<name>.csv` (every row), `<name>.md` (summary over seeds, then per-length table, with
  notes) and one `accuracy_<problem>.png` per problem (sequence accuracy vs input length, one
  line per scheme: the mean over seeds, shaded from the lowest to the highest seed)."""
  os.makedirs(workdir, exist_ok=True)
  paths = {"csv": report_lib.write_csv(os.path.join(workdir, f"{name}.csv"), rows)}
  summary = [{"problem": r["problem"], "scheme": r["scheme"], "seeds": r["seeds"],
              "train seq acc": report_lib.mean_std(r, "train_seq_acc"),
              f"test seq acc ({r['test_lengths']})": report_lib.mean_std(r, "test_seq_acc"),
              "test token acc": report_lib.mean_std(r, "test_token_acc")}
             for r in summarize(rows)]
  md = os.path.join(workdir, f"{name}.md")
  report_lib.write_markdown(md, rows, title=title, notes=notes_for(rows),
                            intro="Mean accuracy by problem and scheme:\n\n"
                                  + report_lib.markdown_table(summary) + "\n\nBy length:")
  paths["md"] = md
  for problem, of_problem in _groups(rows, ("problem",)).items():
    series = []
    for (scheme,), rs in _groups(of_problem, ("scheme",)).items():
      by_length = _groups(rs, ("length",))
      x = sorted(n for (n,) in by_length)
      accs = [[r["seq_accuracy"] for r in by_length[(n,)]] for n in x]
      series.append(report_lib.Series(
          scheme, x, [float(np.mean(a)) for a in accs], {"marker": "."},
          low=[float(np.min(a)) for a in accs], high=[float(np.max(a)) for a in accs]))
    longest = max((r["length"] for r in of_problem if r["in_train"]), default=0)
    paths[f"png_{problem[0]}"] = report_lib.line_plot(
        os.path.join(workdir, f"accuracy_{problem[0]}.png"), series, xlabel="input length",
        ylabel="sequence accuracy", title=f"{problem[0]}: accuracy vs length",
        vlines=[(longest + 0.5, "longest training length")] if longest else ())
  return paths


def report(run: Run, state) -> str:
  """The final report of an algorithmic run: accuracy at every test length, written under its
  workdir (`algorithmic.csv`, `.md`, `accuracy_<problem>.png`); returns the summary table."""
  rows = evaluate_lengths(run, state)
  if jax.process_index() == 0:
    write_report(rows, run.workdir, title=f"{run.config.data.name}, {scheme_label(run.config)}")
  summary = summarize(rows)[0]
  return (f"{run.config.data.name}, {scheme_label(run.config)} (trained on input lengths "
          f"{run.config.data.min_train_length}..{run.config.data.max_train_length}): sequence "
          f"accuracy {summary['train_seq_acc']:.3f} at the training lengths, "
          f"{summary['test_seq_acc']:.3f} at test lengths {summary['test_lengths']} (token "
          f"accuracy {summary['test_token_acc']:.3f}); per length in "
          f"{os.path.join(run.workdir, 'algorithmic.md')}")
