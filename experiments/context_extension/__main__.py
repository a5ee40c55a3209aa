"""RoPE context extension: scalings without training, and optional fine-tunes at the target.

  python -m experiments.context_extension --workdir=runs/rope [--config=configs/lm.py:rope] \
      [--targets=4,8] [--scalings=linear,ntk,dynamic,yarn,llama3] [--finetune_steps=200 \
      --finetune_scaling=none,linear [--finetune_targets=4] [--finetune.train.learning_rate=1e-3] \
      [--finetune.data.global_batch_size=4]] \
      [--heatmap_multipliers=1,2,4 --heatmap_methods=none,yarn,finetune+linear] \
      [--config.train.steps=...] [--seeds=0,1,2 [--gather]]

The base run is the one recorded in `--workdir` (its `config.json`; `--config.<field>` overrides
must agree with it, as for `posjax.main --config.mode=eval`); a workdir without a run gets one
trained from `--config`. It is trained on unless its checkpoint has reached `train.steps`, then
`posjax.evaluate.context_extension` measures each scaling (factor = target / train length) at the
training and target lengths: perplexity and passkey accuracy. With `--finetune_steps`, each
target (or each of `--finetune_targets`) also gets a short fine-tune at that length
(`train.init_from` = the base run) per entry of `--finetune_scaling` (`none`: plain RoPE;
`linear`: Chen et al. 2023's PI fine-tune; any scaling) in
`<workdir>/context_extension/finetune_<target>[_<scaling>]`; `--finetune.<field>=value`
overrides a field of every fine-tune's config (derived from the base run's), e.g.
`--finetune.data.global_batch_size` (a batch of `base batch × L / target` keeps the tokens per
step of pretraining) or `--finetune.train.learning_rate`. Writes `results.csv`,
`results.md` and `ppl_by_method.png` in `<workdir>/context_extension/`.

With `--heatmap_multipliers`, each method of `--heatmap_methods` (names as in the table: `none`,
a scaling at the factor of the first fine-tuned target (or of `--targets`' first entry), or a
fine-tune label such as `finetune+linear` at that target) also gets a passkey grid at
`train length × multiplier` over `--heatmap_depths`, `--heatmap_trials` keys per cell:
`passkey.csv`, `passkey.md` and one `passkey_<method>.png` heatmap (depth × length) each.

With `--seeds=0,1,2`, `--workdir` holds one base run per seed, `<workdir>/seed_<s>` (trained from
`--config` with the seed as the model's and the data's unless recorded there, as
`experiments.extrapolation` lays its runs out), and each gets the whole study above in its own
`context_extension/`. Then `<workdir>/context_extension/` holds every seed's rows
(`results.csv`, `passkey.csv`), the mean ± sample std over seeds (`results.md`), the perplexity
plot with ± std bands and heatmaps of the mean accuracy over seeds. Seeds can be studied apart
(e.g. one process or machine each, `--seeds=<s>`, same workdir and flags): `--seeds=0,1,2
--gather` then trains and evaluates nothing and writes the aggregate from the seeds' recorded
studies (`seed_<s>/context_extension/study.json`: the study's settings, base run and rows),
refusing a seed that is missing or was studied with other settings.
"""

from __future__ import annotations

import json
import os
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from posjax import configs
from posjax.run import distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config", configs.find_config_file("configs/lm.py") + ":rope",
    "A base RoPE config, for a workdir without a run (a recorded run is read from its workdir).")
_WORKDIR = flags.DEFINE_string("workdir", None, "The base run's directory.")
_TARGETS = flags.DEFINE_list("targets", "4", "Target lengths, × data.seq_len.")
_SCALINGS = flags.DEFINE_list("scalings", "linear,ntk,dynamic,yarn,llama3", "RoPE scalings.")
_FT_STEPS = flags.DEFINE_integer("finetune_steps", 0, "Fine-tune steps per target (0: none).")
_FT_SCALING = flags.DEFINE_list("finetune_scaling", "",
                                "Scalings during the fine-tunes, one fine-tune each (none: "
                                "plain RoPE; empty: one plain fine-tune).")
_FT_TARGETS = flags.DEFINE_list("finetune_targets", "",
                                "Targets (× data.seq_len) that get the fine-tunes (empty: all).")
