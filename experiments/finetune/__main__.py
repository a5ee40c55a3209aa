"""Fine-tuning sweep: MLM-pretrain each scheme, then fine-tune it with each method on each task.

  python -m experiments.finetune --workdir=runs/finetune [--schemes=learned,rope,alibi] \
      [--methods=full,freeze_embeddings,freeze_bottom,lora,adapters,bitfit,prompt] \
      [--tasks=cls,ner] [--seeds=0,1,2] [--pretrain.train.steps=800] \
      [--finetune.train.steps=100 --finetune.data.global_batch_size=16 ...] \
      [--finetune_ner.train.steps=400 ...] \
      [--lr_scales=0.3,1,3 --lr_sweep_seeds=0] [--pretrain_seed=0]

For every scheme and seed, `configs/mlm.py:<scheme>` pretrains in `<workdir>/mlm_<scheme>/seed_<s>`
(resumed, or only restored when its checkpoint has reached `train.steps`); then for every task
(`cls`: configs/finetune_cls.py, passage genre; `ner`: configs/finetune_ner.py, character names)
and method, a fine-tune in `<workdir>/<task>_<scheme>_<method>/seed_<s>` starts from it (skipped
when its `finetune_results.json` exists). The seed is the model's and the data's, in both stages;
`--pretrain_seed=S` has every seed fine-tune the one encoder pretrained with seed S (the spread is
then the fine-tuning's alone).

Learning rates: each method fine-tunes at its config's rate (configs/finetune_cls.py
`LEARNING_RATES`) times each of `--lr_scales`, in `<task>_<scheme>_<method>_lrscale<x>/seed_<s>`
(scale 1 keeps the plain name). With `--lr_sweep_seeds`, only those seeds run every scale; the
other seeds run at the scale whose mean validation score over the sweep seeds is best. The tables
show each method at that scale (the same choice: validation only, never test) and a sweep table
of the validation score at every scale.
`--pretrain.<field>=value` overrides a field of every pretraining config, `--finetune.<field>=value`
of every fine-tuning config, `--finetune_cls.<field>=value` (or `finetune_ner`) of one task's,
after `--finetune` (so the tasks can have their own budgets in one sweep and one report).
These are ml-collections flags, as `posjax.main --config.<field>`; the flags' config files are
only the field lists: each run loads its own. Writes `results.csv` (a row per
run), `baselines.csv` (majority class, naive Bayes or a gazetteer on the same passages:
`posjax.evaluate.baselines`), `results.md` (per task, the baselines, then each score as the
mean ± std over seeds), and per task a heatmap of
the mean test score (methods × schemes) and `<task>_by_length.png`: every method and scheme's test
score against passage length (± std band) beside the baselines', in `<workdir>`.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags
import numpy as np

from posjax import configs
from posjax.run import distributed

CONFIGS = {"cls": "configs/finetune_cls.py", "ner": "configs/finetune_ner.py"}
SCORE = {"cls": ("macro_f1", "macro-F1"), "ner": ("entity_f1", "entity F1")}


def _seeded(config, seed: int):
  config.seed = config.data.seed = int(seed)
  return config


def pretrain(scheme: str, workdir: str, overrides: dict, *, seed: int = 0,
             tiny: bool = False) -> str:
  from posjax.run.experiment import Run
  from posjax.train import loop
  config = _seeded(configs.load_config(f"configs/mlm.py:{scheme}{',tiny' if tiny else ''}",
                                       **overrides), seed)
  config.mode = "train"
  loop.train(Run(config, workdir))  # a finished run is only restored
  return workdir


def finetune(task: str, scheme: str, method: str, workdir: str, init_from: str,
             overrides: dict, *, seed: int = 0, lr_scale: float = 1.0, tiny: bool = False) -> dict:
  """One fine-tuning run (or its saved results) at `lr_scale` × the config's learning rate;
  returns `finetune_results.json` plus timing and the learning rate."""
  path = os.path.join(workdir, "finetune_results.json")
  if os.path.exists(path):
    with open(path) as f:
      summary = json.load(f)
    if "learning_rate" not in summary:  # run before the sweep existed: at scale 1, by run_dir
      with open(os.path.join(workdir, "config.json")) as f:
        summary.update(learning_rate=json.load(f)["train"]["learning_rate"], lr_scale=1.0)
    return summary
  from posjax.evaluate import run_report
  from posjax.run.experiment import Run
  from posjax.train import loop
  config = _seeded(configs.load_config(
      f"{CONFIGS[task]}:{scheme},{method}{',tiny' if tiny else ''}",
      **{"train.init_from": os.path.abspath(init_from), **overrides}), seed)
  config.train.learning_rate *= lr_scale
  start = time.perf_counter()
  run = Run(config, workdir)
  state = loop.train(run)
  train_seconds = time.perf_counter() - start
  run_report.report(run, state)
  with open(path) as f:
    summary = json.load(f)
  summary.update(train_seconds=train_seconds, steps_run=int(state.step),
                 learning_rate=float(config.train.learning_rate), lr_scale=float(lr_scale))
  with open(path, "w") as f:
    json.dump(summary, f, indent=1)
  return summary


def _evaluation_name(r: dict) -> str:
  """A column prefix for an evaluation: `val`, or `test 2x` for test passages up to 2 × L."""
  return "val" if r["split"] == "validation" else f"test {r['multiplier']:g}x"


def result_row(task: str, scheme: str, method: str, seed: int, summary: dict) -> dict:
  """One run's row: sizes, learning rate, time, and the score (and accuracy) on each evaluation."""
  key, _ = SCORE[task]
  row = {"task": task, "scheme": scheme, "method": method, "seed": seed,
         "lr scale": summary["lr_scale"], "learning rate": summary["learning_rate"],
         "trained params": summary["trainable_params"],
         "trained %": round(100 * summary["trainable_params"] / summary["total_params"], 2),
         "steps": summary.get("steps_run", summary["step"]), "best step": summary["step"],
         "seconds": int(round(summary.get("train_seconds", 0)))}
  for r in summary["results"]:
    name = _evaluation_name(r)
    row[f"{name} {key}"] = r["entity"]["f1"] if key == "entity_f1" else r[key]
    row[f"{name} acc"] = r["accuracy"]
    if name == "val":
      row["val loss"] = r["loss"]
  return row


