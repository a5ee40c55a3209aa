"""Context extension of a trained RoPE model: frequency scalings without training, and fine-tuning.

Without training: the run's parameters in a model rebuilt with `pe_options["scaling"]` of each
type (linear/PI, ntk, dynamic, yarn, llama3; `posjax.encodings.rope`), with
`factor = target_len / train_len` and `original_max_len = train_len`. Each is measured at the
training length and at the target length: perplexity over non-overlapping windows (the text of
`extrapolation.py`) and passkey accuracy (`passkey.py`). `none` is the unscaled model. Every
scaling at factor 1 is the unscaled model (dynamic: up to the training length).

With training: `finetune_config` makes the config of a short fine-tune at the target length
(`train.init_from` = the base run, `data.seq_len` = target, a few steps, optionally with a
scaling, as in Chen et al. 2023's PI fine-tune), and `finetune` runs it through `Experiment`
(resuming, or skipping if its checkpoint is done).

  run = extrapolation.load_run(config, workdir)
  rows = evaluate_scalings(run, target_lengths=[512])
  state = finetune(config, workdir, "runs/ft512", 512, steps=200, scaling="linear")
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import ml_collections
import numpy as np

from posjax.evaluate import extrapolation, passkey, report
from posjax.train.config import pe_options as parse_pe_options

SCALINGS = ("linear", "ntk", "dynamic", "yarn", "llama3")


def scaled_pe_options(pe: str, options, scaling: Optional[str], factor: float,
                      original_max_len: int) -> dict:
  """The RoPE options of `options` with `scaling` at `factor` (None: unchanged)."""
  options = dict(parse_pe_options(options))
  if scaling is None:
    return options
  if pe != "rope":
    raise ValueError(f"context-extension scalings are RoPE's: the run uses pe={pe!r}")
  if options.get("scaling"):
    raise ValueError(f"the run already has a RoPE scaling {options['scaling']}; extend an "
                     "unscaled RoPE run")
  if scaling not in SCALINGS:
    raise ValueError(f"unknown scaling {scaling!r}; choose from {SCALINGS}")
  options["scaling"] = {"type": scaling, "factor": float(factor),
                        "original_max_len": int(original_max_len)}
  return options


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
  stream = extrapolation.validation_stream(run.config.data, run.experiment.tokenizer, num)
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
          grid = passkey.passkey_grid(scorer, run.experiment.tokenizer, [length],
                                      passkey_depths, trials=passkey_trials)
          done = [r["accuracy"] for r in grid if r["accuracy"] is not None]
          row["passkey"] = float(np.mean(done)) if done else None
        rows.append(row)
  return rows


def finetune_config(base_config, base_workdir: str, target_len: int, *, steps: int = 100,
                    scaling: Optional[str] = None, learning_rate: Optional[float] = None,
                    warmup_steps: Optional[int] = None,
                    global_batch_size: Optional[int] = None) -> ml_collections.ConfigDict:
  """The config of a short fine-tune of `base_workdir`'s run at `target_len` tokens."""
  config = ml_collections.ConfigDict(base_config.to_dict())
  train_len = int(base_config.data.seq_len)
  options = scaled_pe_options(config.model.pe, config.model.pe_options, scaling,
                              target_len / train_len, train_len)
  config.model.pe_options = json.dumps(options)
  config.mode = "train"
  config.data.seq_len = int(target_len)
  if global_batch_size:
    config.data.global_batch_size = int(global_batch_size)
  config.train.init_from = str(base_workdir)
  config.train.steps = int(steps)
  config.train.warmup_steps = int(warmup_steps if warmup_steps is not None
                                  else min(config.train.warmup_steps, max(1, steps // 10)))
  if learning_rate is not None:
    config.train.learning_rate = float(learning_rate)
  config.train.eval_every = config.train.checkpoint_every = int(steps)
  config.train.log_every = max(1, min(config.train.log_every, steps))
  config.eval.length_multipliers = (1,)
  return config


def finetune(base_config, base_workdir: str, workdir: str, target_len: int, **kwargs):
  """Run (or resume, or skip if done) the fine-tune of `finetune_config(**kwargs)` in `workdir`;
  returns `(config, state)`."""
  from posjax.train import loop
  config = finetune_config(base_config, base_workdir, target_len, **kwargs)
  experiment = loop.Experiment(config, workdir)
  latest = experiment.checkpointer.latest_step()
  if latest is not None and latest >= config.train.steps:
    state, _ = experiment.checkpointer.restore(experiment.trainable.abstract_state)
  else:
    state = experiment.train()
  return config, state


LINESTYLES = ("-", "--", ":", "-.")


def method_series(rows: Sequence[dict]) -> list[report.Series]:
  """Perplexity against length, one line per (method, target): one color per method and one
  line style per target, so that a legend of more than ten lines stays unambiguous (the default
  color cycle repeats after ten)."""
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
      series.append(report.Series(label, [r["length"] for r in mine],
                                  [r["perplexity"] for r in mine], style))
  return series


def write_report(rows: Sequence[dict], out_dir: str, *, title: str = "",
                 notes: Sequence[str] = ()) -> dict[str, str]:
  """`results.csv`, `results.md` and `ppl_by_method.png` (perplexity vs length per method)."""
  os.makedirs(out_dir, exist_ok=True)
  return {
      "csv": report.write_csv(os.path.join(out_dir, "results.csv"), rows),
      "md": report.write_markdown(os.path.join(out_dir, "results.md"), rows,
                                  title=title or "RoPE context extension", notes=notes),
      "png": report.line_plot(os.path.join(out_dir, "ppl_by_method.png"), method_series(rows),
                              xlabel="evaluation length (tokens)", ylabel="perplexity",
                              title=title or "RoPE context extension", log2_x=True, log_y=True),
  }


def finetune_dir(out_dir: str, target_len: int, scaling: Optional[str] = None) -> str:
  """Where the fine-tune of `target_len` with `scaling` lives: `<out_dir>/finetune_<target>`, or
  `finetune_<target>_<scaling>` with a scaling, so fine-tunes that differ only in their scaling
  never share (and silently reuse) one checkpoint."""
  return os.path.join(out_dir, f"finetune_{int(target_len)}" + (f"_{scaling}" if scaling else ""))


def run_context_extension(config, workdir: str, target_multipliers: Sequence[float] = (4,), *,
                          scalings: Sequence[str] = SCALINGS, finetune_steps: int = 0,
                          finetune_scaling: Optional[str] = None, out_dir: Optional[str] = None,
                          state=None, **kwargs) -> tuple[list[dict], dict[str, str]]:
  """The whole study on the run in `workdir`; writes `<workdir>/context_extension/`.

  With `finetune_steps`, each target length also gets a fine-tuned run in
  `finetune_dir(out_dir, target, finetune_scaling)` (method `finetune` or `finetune+<scaling>`).
  """
  out_dir = out_dir or os.path.join(workdir, "context_extension")
  run = extrapolation.load_run(config, workdir, state=state)
  targets = [int(round(run.train_len * m)) for m in target_multipliers]
  rows = evaluate_scalings(run, targets, scalings, **kwargs)
  for target in targets if finetune_steps else ():
    ft_dir = finetune_dir(out_dir, target, finetune_scaling)
    ft_config, ft_state = finetune(config, workdir, ft_dir, target, steps=finetune_steps,
                                   scaling=finetune_scaling)
    ft_run = extrapolation.load_run(ft_config, ft_dir, state=ft_state)
    label = "finetune" + (f"+{finetune_scaling}" if finetune_scaling else "")
    rows += evaluate_scalings(ft_run, [target], (), method_label=label, base_len=run.train_len,
                              **kwargs)
  notes = [f"base run: {workdir} ({run.cfg.pe}, trained at {run.train_len} tokens, step "
           f"{run.step}); scalings use factor = target / {run.train_len}, original_max_len = "
           f"{run.train_len}; perplexity over non-overlapping windows of the validation text",
           "passkey: mean accuracy over depths (teacher-forced argmax of the key digits); empty "
           f"below {passkey.min_length(run.experiment.tokenizer)} tokens (no room for a prompt) "
           "or when not measured"]
  return rows, write_report(rows, out_dir, notes=notes)