config_flags.DEFINE_config_file(
    "finetune", configs.find_config_file("configs/lm.py"),
    "The fine-tunes' config fields: --finetune.<field>=value overrides it in every fine-tune.",
    lock_config=True)
_PASSKEY = flags.DEFINE_integer("passkey_trials", 3, "Keys per (length, depth); 0: no passkey.")
_TOKENS = flags.DEFINE_integer("num_tokens", 16384, "Validation targets scored per length.")
_HM_MULT = flags.DEFINE_list("heatmap_multipliers", "",
                             "Passkey heatmap lengths, × data.seq_len (empty: no heatmaps).")
_HM_METHODS = flags.DEFINE_list("heatmap_methods", "none", "Methods with a passkey heatmap.")
_HM_DEPTHS = flags.DEFINE_list("heatmap_depths", "0,0.25,0.5,0.75,1", "Key depths.")
_HM_TRIALS = flags.DEFINE_integer("heatmap_trials", 5, "Keys per heatmap cell.")
_SEEDS = flags.DEFINE_list("seeds", "", "One base run per seed in <workdir>/seed_<s>, each "
                           "studied, then the mean ± std over seeds (empty: --workdir is the "
                           "one base run).")
_GATHER = flags.DEFINE_bool("gather", False, "With --seeds: only gather the seeds' recorded "
                            "studies into the aggregate (no training, no evaluation).")
flags.mark_flags_as_required(["workdir"])

STUDY_FILE = "study.json"  # in a base run's context_extension/: what `gather` reads


def finetune_scalings(values) -> list:
  """`--finetune_scaling` entries as scalings (None: plain RoPE); empty means one plain one."""
  return [None if v in ("", "none") else v for v in values] or [None]


def finetune_label(scaling) -> str:
  return "finetune" + (f"+{scaling}" if scaling else "")


def passkey_heatmaps(out_dir, run, target, methods, ft_scalings):
  """The passkey grid of each method in `methods` at the heatmap lengths; writes the report."""
  from posjax.evaluate import context_extension as ce
  from posjax.evaluate import extrapolation, passkey
  lengths = [int(round(run.train_len * float(m))) for m in _HM_MULT.value]
  depths = [float(d) for d in _HM_DEPTHS.value]
  by_label = {finetune_label(s): s for s in ft_scalings} if _FT_STEPS.value else {}
  rows = []
  for method in methods:
    if method in by_label:
      scaling = by_label[method]
      model = extrapolation.load_run(ce.finetune_dir(out_dir, target, scaling))  # as recorded
      scorer = extrapolation.make_scorer(model)
    elif method == "none" or method in ce.SCALINGS:
      options = ce.scaled_pe_options(run.cfg.pe, run.cfg.pe_options,
                                     None if method == "none" else method,
                                     target / run.train_len, run.train_len)
      scorer = extrapolation.make_scorer(run, pe_options=options)
    else:
      raise app.UsageError(f"--heatmap_methods: {method!r} is not none, a scaling or one of the "
                           f"fine-tunes {sorted(by_label)}")
    rows += [{"method": r.pop("scheme"), **r} for r in passkey.passkey_grid(
        scorer, run.run.tokenizer, lengths, depths, trials=_HM_TRIALS.value, name=method)]
  write_heatmaps(rows, out_dir, methods, run.train_len, target)
  return rows


def write_heatmaps(rows, out_dir, methods, train_len, target):
  """`passkey.csv`, `passkey.md` and a `passkey_<method>.png` per method (of a cell's rows, e.g.
  one per seed, the mean accuracy)."""
  from posjax.evaluate import passkey, report
  for method in methods:
    mine = [r for r in rows if r["method"] == method]
    grid_depths, grid_lengths, values = passkey.accuracy_matrix(mine)
    report.heatmap(os.path.join(out_dir, f"passkey_{method}.png"), values, rows=grid_depths,
                   columns=grid_lengths, xlabel="context length (tokens)", ylabel="key depth",
                   title=f"Passkey retrieval: {method} (trained at {train_len})")
  report.write_csv(os.path.join(out_dir, "passkey.csv"), rows)
  report.write_markdown(os.path.join(out_dir, "passkey.md"), rows,
                        title="Passkey retrieval by length and depth",
                        notes=[f"scalings at factor {target / train_len:g}; fine-tunes at "
                               f"{target} tokens; accuracy: fraction of {_HM_TRIALS.value} keys "
                               "whose digits are all the argmax of a teacher-forced pass"]
                        + (["the heatmaps show the mean over seeds"]
                           if len({r.get("seed") for r in rows}) > 1 else []))