SIZES = ("trained params", "trained %")
PER_RUN = ("steps", "best step", "seconds")
RUN_GROUP = ("scheme", "method") + SIZES + ("lr scale", "learning rate")


def run_dir(workdir: str, task: str, scheme: str, method: str, seed: int,
            lr_scale: float = 1.0) -> str:
  suffix = "" if lr_scale == 1 else f"_lrscale{lr_scale:g}"
  return os.path.join(workdir, f"{task}_{scheme}_{method}{suffix}", f"seed_{seed}")


def best_lr_scale(rows: list[dict], task: str, scheme: str, method: str) -> float:
  """The learning-rate scale with the best mean validation score, over the seeds that every
  scale of this task, scheme and method has run (so a scale is not favoured for having run more
  seeds); on a tie (e.g. an entity F1 of 0 at every scale), the lower mean validation loss."""
  key, _ = SCORE[task]
  runs = [r for r in rows if (r["task"], r["scheme"], r["method"]) == (task, scheme, method)]
  scales = list(dict.fromkeys(r["lr scale"] for r in runs))
  shared = set.intersection(*({r["seed"] for r in runs if r["lr scale"] == x} for x in scales))
  def mean_val(x):
    chosen = [r for r in runs if r["lr scale"] == x and r["seed"] in shared]
    return (np.mean([r[f"val {key}"] for r in chosen]), -np.mean([r["val loss"] for r in chosen]))
  return max(scales, key=mean_val)


def baseline_rows(task: str, overrides: dict, *, tiny: bool = False) -> list[dict]:
  """The non-neural baselines (`posjax.evaluate.baselines`) on the passages `task`'s fine-tunes
  are scored on (the same config and overrides)."""
  from posjax.evaluate import baselines
  config = configs.load_config(f"{CONFIGS[task]}:{'tiny' if tiny else ''}", **overrides)
  return [{"task": task, **r} for r in baselines.for_config(config)]


