"""Length-extrapolation sweep: train each scheme on the same data and budget, compare by length.

  python -m experiments.extrapolation --schemes=nope,sinusoidal,rope,alibi --workdir=runs/sweep \
      [--seeds=0,1,2] [--config=configs/lm.py] [--config.train.steps=500 ...] \
      [--multipliers=1,2,4,8,16,32]

Each scheme and seed trains in `<workdir>/<scheme>/seed_<s>` through `posjax.train.loop.train`
(the config with `model.pe` set to the scheme and the seed as the model's and the data's; a run
whose checkpoint has reached `train.steps` is not retrained, an unfinished one resumes), then
`posjax.evaluate.extrapolation` writes its `extrapolation/` report there. The sweep writes
`comparison.csv` (every row), `comparison.md` (perplexity by length, mean ± std over seeds) and
`comparison.png` (the range over seeds shaded) in `<workdir>`.
"""

from __future__ import annotations

import os

import ml_collections
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/lm.py", "Base run config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory (one run per scheme).")
_SCHEMES = flags.DEFINE_list("schemes", "nope,sinusoidal,rope,alibi", "Schemes to compare.")
_SEEDS = flags.DEFINE_list("seeds", "0", "Seeds (each the model's and the data's).")
_MULTIPLIERS = flags.DEFINE_list("multipliers", "1,2,4,8,16,32", "Lengths, × data.seq_len.")
_STRIDE = flags.DEFINE_float("stride_fraction", 0.5, "Sliding stride as a fraction of window.")
_TOKENS = flags.DEFINE_integer("num_tokens", 16384, "Validation targets scored per length.")
_TEXT = flags.DEFINE_string(
    "text", "", "Score this text (a .txt file or folder; its validation part) instead of the runs' "
    "own validation data; each run's report goes to extrapolation_<text>/ and the comparison to "
    "comparison_<text>.*, next to the reports on the runs' own data.")
flags.mark_flags_as_required(["workdir"])


def scheme_config(base, scheme: str, seed: int = 0) -> ml_collections.ConfigDict:
  """The base config with `model.pe = scheme` and `seed` as the model's and the data's seed (an
  unlocked copy)."""
  config = ml_collections.ConfigDict(base.to_dict())
  config.model.pe = scheme
  config.seed = config.data.seed = int(seed)
  return config


def train_and_evaluate(config, workdir: str, **eval_kwargs):
  """Train the run (or resume it; a finished run is only restored), then evaluate it by length;
  returns the result."""
  from posjax.evaluate import extrapolation
  from posjax.run.experiment import Run
  from posjax.train import loop
  run = Run(config, workdir)
  state = loop.train(run)
  result, _ = extrapolation.run_extrapolation(workdir, state=state, run=run, **eval_kwargs)
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from posjax.run import distributed
  distributed.initialize_from_environment()  # one process of several, when launched so
  import jax
  from posjax import encodings
  from posjax.evaluate import extrapolation
  unknown = [s for s in _SCHEMES.value if s not in encodings.names()]
  if unknown:
    raise app.UsageError(f"unknown scheme(s) {unknown}; known: {', '.join(encodings.names())}")
  multipliers = [float(m) if "." in m else int(m) for m in _MULTIPLIERS.value]
  other = None
  if _TEXT.value:
    other = ml_collections.ConfigDict(dict(_CONFIG.value.data.to_dict(), name="text",
                                           path=_TEXT.value))
  results = []
  for scheme in _SCHEMES.value:
    for seed in _SEEDS.value:
      workdir = os.path.join(_WORKDIR.value, scheme, f"seed_{seed}")
      results.append(train_and_evaluate(scheme_config(_CONFIG.value, scheme, int(seed)), workdir,
                                        multipliers=multipliers, data_config=other,
                                        stride_fraction=_STRIDE.value, num_tokens=_TOKENS.value))
  name = "comparison" + ("_" + os.path.basename(os.path.normpath(_TEXT.value)).split(".")[0]
                         if _TEXT.value else "")
  if jax.process_index() == 0:  # every process has the same results; one writes them
    paths = extrapolation.write_comparison(results, _WORKDIR.value, name=name)
    print(open(paths["md"]).read(), flush=True)


if __name__ == "__main__":
  app.run(main)