def base_config(workdir: str, seed=None) -> ml_collections.ConfigDict:
  """The base run's config: the one recorded in `workdir` (the command line's overrides, and the
  seed, must agree with it), or `--config` with its overrides and `seed` for a new run."""
  from posjax.run import record
  given = ml_collections.ConfigDict(_CONFIG.value.to_dict())
  overrides = list(config_flags.get_override_values(flags.FLAGS["config"]))
  if seed is not None:
    given.seed = given.data.seed = int(seed)
    overrides += ["seed", "data.seed"]
  return ml_collections.ConfigDict(
      record.for_workdir(workdir, given, overrides=overrides).to_dict())


def study_settings() -> dict:
  """The flags that decide a study's rows: seeds gathered into one aggregate must share them."""
  return json.loads(json.dumps({
      "targets": _TARGETS.value, "scalings": _SCALINGS.value,
      "finetune_steps": _FT_STEPS.value, "finetune_scaling": _FT_SCALING.value,
      "finetune_targets": _FT_TARGETS.value,
      "finetune_overrides": dict(config_flags.get_override_values(flags.FLAGS["finetune"])),
      "passkey_trials": _PASSKEY.value, "num_tokens": _TOKENS.value,
      "heatmap_multipliers": _HM_MULT.value, "heatmap_methods": _HM_METHODS.value,
      "heatmap_depths": _HM_DEPTHS.value, "heatmap_trials": _HM_TRIALS.value}))


def base_note(base: str, pe: str, train_len: int, steps) -> str:
  """The report's first note: which base run(s), and how the scalings' factors are set."""
  return (f"{base} ({pe}, trained at {train_len} tokens, step {steps}); scalings use factor = "
          f"target / {train_len}, original_max_len = {train_len}; perplexity over "
          "non-overlapping windows of the validation text")


def study(workdir: str, seed=None) -> dict:
  """The study of one base run (trained first if needed), reported in
  `<workdir>/context_extension/` and recorded there as `study.json`, which it also returns:
  `settings` (`study_settings()`), `base` (the run's `pe`, `train_len` and `step`), `rows` and
  `heatmap_rows` (each with `seed` when given), `notes` and `heatmap_target`."""
  from posjax.evaluate import context_extension as ce
  from posjax.evaluate import extrapolation
  from posjax.run.experiment import Run
  from posjax.train import context_extension as extend
  from posjax.train import loop
  config = base_config(workdir, seed)
  out_dir = os.path.join(workdir, "context_extension")
  base = Run(config, workdir)
  run = extrapolation.load_run(workdir, state=loop.train(base), run=base)
  targets = [int(round(run.train_len * float(t))) for t in _TARGETS.value]
  eval_kwargs = dict(passkey_trials=_PASSKEY.value, num_tokens=_TOKENS.value)
  rows = ce.evaluate_scalings(run, targets, _SCALINGS.value, **eval_kwargs)
  ft_scalings = finetune_scalings(_FT_SCALING.value)
  ft_overrides = config_flags.get_override_values(flags.FLAGS["finetune"])
  ft_targets = ([int(round(run.train_len * float(t))) for t in _FT_TARGETS.value]
                if _FT_TARGETS.value else targets)
  for target in ft_targets if _FT_STEPS.value else ():
    for scaling in ft_scalings:
      ft_dir = ce.finetune_dir(out_dir, target, scaling)
      ft_config, ft_state = extend.finetune(config, workdir, ft_dir, target,
                                            steps=_FT_STEPS.value, scaling=scaling,
                                            overrides=ft_overrides)
      ft_run = extrapolation.load_run(ft_dir, ft_config, state=ft_state)
      rows += ce.evaluate_scalings(ft_run, [target], (), method_label=finetune_label(scaling),
                                   base_len=run.train_len, **eval_kwargs)
      logging.info("fine-tune %s at %d done", finetune_label(scaling), target)
  notes = [base_note(f"base run: {workdir}", run.cfg.pe, run.train_len, run.step),
           "passkey: mean accuracy over depths 0, 0.5, 1 (teacher-forced argmax of the key "
           "digits); empty below the shortest prompt or when not measured"]
  if _FT_STEPS.value:
    notes.append(f"fine-tunes: {_FT_STEPS.value} steps at the target length from the base "
                 f"parameters; overrides {ft_overrides or 'none'}")
  paths = ce.write_report(rows, out_dir, notes=notes)
  print(open(paths["md"]).read(), flush=True)
  heatmap_rows, hm_target = [], ft_targets[0] if _FT_STEPS.value else targets[0]
  if _HM_MULT.value:
    heatmap_rows = passkey_heatmaps(out_dir, run, hm_target, _HM_METHODS.value, ft_scalings)
    print(open(os.path.join(out_dir, "passkey.md")).read(), flush=True)
  if seed is not None:
    rows, heatmap_rows = ([{"seed": int(seed), **r} for r in x] for x in (rows, heatmap_rows))
  recorded = {"settings": study_settings(),
              "base": {"pe": run.cfg.pe, "train_len": run.train_len, "step": int(run.step)},
              "rows": rows, "heatmap_rows": heatmap_rows, "notes": notes,
              "heatmap_target": hm_target}
  with open(os.path.join(out_dir, STUDY_FILE), "w") as f:
    json.dump(recorded, f, indent=1, default=lambda x: x.item())  # numpy scalars
  return recorded