def _baseline_table(rows: list[dict], key: str) -> list[dict]:
  """A row per baseline: its score (and accuracy or precision/recall) on each evaluation."""
  table = {}
  for r in rows:
    name = _evaluation_name(r)
    out = table.setdefault(r["baseline"], {"baseline": r["baseline"]})
    out[f"{name} {key}"] = r[key]
    for extra, short in (("accuracy", "acc"), ("precision", "P"), ("recall", "R")):
      if extra in r:
        out[f"{name} {short}"] = r[extra]
  return list(table.values())


def _rate_cells(r: dict) -> dict:
  """The learning rate and its scale as written (a table's 4 decimals would round 9e-5 away)."""
  return {"lr scale": f"{r['lr scale']:g}", "learning rate": f"{r['learning rate']:.3g}"}


SCHEME_LINESTYLES = ("-", "--", "-.", (0, (3, 1, 1, 1, 1, 1)))
BASELINE_GREYS = ("0.0", "0.45", "0.7")


def by_length_series(summary: list[dict], baselines: list[dict], key: str) -> list:
  """The lines of `<task>_by_length.png`: every scheme × method of `summary` (its rows at their
  chosen rate, from `report.over_seeds`) by test length with a ± std band, a color per method
  and a line style per scheme; then each baseline's test score, grey and dotted."""
  from posjax.evaluate import report
  from posjax.nn.peft import METHODS
  columns = [k for k in summary[0] if k.startswith("test ") and k.endswith(f"x {key}")]
  lengths = sorted(float(k.split()[1][:-1]) for k in columns)
  schemes = list(dict.fromkeys(r["scheme"] for r in summary))
  series = []
  for r in summary:
    cells = [f"test {m:g}x {key}" for m in lengths]
    mean = np.asarray([r[c] for c in cells], np.float64)
    std = np.asarray([r[f"{c}_std"] for c in cells], np.float64)
    style = {"color": f"C{METHODS.index(r['method']) % 10}",
             "linestyle": SCHEME_LINESTYLES[schemes.index(r["scheme"]) % len(SCHEME_LINESTYLES)]}
    series.append(report.Series(f"{r['scheme']} {r['method']}", lengths, mean, style,
                                low=mean - std, high=mean + std))
  names = list(dict.fromkeys(b["baseline"] for b in baselines))
  for i, name in enumerate(names):
    test = sorted((b["multiplier"], b[key]) for b in baselines
                  if b["baseline"] == name and b["split"] == "test")
    series.append(report.Series(
        name, [m for m, _ in test], [v for _, v in test],
        {"color": BASELINE_GREYS[i % len(BASELINE_GREYS)], "linestyle": ":", "marker": "x"}))
  return series


