"""Algorithmic length generalisation across problems, positional schemes and seeds.

Trains one run per (problem, scheme, seed) on input lengths 1..40 and scores every test length
up to 500 (Ruoss et al. 2023, "Randomized Positional Encodings Boost Length Generalization of
Transformers"; Kazemnejad et al. 2023, "The Impact of Positional Encoding on Length Generalization
in Transformers"), then writes one comparison under the workdir:

  python -m experiments.algorithmic --problems=reverse,parity --schemes=nope,rope,alibi,rope+rand \
      --seeds=0,1,2 --workdir=runs/algorithmic [--config=configs/algorithmic.py:mlm,tiny] \
      [--config.train.steps=2000 --config.eval.max_length=200 ...]

  <workdir>/algorithmic.csv, .md        every (problem, scheme, seed, length) row, and a summary
                                        (mean ± std over seeds)
  <workdir>/accuracy_<problem>.png      sequence accuracy vs input length, one line per scheme
                                        (mean over seeds, shaded from the lowest to the highest)
  <workdir>/<problem>/<scheme>/seed_<s> each run's directory: config, checkpoints, metrics, and
                                        its own table and plot

Every run is an ordinary posjax run (`task=algorithmic`; `configs/algorithmic.py`): a rerun
resumes an interrupted run and only re-scores a finished one. The config file's argument words
(e.g. `mlm`, `tiny`) apply to every run, then each run's problem, scheme and seed (the model's
and the data's), then the `--config.<field>` overrides. A scheme written `rope+rand` trains with
randomized positions; `--config.data.positions=randomized` does so for every scheme.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Sequence

from absl import app, flags
from ml_collections import config_flags

from posjax import configs
from posjax.evaluate import algorithmic
from posjax.run import distributed
from posjax.run.experiment import Run
from posjax.train import loop


def run_config(spec: str, problem: str, scheme: str, seed: int, overrides=None):
  """The config of one run: `spec` (`path[:words]`) with the problem, scheme and seed added."""
  path, _, words = spec.partition(":")
  name, _, suffix = scheme.partition("+")
  if suffix not in ("", "rand"):
    raise ValueError(f"scheme {scheme!r}: write a scheme name, or name+rand")
  extra = [problem, name] + (["randomized"] if suffix else [])
  config = configs.load_config(f"{path}:" + ",".join([w for w in words.split(",") if w] + extra))
  for dotted, value in (overrides or {}).items():
    configs.set_field(config, dotted, value)
  config.seed = config.data.seed = int(seed)
  config.mode = "train_and_eval"
  return config


def run_dir(workdir: str, config) -> str:
  label = algorithmic.scheme_label(config).replace(" (mlm)", "_mlm")
  return os.path.join(workdir, config.data.name, label, f"seed_{config.seed}")


def sweep(problems: Sequence[str], schemes: Sequence[str], workdir: str, *,
          seeds: Sequence[int] = (0,), spec: str = "configs/algorithmic.py", overrides=None,
          log: Optional[Callable[[str], None]] = print) -> list[dict]:
  """Train (or resume) and score every (problem, scheme, seed); write the comparison under
  `workdir`; return its rows."""
  rows, paths = [], {}
  for problem in problems:
    for scheme in schemes:
      for seed in seeds:
        config = run_config(spec, problem, scheme, seed, overrides)
        run = Run(config, run_dir(workdir, config))
        state = loop.train(run)
        run_rows = algorithmic.evaluate_lengths(run, state)
        algorithmic.write_report(run_rows, run.workdir,
                                 title=f"{problem}, {algorithmic.scheme_label(config)}, seed "
                                       f"{seed}")
        rows += run_rows
        # Rewritten after every run, so a long sweep has a report as it goes.
        paths = algorithmic.write_report(rows, workdir)
  if log is not None:
    for summary in algorithmic.summarize(rows):
      log(str(summary))
    log("\n".join(f"wrote {p}" for p in paths.values()))
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.single_process("experiments.algorithmic")  # before JAX is used
  f = flags.FLAGS
  sweep(f.problems, f.schemes, f.workdir, seeds=[int(s) for s in f.seeds],
        spec=config_flags.get_config_filename(f["config"]),
        overrides=config_flags.get_override_values(f["config"]))


def define_flags() -> None:
  """The command line (defined only when run as a program, so importing defines no flags)."""
  config_flags.DEFINE_config_file(
      "config", configs.find_config_file("configs/algorithmic.py"),
      "The base config file (`path[:words]`); `--config.<field>=value` overrides a field of "
      "every run.", lock_config=True)
  flags.DEFINE_list("problems", ["reverse", "parity"],
                    "problems (posjax.data.algorithmic.PROBLEMS)")
  flags.DEFINE_list("schemes", ["nope", "rope", "alibi"],
                    "positional schemes; `name+rand` for randomized positions")
  flags.DEFINE_list("seeds", ["0"], "seeds (each the model's and the data's)")
  flags.DEFINE_string("workdir", "runs/algorithmic", "where the runs and the comparison go")


if __name__ == "__main__":
  define_flags()
  app.run(main, argv=configs.with_config_found(sys.argv))
