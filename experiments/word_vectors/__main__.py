"""Word-vector input layer: word2vec trained on the training works against random embeddings.

  python -m experiments.word_vectors --workdir=runs/word_vectors --seeds=0,1,2

Needs gensim (`pip install -e ".[wordvectors]"`). Steps:
1. The word vocabulary (`data.tokenizer=word`) of each task's training split, and skip-gram
   word2vec vectors (gensim) trained on the genre task's training works — the LM's training works
   less the two poems the genre task holds out, so neither task's validation or test text is
   seen — one line a sentence, the tokenizer's own words, saved in word2vec binary format.
2. For each task (`lm`: next word on the Shakespeare split, configs/lm.py; `cls`: passage genre,
   configs/finetune_cls.py trained from scratch) and seed, four input layers:
   `random` (the usual trained random table), `random_frozen` (a frozen random table: the
   control for freezing), `w2v_frozen` and `w2v_tuned` (`model.word_vectors`, frozen or
   fine-tuned). Every run of a task has the same model, data, steps and seed set; only the
   token table's initialisation and trainability differ.
3. `results.csv` (one row a run), `results.md` (mean ± std over seeds, and the paired difference
   from `random` with the same seed) and `curves_<task>.png` (validation score against step,
   the mean with a band of ± one std) in `--workdir`.
A run whose results exist is not run again, so the study can be resumed or extended by seeds.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

from posjax.run import distributed

CONDITIONS = {  # name: (use the vectors, freeze the token table)
    "random": (False, False), "random_frozen": (False, True),
    "w2v_frozen": (True, True), "w2v_tuned": (True, False)}
VOCAB_SIZE = 4096  # the most frequent words (specials included); rarer ones are [UNK]
SCORES = {"lm": ("eval/loss", "validation loss (nats/word)", "min"),
          "cls": ("eval/macro_f1", "validation macro-F1", "max")}


def task_config(task: str, dim: int, steps: int, **overrides):
  """The study's config of `task` (small sizes: see RESULTS.md), before the input layer."""
  from posjax.configs import load_config
  common = {"data.tokenizer": "word", "data.min_count": 3, "data.lowercase": True,
            "data.vocab_size": VOCAB_SIZE,
            "model.dim": dim, "model.num_layers": 2, "model.num_heads": 4,
            "model.mlp_dim": 2 * dim, "train.steps": steps, "train.warmup_steps": steps // 10,
            "train.keep_checkpoints": 1, "mode": "train"}
  if task == "lm":
    config = load_config("configs/lm.py:rope", **common, **{
        "model.tie_embeddings": False, "data.seq_len": 64, "data.global_batch_size": 16,
        "train.learning_rate": 3e-3, "train.eval_every": steps // 4, "train.log_every": 50,
        "train.checkpoint_every": steps, "eval.num_batches": 8, "eval.batch_size": 16,
        "eval.length_multipliers": (1,)})
  elif task == "cls":
    config = load_config("configs/finetune_cls.py:rope", **common, **{
        "data.seq_len": 128, "data.global_batch_size": 16, "data.max_per_work": 96,
        "data.eval_max_per_work": 32,
        "train.learning_rate": 1e-3, "train.eval_every": steps // 6, "train.log_every": 50,
        "train.checkpoint_every": steps // 6, "train.early_stopping_patience": 0,
        "eval.length_multipliers": (1,), "eval.batch_size": 64})
  else:
    raise ValueError(f"unknown task {task!r}: lm or cls")
  for key, value in overrides.items():
    config_set(config, key, value)
  return config


def config_set(config, dotted: str, value) -> None:
  from posjax import configs
  configs.set_field(config, dotted, value)