def write_reports(rows: list[dict], workdir: str, baselines: list[dict] = ()) -> str:
  """`results.csv` (a row per run), `results.md` (per task, the baselines, then a table of
  sizes and each score as the mean ± std over seeds) and the plots; returns the Markdown path."""
  from posjax.evaluate import report
  report.write_csv(os.path.join(workdir, "results.csv"), rows)
  if baselines:
    report.write_csv(os.path.join(workdir, "baselines.csv"), list(baselines))
  seeds = sorted({r["seed"] for r in rows})
  sections = ["# Fine-tuning: method × positional scheme\n",
              f"Seeds {', '.join(map(str, seeds))}"
              + (": mean ± sample std over seeds.\n" if len(seeds) > 1 else ".\n")]
  for task in list(dict.fromkeys(r["task"] for r in rows)):
    key, label = SCORE[task]
    task_rows = [r for r in rows if r["task"] == task]
    scores = [k for k in task_rows[0] if k.endswith(f" {key}") or k.endswith(" acc")]
    every_scale = report.over_seeds(task_rows, RUN_GROUP, PER_RUN + tuple(scores) + ("val loss",))
    chosen = {(s, m): best_lr_scale(task_rows, task, s, m) for s, m in
              dict.fromkeys((r["scheme"], r["method"]) for r in task_rows)}
    summary = [r for r in every_scale if chosen[r["scheme"], r["method"]] == r["lr scale"]]
    table = [{**{k: r[k] for k in RUN_GROUP}, **_rate_cells(r), "seeds": r["seeds"],
              **{k: int(round(r[k])) for k in PER_RUN},
              **{k: report.mean_std(r, k) for k in scores}} for r in summary]
    swept = len(summary) < len(every_scale)
    sections.append(f"## {task}: {label} (and accuracy)\n")
    task_baselines = [r for r in baselines if r["task"] == task]
    if task_baselines:
      sections.append("Non-neural baselines on the same passages (posjax.evaluate.baselines):\n\n"
                      f"{report.markdown_table(_baseline_table(task_baselines, key))}\n")
    if swept:
      sections.append("Each method at the learning-rate scale with the best mean validation "
                      "score over the seeds that ran every scale (ties: the lower validation loss; "
                      "best_lr_scale); the sweep is "
                      "below.\n")
    sections.append(f"{report.markdown_table(table)}\n")
    if swept:
      sweep_table = [{"scheme": r["scheme"], "method": r["method"], **_rate_cells(r),
                      "seeds": r["seeds"], f"val {key}": report.mean_std(r, f"val {key}"),
                      "val loss": report.mean_std(r, "val loss"),
                      "chosen": "yes" if chosen[r["scheme"], r["method"]] == r["lr scale"] else ""}
                     for r in every_scale]
      sections.append(f"### {task}: validation {label} at each learning rate\n\n"
                      f"{report.markdown_table(sweep_table)}\n")
    methods = list(dict.fromkeys(r["method"] for r in summary))
    schemes = list(dict.fromkeys(r["scheme"] for r in summary))
    grid = [[next((r[f"test 1x {key}"] for r in summary
                   if r["method"] == m and r["scheme"] == s), float("nan")) for s in schemes]
            for m in methods]
    report.heatmap(os.path.join(workdir, f"{task}_scores.png"), grid, rows=methods,
                   columns=schemes, title=f"{task}: test {label} at the training length")
    series = by_length_series(summary, task_baselines, key)
    report.line_plot(os.path.join(workdir, f"{task}_by_length.png"), series,
                     xlabel="longest test passage (× training length)", ylabel=f"test {label}",
                     title=f"{task}: passages longer than in training (± std over seeds)",
                     log2_x=True)
  path = os.path.join(workdir, "results.md")
  with open(path, "w") as f:
    f.write("\n".join(sections))
  return path


