"""Fine-tuning sweep: MLM-pretrain each scheme, then fine-tune it with each method on each task.

  python -m experiments.finetune --workdir=runs/finetune [--schemes=learned,rope,alibi] \
      [--methods=full,freeze_embeddings,freeze_bottom,lora,adapters,bitfit,prompt] \
      [--tasks=cls,ner] [--pretrain=train.steps=800] [--finetune=train.steps=100,...]

For every scheme, `configs/mlm.py:<scheme>` pretrains in `<workdir>/mlm_<scheme>` (skipped when
its checkpoint has reached `train.steps`); then for every task (`cls`: configs/finetune_cls.py,
passage genre; `ner`: configs/finetune_ner.py, character names) and method, a fine-tune in
`<workdir>/<task>_<scheme>_<method>` starts from it (skipped when its `finetune_results.json`
exists). `--pretrain` and `--finetune` override config fields (`key=value`, comma-separated).
Writes `results.csv`, `results.md`, and per task a heatmap of the test score (methods × schemes)
and the test score against passage length, in `<workdir>`.
"""

from __future__ import annotations

import ast
import json
import os
import time

from absl import app, flags

CONFIGS = {"cls": "configs/finetune_cls.py", "ner": "configs/finetune_ner.py"}
SCORE = {"cls": ("macro_f1", "macro-F1"), "ner": ("entity_f1", "entity F1")}


def _overrides(pairs: list[str]) -> dict:
  out = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep:
      raise ValueError(f"override {pair!r} is not key=value")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def pretrain(scheme: str, workdir: str, overrides: dict, *, tiny: bool = False) -> str:
  from posjax.configs import load_config
  from posjax.run.experiment import Run
  from posjax.train import loop
  config = load_config(f"configs/mlm.py:{scheme}{',tiny' if tiny else ''}", **overrides)
  config.mode = "train"
  loop.train(Run(config, workdir))  # a finished run is only restored
  return workdir