def recorded_study(workdir: str, seed: int) -> dict:
  """The study recorded in `workdir` for `gather`: its base run must agree with `--config` and
  `seed`, and its settings with this command's flags."""
  base_config(workdir, seed)  # the recorded run agrees with the command line and the seed
  path = os.path.join(workdir, "context_extension", STUDY_FILE)
  if not os.path.exists(path):
    raise app.UsageError(f"--gather: seed {seed} has no recorded study ({path}); study it "
                         f"first with --seeds={seed}")
  with open(path) as f:
    recorded = json.load(f)
  mine = study_settings()
  differ = sorted(k for k in mine.keys() | recorded["settings"].keys()
                  if mine.get(k) != recorded["settings"].get(k))
  if differ:
    raise app.UsageError(f"--gather: seed {seed} was studied with other settings ({path}): " +
                         "; ".join(f"--{k}: recorded {recorded['settings'].get(k)!r}, given "
                                   f"{mine.get(k)!r}" for k in differ))
  return recorded


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _GATHER.value and not _SEEDS.value:
    raise app.UsageError("--gather gathers the studies of --seeds: give them")
  distributed.single_process("experiments.context_extension")  # before JAX is used
  if not _SEEDS.value:
    study(_WORKDIR.value)
    return
  from posjax.evaluate import context_extension as ce
  seed_dirs = {int(s): os.path.join(_WORKDIR.value, f"seed_{int(s)}") for s in _SEEDS.value}
  if _GATHER.value:  # every seed checked before anything is written
    studies = [recorded_study(d, s) for s, d in seed_dirs.items()]
  else:
    studies = [study(d, s) for s, d in seed_dirs.items()]
  bases = [s["base"] for s in studies]
  steps = sorted({b["step"] for b in bases})
  notes = [base_note(f"base runs: {_WORKDIR.value}/seed_<s>", bases[0]["pe"],
                     bases[0]["train_len"], "/".join(str(s) for s in steps))
           + "; each seed's own report is in its context_extension/", *studies[0]["notes"][1:]]
  out_dir = os.path.join(_WORKDIR.value, "context_extension")
  paths = ce.write_report([r for s in studies for r in s["rows"]], out_dir, notes=notes)
  print(open(paths["md"]).read(), flush=True)
  heatmap_rows = [r for s in studies for r in s["heatmap_rows"]]
  if heatmap_rows:
    write_heatmaps(heatmap_rows, out_dir, _HM_METHODS.value, bases[0]["train_len"],
                   studies[0]["heatmap_target"])


if __name__ == "__main__":
  app.run(main, argv=configs.with_config_found(sys.argv))
