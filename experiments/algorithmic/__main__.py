"""Algorithmic length generalisation across tasks and positional schemes.

Trains one model per (task, scheme) on input lengths 1..40 and scores every test length up to
500 (Ruoss et al. 2023, "Randomized Positional Encodings Boost Length Generalization of
Transformers"; Kazemnejad et al. 2023, "The Impact of Positional Encoding on Length Generalization
in Transformers"), then writes one comparison under the workdir:

  python -m experiments.tasks --tasks=reverse,parity --schemes=nope,rope,alibi \
      --workdir=runs/tasks [--steps=2000] [--family=encoder] [--randomized] [--tiny]

  <workdir>/tasks.csv, tasks.md     every (task, scheme, length) row and a summary table
  <workdir>/accuracy_<task>.png     sequence accuracy vs input length, one line per scheme
  <workdir>/<task>/<scheme>/        each run's own table, plot and training loss

A scheme written `rope+rand` trains that scheme with randomized positions; `--randomized` does so
for every scheme. `--set=eval.max_length=200 --set=train.learning_rate=3e-4` override config fields.
"""

from __future__ import annotations

import ast
import os
import pathlib
from typing import Callable, Optional, Sequence

from absl import app, flags

from posjax.configs import load_config, set_field
from posjax.evaluate import tasks as task_eval

ROOT = pathlib.Path(__file__).resolve().parents[2]


def override(config, assignment: str) -> None:
  """`--set key=value`: the value is read as a Python literal when it is one."""
  key, _, text = assignment.partition("=")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  set_field(config, key, value)


def run_config(task: str, scheme: str, *, family: str, randomized: bool, tiny: bool,
               steps=None, overrides=()):
  name, _, suffix = scheme.partition("+")
  if suffix not in ("", "rand"):
    raise ValueError(f"scheme {scheme!r}: write a scheme name, or name+rand")
  words = [task, name, family] + (["randomized"] if randomized or suffix else [])
  config = load_config(f"{ROOT}/configs/tasks.py:" + ",".join(words + (["tiny"] if tiny else [])))
  if steps is not None:
    config.train.steps = steps
    config.train.warmup_steps = min(config.train.warmup_steps, max(steps // 10, 1))
  for assignment in overrides:
    override(config, assignment)
  return config


def sweep(tasks: Sequence[str], schemes: Sequence[str], workdir: str, *,
          family: str = "decoder", randomized: bool = False, tiny: bool = False,
          steps: Optional[int] = None, overrides: Sequence[str] = (),
          log: Optional[Callable[[str], None]] = print) -> list[dict]:
  """Train and evaluate every (task, scheme); write the comparison under `workdir`; the rows."""
  rows = []
  for task in tasks:
    for scheme in schemes:
      config = run_config(task, scheme, family=family, randomized=randomized, tiny=tiny,
                          steps=steps, overrides=overrides)
      label = task_eval.scheme_label(config).replace(" (encoder)", "_encoder")
      rows += task_eval.run_task(config, os.path.join(workdir, task, label), log=log)
      # Rewritten after every run, so a long sweep has a report as it goes.
      paths = task_eval.write_task_report(rows, workdir)
  if log is not None:
    for summary in task_eval.summarize(rows):
      log(str(summary))
    log("\n".join(f"wrote {p}" for p in paths.values()))
  return rows


def main(argv):
  del argv
  f = flags.FLAGS
  sweep(f.tasks, f.schemes, f.workdir, family=f.family, randomized=f.randomized, tiny=f.tiny,
        steps=f.steps, overrides=f.set)


def define_flags() -> None:
  """The command line (defined only when run as a program, so importing defines no flags)."""
  flags.DEFINE_list("tasks", ["reverse", "parity"], "tasks (posjax.data.tasks.TASKS)")
  flags.DEFINE_list("schemes", ["nope", "rope", "alibi"],
                    "positional schemes; `name+rand` for randomized positions")
  flags.DEFINE_string("workdir", "runs/tasks", "where the reports go")
  flags.DEFINE_integer("steps", None, "training steps (default: the config's)")
  flags.DEFINE_enum("family", "decoder", ["decoder", "encoder"], "model family")
  flags.DEFINE_boolean("randomized", False, "randomized positions for every scheme")
  flags.DEFINE_boolean("tiny", False, "the tiny config (a smoke test)")
  flags.DEFINE_multi_string("set", [], "a config override, dotted.key=value (a Python literal); "
                            "repeat the flag for several")


if __name__ == "__main__":
  define_flags()
  app.run(main)