def sweep(workdir: str, schemes, methods, tasks, *, seeds=(0,), pretrain_overrides=None,
          finetune_overrides=None, task_overrides=None, lr_scales=(1.0,), lr_sweep_seeds=(),
          pretrain_seed=None, tiny: bool = False) -> str:
  """Every scheme × seed × task × method × learning-rate scale (see the module docstring);
  `*_overrides` are `{"dotted.field": value}`, `task_overrides` `{task: {...}}` applied over
  `finetune_overrides` for that task; returns the results.md path."""
  from posjax.nn.peft import METHODS
  task_overrides = {t: {**(finetune_overrides or {}), **(task_overrides or {}).get(t, {})}
                    for t in set(tasks) | set(task_overrides or {})}
  bad = [m for m in methods if m not in METHODS] + [t for t in task_overrides if t not in CONFIGS]
  if bad:
    raise ValueError(f"unknown methods/tasks {bad}: methods {METHODS}, tasks {list(CONFIGS)}")
  if not lr_scales or min(lr_scales) <= 0 or len(set(lr_scales)) < len(lr_scales):
    raise ValueError(f"lr_scales {list(lr_scales)}: give distinct positive multiples")
  if set(lr_sweep_seeds) - set(seeds):
    raise ValueError(f"lr_sweep_seeds {list(lr_sweep_seeds)} are not all among seeds {list(seeds)}")
  baselines = [row for task in tasks
               for row in baseline_rows(task, dict(task_overrides[task]), tiny=tiny)]
  sweep_seeds = [s for s in seeds if s in lr_sweep_seeds] if lr_sweep_seeds else list(seeds)
  rows, path = [], None
  for scheme in schemes:
    for seed in sweep_seeds + [s for s in seeds if s not in sweep_seeds]:
      mlm_seed = seed if pretrain_seed is None else pretrain_seed
      mlm = pretrain(scheme, os.path.join(workdir, f"mlm_{scheme}", f"seed_{mlm_seed}"),
                     dict(pretrain_overrides or {}), seed=mlm_seed, tiny=tiny)
      for task in tasks:
        for method in methods:
          scales = (lr_scales if seed in sweep_seeds
                    else [best_lr_scale(rows, task, scheme, method)])
          for scale in scales:
            summary = finetune(task, scheme, method,
                               run_dir(workdir, task, scheme, method, seed, scale), mlm,
                               dict(task_overrides[task]), seed=seed, lr_scale=scale,
                               tiny=tiny)
            rows.append(result_row(task, scheme, method, seed, summary))
            path = write_reports(rows, workdir, baselines)
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.single_process("experiments.finetune")  # before JAX is used
  f = flags.FLAGS
  path = sweep(f.workdir, f.schemes, f.methods, f.tasks, seeds=[int(s) for s in f.seeds],
               pretrain_overrides=config_flags.get_override_values(f["pretrain"]),
               finetune_overrides=config_flags.get_override_values(f["finetune"]),
               task_overrides={t: config_flags.get_override_values(f[f"finetune_{t}"])
                               for t in CONFIGS},
               lr_scales=[float(x) for x in f.lr_scales],
               lr_sweep_seeds=[int(s) for s in f.lr_sweep_seeds], pretrain_seed=f.pretrain_seed,
               tiny=f.tiny)
  print(open(path).read(), flush=True)


def define_flags() -> None:
  """The command line (defined only when run as a program, so importing defines no flags)."""
  flags.DEFINE_string("workdir", None, "Sweep directory.")
  flags.DEFINE_list("schemes", "learned,rope,alibi", "Positional schemes.")
  flags.DEFINE_list("methods", "full,freeze_embeddings,freeze_bottom,lora,adapters,bitfit,prompt",
                    "Fine-tuning methods (posjax.nn.peft.METHODS).")
  flags.DEFINE_list("tasks", "cls,ner", "cls (genre) and/or ner (character names).")
  flags.DEFINE_list("seeds", "0", "Seeds (each the model's and the data's, in both stages).")
  flags.DEFINE_list("lr_scales", "1", "Multiples of each method's configured learning rate.")
  flags.DEFINE_list("lr_sweep_seeds", "", "Seeds that run every lr scale (empty: all); the "
                    "others run at the scale best on these seeds' validation score.")
  flags.DEFINE_integer("pretrain_seed", None, "Fine-tune every seed from the encoder pretrained "
                       "with this seed (default: each seed its own).")
  flags.DEFINE_bool("tiny", False, "The configs' tiny variants (seconds; a smoke test).")
  config_flags.DEFINE_config_file(
      "pretrain", configs.find_config_file("configs/mlm.py"),
      "The pretraining config's fields: --pretrain.<field>=value overrides it in every run.",
      lock_config=True)
  config_flags.DEFINE_config_file(
      "finetune", configs.find_config_file("configs/finetune_cls.py"),
      "The fine-tuning configs' fields: --finetune.<field>=value overrides it in every run.",
      lock_config=True)
  for task, path in CONFIGS.items():
    config_flags.DEFINE_config_file(
        f"finetune_{task}", configs.find_config_file(path),
        f"The {task} fine-tunes' fields: --finetune_{task}.<field>=value overrides it (after "
        "--finetune).", lock_config=True)
  flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
  define_flags()
  app.run(main, argv=configs.with_config_found(sys.argv))