def finetune(task: str, scheme: str, method: str, workdir: str, init_from: str,
             overrides: dict, *, tiny: bool = False) -> dict:
  """One fine-tuning run (or its saved results); returns `finetune_results.json` plus timing."""
  path = os.path.join(workdir, "finetune_results.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  from posjax.configs import load_config
  from posjax.evaluate import run_report
  from posjax.run.experiment import Run
  from posjax.train import loop
  config = load_config(f"{CONFIGS[task]}:{scheme},{method}{',tiny' if tiny else ''}",
                       **{"train.init_from": os.path.abspath(init_from), **overrides})
  start = time.perf_counter()
  run = Run(config, workdir)
  state = loop.train(run)
  train_seconds = time.perf_counter() - start
  run_report.report(run, state)
  with open(path) as f:
    summary = json.load(f)
  summary.update(train_seconds=train_seconds, steps_run=int(state.step))
  with open(path, "w") as f:
    json.dump(summary, f, indent=1)
  return summary


def result_row(task: str, scheme: str, method: str, summary: dict) -> dict:
  """One table row: sizes, time, and the score (and accuracy) on each evaluation."""
  key, _ = SCORE[task]
  row = {"task": task, "scheme": scheme, "method": method,
         "trained params": summary["trainable_params"],
         "trained %": round(100 * summary["trainable_params"] / summary["total_params"], 2),
         "steps": summary.get("steps_run", summary["step"]), "best step": summary["step"],
         "seconds": int(round(summary.get("train_seconds", 0)))}
  for r in summary["results"]:
    name = "val" if r["split"] == "validation" else f"test {r['multiplier']:g}x"
    row[f"{name} {key}"] = r["entity"]["f1"] if key == "entity_f1" else r[key]
    row[f"{name} acc"] = r["accuracy"]
  return row


def write_reports(rows: list[dict], workdir: str) -> str:
  """`results.csv`, `results.md` (a table per task) and the plots; returns the Markdown path."""
  from posjax.evaluate import report
  report.write_csv(os.path.join(workdir, "results.csv"), rows)
  sections = ["# Fine-tuning: method × positional scheme\n"]
  for task in list(dict.fromkeys(r["task"] for r in rows)):
    key, label = SCORE[task]
    task_rows = [{k: v for k, v in r.items() if k != "task"} for r in rows if r["task"] == task]
    sections.append(f"## {task}: {label} (and accuracy)\n\n{report.markdown_table(task_rows)}\n")
    methods = list(dict.fromkeys(r["method"] for r in task_rows))
    schemes = list(dict.fromkeys(r["scheme"] for r in task_rows))
    grid = [[next((r[f"test 1x {key}"] for r in task_rows
                   if r["method"] == m and r["scheme"] == s), float("nan")) for s in schemes]
            for m in methods]
    report.heatmap(os.path.join(workdir, f"{task}_scores.png"), grid, rows=methods,
                   columns=schemes, title=f"{task}: test {label} at the training length")
    lengths = sorted({float(k.split()[1][:-1]) for k in task_rows[0]
                      if k.startswith("test ") and k.endswith(key)})
    series = [report.Series(f"{r['scheme']} {r['method']}", lengths,
                            [r.get(f"test {m:g}x {key}") for m in lengths],
                            {"linestyle": "-" if r["method"] == "full" else "--"})
              for r in task_rows if r["method"] in ("full", "lora")]
    report.line_plot(os.path.join(workdir, f"{task}_by_length.png"), series,
                     xlabel="longest test passage (× training length)", ylabel=f"test {label}",
                     title=f"{task}: passages longer than in training", log2_x=True)
  path = os.path.join(workdir, "results.md")
  with open(path, "w") as f:
    f.write("\n".join(sections))
  return path


def sweep(workdir: str, schemes, methods, tasks, *, pretrain_overrides=(),
          finetune_overrides=(), tiny: bool = False) -> str:
  """Every scheme × task × method (see the module docstring); returns the results.md path."""
  from posjax.nn.peft import METHODS
  bad = [m for m in methods if m not in METHODS] + [t for t in tasks if t not in CONFIGS]
  if bad:
    raise ValueError(f"unknown methods/tasks {bad}: methods {METHODS}, tasks {list(CONFIGS)}")
  pre, fine = _overrides(pretrain_overrides), _overrides(finetune_overrides)
  rows, path = [], None
  for scheme in schemes:
    mlm = pretrain(scheme, os.path.join(workdir, f"mlm_{scheme}"), pre, tiny=tiny)
    for task in tasks:
      for method in methods:
        run = os.path.join(workdir, f"{task}_{scheme}_{method}")
        rows.append(result_row(task, scheme, method,
                               finetune(task, scheme, method, run, mlm, fine, tiny=tiny)))
        path = write_reports(rows, workdir)
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  path = sweep(_WORKDIR.value, _SCHEMES.value, _METHODS.value, _TASKS.value,
               pretrain_overrides=_PRETRAIN.value, finetune_overrides=_FINETUNE.value,
               tiny=_TINY.value)
  print(open(path).read(), flush=True)


if __name__ == "__main__":
  _WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory.")
  _SCHEMES = flags.DEFINE_list("schemes", "learned,rope,alibi", "Positional schemes.")
  _METHODS = flags.DEFINE_list(
      "methods", "full,freeze_embeddings,freeze_bottom,lora,adapters,bitfit,prompt",
      "Fine-tuning methods (posjax.nn.peft.METHODS).")
  _TASKS = flags.DEFINE_list("tasks", "cls,ner", "cls (genre) and/or ner (character names).")
  _PRETRAIN = flags.DEFINE_list("pretrain", [], "key=value overrides of the MLM config.")
  _FINETUNE = flags.DEFINE_list("finetune", [], "key=value overrides of the fine-tuning configs.")
  _TINY = flags.DEFINE_bool("tiny", False, "The configs' tiny variants (seconds; a smoke test).")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