def train_vectors(path: str, dim: int, *, min_count: int, epochs: int, seed: int = 0) -> dict:
  """Skip-gram word2vec on the genre task's training works (see the docstring), saved at `path`
  in word2vec binary format; returns what was trained."""
  try:
    from gensim.models import Word2Vec
  except ImportError:
    raise SystemExit("this study needs gensim: pip install -e \".[wordvectors]\"") from None
  from posjax.data import word_tokenizer
  texts = word_tokenizer.training_texts({"name": "shakespeare_genre"})
  sentences = [words for text in texts for line in text.splitlines()
               if (words := word_tokenizer.split_words(line, lowercase=True))]
  start = time.perf_counter()
  model = Word2Vec(sentences, vector_size=dim, window=5, min_count=min_count, sg=1, negative=5,
                   epochs=epochs, workers=1, seed=seed)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  model.wv.save_word2vec_format(path, binary=True)
  return {"sentences": len(sentences), "words": sum(len(s) for s in sentences),
          "vectors": len(model.wv), "dim": dim, "epochs": epochs,
          "seconds": round(time.perf_counter() - start, 1)}


def curve(workdir: str, metric: str) -> list[tuple[int, float]]:
  """`(step, value)` of `metric` in the run's metrics.jsonl."""
  points = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if metric in record:
        points.append((int(record["step"]), float(record[metric])))
  return sorted(dict(points).items())


def run_one(task: str, condition: str, seed: int, workdir: str, vectors: str, *, dim: int,
            steps: int) -> dict:
  """Train one run (or read its saved row) and return its row."""
  path = os.path.join(workdir, "row.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  from posjax.run.experiment import Run
  from posjax.train import loop
  use, freeze = CONDITIONS[condition]
  overrides = {"seed": seed, "data.seed": seed}
  if use:
    overrides.update({"model.word_vectors": os.path.abspath(vectors),
                      "model.freeze_word_vectors": freeze})
  config = task_config(task, dim, steps, **overrides)
  if freeze and not use:  # a frozen random table: the PEFT mask's token-table switch
    import ml_collections
    if "peft" not in config:
      config.peft = ml_collections.ConfigDict()
    config.peft.freeze_token_embedding = True
  start = time.perf_counter()
  run = Run(config, workdir)
  state = loop.train(run)
  seconds = time.perf_counter() - start
  metric, _, mode = SCORES[task]
  points = curve(workdir, metric)
  values = [v for _, v in points]
  best = min(values) if mode == "min" else max(values)
  row = {"task": task, "condition": condition, "seed": seed, "steps": int(state.step),
         "final": values[-1], "best": best, "trained_params": run.trainable.num_trainable,
         "seconds": round(seconds, 1), "curve": points}
  if task == "cls":
    final = run.validate(state)  # the last state (the curve's last point is the same)
    row["final_accuracy"] = final["eval/accuracy"]
  with open(path, "w") as f:
    json.dump(row, f)
  return row


def paired_difference(rows: list[dict], task: str, condition: str) -> str:
  """`"mean ± std"` over seeds of (final score of `condition` − that of `random`, same seed):
  the two runs share the data order and every parameter but the token table."""
  import numpy as np
  final = {(r["condition"], r["seed"]): r["final"] for r in rows if r["task"] == task}
  diffs = [v - final[("random", seed)] for (c, seed), v in final.items()
           if c == condition and ("random", seed) in final]
  if not diffs or condition == "random":
    return "—"
  std = f" ± {np.std(diffs, ddof=1):.3f}" if len(diffs) > 1 else ""
  return f"{np.mean(diffs):+.3f}{std}"


def write_reports(rows: list[dict], workdir: str, info: dict) -> str:
  """`results.csv`, `results.md` and `curves_<task>.png`; returns the Markdown path."""
  import numpy as np

  from posjax.evaluate import report
  flat = [{k: v for k, v in r.items() if k != "curve"} for r in rows]
  report.write_csv(os.path.join(workdir, "results.csv"), flat)
  summary = report.over_seeds(flat, ("task", "condition"),
                              ("final", "best", "final_accuracy", "seconds"))
  lines = ["# Word-vector input layer: word2vec vs random token embeddings\n",
           f"word2vec: {json.dumps(info)}\n"]
  for task in dict.fromkeys(r["task"] for r in summary):
    _, label, _ = SCORES[task]
    table = []
    for s in (s for s in summary if s["task"] == task):
      row = {"condition": s["condition"], "seeds": s["seeds"],
             f"final {label}": report.mean_std(s, "final"),
             f"best {label}": report.mean_std(s, "best")}
      if task == "cls":
        row["final accuracy"] = report.mean_std(s, "final_accuracy")
      row["final − random, same seed"] = paired_difference(flat, task, s["condition"])
      row["seconds / run"] = f"{s['seconds']:.0f}"
      table.append(row)
    lines.append(f"## {task}: {label} (mean ± std over seeds)\n\n"
                 f"{report.markdown_table(table)}\n")
  path = os.path.join(workdir, "results.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  for task in dict.fromkeys(r["task"] for r in rows):
    _, label, _ = SCORES[task]
    series = []
    for condition in CONDITIONS:
      curves = [r["curve"] for r in rows if r["task"] == task and r["condition"] == condition]
      if not curves:
        continue
      steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves)))
      values = np.asarray([[dict(c)[s] for s in steps] for c in curves], np.float64)
      mean, std = values.mean(0), values.std(0, ddof=1) if len(curves) > 1 else 0 * values[0]
      series.append(report.Series(f"{condition} ({len(curves)} seeds)", steps, mean,
                                  low=mean - std, high=mean + std))
    report.line_plot(os.path.join(workdir, f"curves_{task}.png"), series, xlabel="step",
                     ylabel=label, title=f"{task}: token table initialisation (mean ± std)")
  return path


