"""Context extension of a trained RoPE model: frequency scalings without training, and fine-tuning.

Without training: the run's parameters in a model rebuilt with `pe_options["scaling"]` of each
type (linear/PI, ntk, dynamic, yarn, llama3; `posjax.encodings.rope`), with
`factor = target_len / train_len` and `original_max_len = train_len`. Each is measured at the
training length and at the target length: perplexity over non-overlapping windows (the text of
`extrapolation.py`) and passkey accuracy (`passkey.py`). `none` is the unscaled model. Every
scaling at factor 1 is the unscaled model (dynamic: up to the training length).

With training: `posjax.train.context_extension` fine-tunes the run at the target length; the
studies (`experiments/context_extension`) evaluate those runs here like any other.

  run = extrapolation.load_run(workdir)
  rows = evaluate_scalings(run, target_lengths=[512])
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from posjax.evaluate import extrapolation, passkey, report
from posjax.run.config import SCALINGS, scaled_pe_options

def evaluate_scalings(run: extrapolation.RunModel, target_lengths: Sequence[int],
                      scalings: Sequence[str] = SCALINGS, *, include_base: bool = True,
                      num_tokens: int = 16384, passkey_trials: int = 3,
                      passkey_depths: Sequence[float] = (0.0, 0.5, 1.0),
                      method_label: Optional[str] = None,
                      base_len: Optional[int] = None) -> list[dict]:
  """Rows `(method, target_len, factor, length, loss, perplexity, token_accuracy, tokens,
  passkey)` for each
  target length and method, measured at the training length and the target length.

  `passkey_trials=0` skips passkey. `method_label` names the run's own model (default `none`).
  `base_len` (default: the run's training length) is the short length measured besides each
  target, and the denominator of the recorded `factor` (a fine-tuned run passes its base's).
  """
  if run.cfg.pe != "rope" and scalings:
    raise ValueError(f"context-extension scalings are RoPE's: the run uses pe={run.cfg.pe!r}")
  train_len = run.train_len
  base_len = int(base_len or train_len)
  lengths = sorted({base_len, *[int(t) for t in target_lengths]})
  num = extrapolation.text_length(lengths, num_tokens)
  stream = extrapolation.validation_stream(run.config.data, run.tokenizer, num)
  methods = ([None] if include_base else []) + list(scalings)
  rows = []
  for target in target_lengths:
    factor = target / train_len
    for method in methods:
      options = scaled_pe_options(run.cfg.pe, run.cfg.pe_options, method, factor, train_len)
      scorer = extrapolation.make_scorer(run, pe_options=options)
      for length in sorted({base_len, int(target)}):
        windows = extrapolation.evaluate_windows(scorer, stream, length, num_buckets=1)
        row = {"method": method or method_label or "none", "target_len": int(target),
               "factor": target / base_len if method or method_label else 1.0,
               "length": length, "loss": windows.loss, "perplexity": windows.perplexity,
               "token_accuracy": windows.accuracy, "tokens": windows.tokens, "passkey": None}
        if passkey_trials:
          grid = passkey.passkey_grid(scorer, run.tokenizer, [length],
                                      passkey_depths, trials=passkey_trials)
          done = [r["accuracy"] for r in grid if r["accuracy"] is not None]
          row["passkey"] = float(np.mean(done)) if done else None
        rows.append(row)
  return rows


LINESTYLES = ("-", "--", ":", "-.")


def method_series(rows: Sequence[dict]) -> list[report.Series]:
  """Perplexity against length, one line per (method, target): one color per method and one
  line style per target, so that a legend of more than ten lines stays unambiguous (the default
  color cycle repeats after ten). Rows of `report.over_seeds` (with `perplexity_std`) get a
  band of ± one standard deviation."""
  methods = list(dict.fromkeys(r["method"] for r in rows))
  targets = sorted({r["target_len"] for r in rows})
  series = []
  for method in methods:
    for target in sorted({r["target_len"] for r in rows if r["method"] == method}):
      mine = sorted((r for r in rows if r["method"] == method and r["target_len"] == target),
                    key=lambda r: r["length"])
      label = method if len(targets) == 1 else f"{method} ({target})"
      style = {"color": f"C{methods.index(method) % 10}",
               "linestyle": LINESTYLES[targets.index(target) % len(LINESTYLES)]}
      if len(methods) > 10:  # colors repeat: the marker tells the two apart
        style["marker"] = "os^v"[methods.index(method) // 10 % 4]
      ppl = [r["perplexity"] for r in mine]
      band = {}
      if all("perplexity_std" in r for r in mine):
        std = [r["perplexity_std"] for r in mine]
        band = {"low": [p - d for p, d in zip(ppl, std)], "high": [p + d for p, d in zip(ppl, std)]}
      series.append(report.Series(label, [r["length"] for r in mine], ppl, style, **band))
  return series


GROUP = ("method", "target_len", "factor", "length")
MEASURES = ("perplexity", "loss", "token_accuracy", "passkey")


def over_seeds(rows: Sequence[dict]) -> list[dict]:
  """`evaluate_scalings` rows of several seeds (each with a `seed`), one row per (method, target,
  length): each measure's mean, `<measure>_std` and `seeds` (`report.over_seeds`)."""
  return report.over_seeds(rows, GROUP, MEASURES)


def _blank_if_missing(cell: str) -> str:
  return "" if cell == "n/a" else cell  # as a single run's table: passkey not measured


def write_report(rows: Sequence[dict], out_dir: str, *, title: str = "",
                 notes: Sequence[str] = ()) -> dict[str, str]:
  """`results.csv` (every row), `results.md` and `ppl_by_method.png` (perplexity vs length per
  method). Rows of more than one `seed` are shown as the mean ± sample std over seeds, and the
  plot shades ± one std."""
  os.makedirs(out_dir, exist_ok=True)
  table, lines = rows, rows
  if len({r.get("seed") for r in rows}) > 1:
    lines = over_seeds(rows)
    table = [{**{k: r[k] for k in GROUP}, "seeds": r["seeds"],
              **{m: _blank_if_missing(report.mean_std(r, m, 3 if m == "perplexity" else 4))
                 for m in MEASURES}}
             for r in lines]
    notes = [f"seeds {', '.join(str(s) for s in sorted({r['seed'] for r in rows}))}: "
             "mean ± sample std over seeds (every run in results.csv)", *notes]
  return {
      "csv": report.write_csv(os.path.join(out_dir, "results.csv"), rows),
      "md": report.write_markdown(os.path.join(out_dir, "results.md"), table,
                                  title=title or "RoPE context extension", notes=notes),
      "png": report.line_plot(os.path.join(out_dir, "ppl_by_method.png"), method_series(lines),
                              xlabel="evaluation length (tokens)", ylabel="perplexity",
                              title=title or "RoPE context extension", log2_x=True, log_y=True),
  }


def finetune_dir(out_dir: str, target_len: int, scaling: Optional[str] = None) -> str:
  """Where the fine-tune of `target_len` with `scaling` lives: `<out_dir>/finetune_<target>`, or
  `finetune_<target>_<scaling>` with a scaling, so fine-tunes that differ only in their scaling
  never share (and silently reuse) one checkpoint."""
  return os.path.join(out_dir, f"finetune_{int(target_len)}" + (f"_{scaling}" if scaling else ""))