def study(workdir: str, seeds, tasks, conditions, *, dim: int, steps: dict,
          w2v_epochs: int) -> str:
  """Every task × condition × seed; returns the results.md path."""
  bad = [c for c in conditions if c not in CONDITIONS] + [t for t in tasks if t not in SCORES]
  if bad:
    raise ValueError(f"unknown conditions/tasks {bad}: {list(CONDITIONS)}, {list(SCORES)}")
  vectors = os.path.join(workdir, "vectors", f"shakespeare_train_{dim}d.bin")
  info_path = vectors + ".json"
  if not os.path.exists(info_path):
    info = train_vectors(vectors, dim, min_count=3, epochs=w2v_epochs)
    with open(info_path, "w") as f:
      json.dump(info, f)
  with open(info_path) as f:
    info = json.load(f)
  rows, path = [], None
  for task in tasks:
    for seed in seeds:
      for condition in conditions:
        run_dir = os.path.join(workdir, f"{task}_{condition}_s{seed}")
        rows.append(run_one(task, condition, int(seed), run_dir, vectors, dim=dim,
                            steps=steps[task]))
        path = write_reports(rows, workdir, info)
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.single_process("experiments.word_vectors")  # before JAX is used
  path = study(_WORKDIR.value, _SEEDS.value, _TASKS.value, _CONDITIONS.value, dim=_DIM.value,
               steps={"lm": _LM_STEPS.value, "cls": _CLS_STEPS.value},
               w2v_epochs=_W2V_EPOCHS.value)
  print(open(path).read(), flush=True)


if __name__ == "__main__":
  _WORKDIR = flags.DEFINE_string("workdir", None, "Study directory.")
  _SEEDS = flags.DEFINE_list("seeds", "0,1,2", "Model and data seeds.")
  _TASKS = flags.DEFINE_list("tasks", "lm,cls", "lm (next word) and/or cls (passage genre).")
  _CONDITIONS = flags.DEFINE_list("conditions", ",".join(CONDITIONS), "Input layers.")
  _DIM = flags.DEFINE_integer("dim", 64, "Model width = word-vector dimension.")
  _LM_STEPS = flags.DEFINE_integer("lm_steps", 200, "LM training steps.")
  _CLS_STEPS = flags.DEFINE_integer("cls_steps", 200, "Genre classifier training steps.")
  _W2V_EPOCHS = flags.DEFINE_integer("w2v_epochs", 5, "word2vec epochs over the training works.")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
