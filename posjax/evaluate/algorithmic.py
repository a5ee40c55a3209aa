"""Algorithmic length generalisation: train on short task instances, score every longer length.

The protocol of Ruoss et al. 2023 ("Randomized Positional Encodings Boost Length Generalization of
Transformers", ACL) and Kazemnejad et al. 2023 ("The Impact of Positional Encoding on Length
Generalization in Transformers", NeurIPS): a model is trained on instances of a task
(`posjax.data.tasks`) with input lengths drawn uniformly from 1..40, then evaluated at each test
length (41..500) by accuracy:

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

  run = train_task(config)                   # TaskRun: trainable, state, loss curve
  rows = evaluate_task(run, lengths=[...])   # one dict per length
  write_task_report(rows, workdir)           # tasks.csv, tasks.md, accuracy_<task>.png
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from posjax import encodings, models
from posjax.data import tasks as task_data
from posjax.evaluate import report
from posjax.run import sharding, steps
from posjax.run.config import model_config
from posjax.run.trainable import Trainable, make_trainable

# The config's family names to the model families of `posjax.models` (the encoder needs vocab
# logits at every position: the masked-LM head gives them).
FAMILIES = {"decoder": "decoder", "encoder": "mlm"}
POSITIONS = ("contiguous", "randomized")


@dataclasses.dataclass
class TaskRun:
  """A trained task model: what `evaluate_task` needs."""
  config: object                 # the run's ConfigDict
  cfg: models.TransformerConfig  # the model as trained
  mesh: jax.sharding.Mesh
  trainable: Trainable
  state: steps.TrainState
  losses: list[tuple[int, float]]  # (step, training loss) every `train.log_every` steps
  train_seconds: float = 0.0


def scheme_label(config) -> str:
  """How a run appears in tables and legends: `rope`, `rope+rand`, `alibi (encoder)`."""
  label = config.model.pe + ("+rand" if config.data.positions == "randomized" else "")
  return label + (" (encoder)" if config.model.family == "encoder" else "")


def eval_positions(config) -> str:
  mode = config.eval.positions
  return config.data.positions if mode == "train" else mode


def default_lengths(config) -> list[int]:
  """`eval.lengths`, or every `eval.length_stride`-th length up to `eval.max_length` together with
  1, the longest training length and the one after it."""
  if config.eval.lengths:
    return sorted({int(n) for n in config.eval.lengths})
  longest, stride = config.data.max_train_length, config.eval.length_stride
  grid = set(range(stride, config.eval.max_length + 1, stride))
  grid |= {1, longest, min(longest + 1, config.eval.max_length)}
  return sorted(n for n in grid if n <= config.eval.max_length)


def check_config(config, num_data_shards: int) -> None:
  """Input errors, before anything is compiled; each says what to change."""
  problems = []
  d, e = config.data, config.eval
  if config.task not in task_data.TASKS:
    problems.append(f"task={config.task!r}: choose one of {', '.join(task_data.TASKS)}")
  if config.model.family not in FAMILIES:
    problems.append(f"model.family={config.model.family!r}: choose decoder or encoder")
  if d.positions not in POSITIONS:
    problems.append(f"data.positions={d.positions!r}: choose one of {POSITIONS}")
  if e.positions not in POSITIONS + ("train",):
    problems.append(f"eval.positions={e.positions!r}: choose train, contiguous or randomized")
  if not 1 <= d.min_train_length <= d.max_train_length:
    problems.append(f"training lengths {d.min_train_length}..{d.max_train_length}: need "
                    "1 <= data.min_train_length <= data.max_train_length")
  accum = config.train.grad_accum_steps
  if accum < 1 or d.batch_size % accum:
    problems.append(f"train.grad_accum_steps={accum} must divide data.batch_size={d.batch_size}")
  elif (d.batch_size // accum) % num_data_shards:
    problems.append(f"data.batch_size={d.batch_size} (micro-batches of {d.batch_size // accum}) "
                    f"is not divisible by the {num_data_shards} data-parallel shards (mesh "
                    "data×fsdp)")
  if e.batch_size % num_data_shards:
    problems.append(f"eval.batch_size={e.batch_size} is not divisible by the {num_data_shards} "
                    "data-parallel shards")
  if config.train.steps < 1:
    problems.append(f"train.steps must be positive, got {config.train.steps}")
  if not problems and "randomized" in (d.positions, eval_positions(config)):
    longest_train = task_data.sequence_length(config.task, d.max_train_length)
    longest_eval = max(task_data.sequence_length(config.task, n)
                       for n in default_lengths(config))
    longest = max(longest_train, longest_eval if eval_positions(config) == "randomized" else 0)
    if longest > d.max_position:
      problems.append(f"randomized positions need data.max_position >= the longest sequence "
                      f"({longest} tokens for {config.task}); raise data.max_position")
  if problems:
    raise ValueError("invalid task config:\n  - " + "\n  - ".join(problems))


def _learned_limit(cfg: models.TransformerConfig) -> Optional[int]:
  """The table size of a learned absolute scheme (positions must stay below it), else None."""
  if cfg.pe != "learned":
    return None
  return int(cfg.pe_options.get("max_len", encodings.get("learned").defaults["max_len"]))


def train_task(config, *, log: Optional[Callable[[str], None]] = print) -> TaskRun:
  """Build the model of `config` (see configs/tasks.py) and train it on task batches whose input
  lengths are drawn uniformly from data.min_train_length..data.max_train_length per example."""
  mesh = sharding.make_mesh(config.mesh)
  check_config(config, mesh.shape["data"] * mesh.shape["fsdp"])
  cfg = model_config(config, task_data.VOCAB_SIZE)
  limit = _learned_limit(cfg)
  d = config.data
  if limit is not None:  # out-of-table positions would embed as NaN, not fail
    longest = task_data.sequence_length(config.task, d.max_train_length)
    if d.positions == "randomized" and d.max_position > limit:
      raise ValueError(f"randomized positions up to data.max_position={d.max_position} do not "
                       f"fit the learned table (max_len={limit}): raise model.pe_options max_len")
    if longest > limit:
      raise ValueError(f"training sequences of {longest} tokens ({config.task} at length "
                       f"{d.max_train_length}) do not fit the learned table (max_len={limit}): "
                       "raise model.pe_options max_len")
  trainable = make_trainable(FAMILIES[config.model.family], cfg, config.train, mesh,
                             seed=config.seed)
  state = trainable.create()
  rows = d.batch_size // jax.process_count()
  rng = np.random.default_rng([d.seed, jax.process_index()])
  pad_to = task_data.bucket(
      task_data.sequence_length(config.task, d.max_train_length), d.bucket)
  losses, start, step_fn = [], time.perf_counter(), None
  for step in range(config.train.steps):
    lengths = rng.integers(d.min_train_length, d.max_train_length + 1, rows)
    host = task_data.make_batch(config.task, rng, lengths, family=config.model.family,
                                pad_to=pad_to, randomized=d.positions == "randomized",
                                max_position=d.max_position)
    batch = sharding.global_batch(host, mesh)
    if step_fn is None:
      step_fn = trainable.train_step.lower(state, batch).compile()
    state, metrics = step_fn(state, batch)
    done = step + 1
    if done % config.train.log_every == 0 or done == config.train.steps:
      loss = float(jax.device_get(metrics["loss"]))
      if not math.isfinite(loss):
        raise FloatingPointError(f"training loss {loss} at step {done}: lower "
                                 "train.learning_rate or raise train.warmup_steps")
      losses.append((done, loss))
      if log is not None:
        log(f"{config.task} {scheme_label(config)}: step {done} loss {loss:.4f}")
  return TaskRun(config, cfg, mesh, trainable, state, losses, time.perf_counter() - start)


def eval_pad_length(seq_len: int, multiple: int) -> int:
  """`seq_len` rounded up to a multiple of `multiple`, or of a quarter of the power of two below
  it if that is larger: at most about 4 shapes (compilations) per octave of test lengths, and
  under 25% padding."""
  coarse = (1 << max(int(seq_len).bit_length() - 1, 0)) // 4
  return task_data.bucket(seq_len, max(multiple, coarse))


def _make_scorer(run: TaskRun):
  """A jitted `(params, rest, batch) -> (correct_B, total_B)` per-example output-token counts
  with the evaluation attention backend (the parameter tree does not depend on the backend)."""
  e = run.config.eval
  cfg = run.cfg.replace(attention_backend=e.attention_backend, chunk_size=e.chunk_size)
  family = FAMILIES[run.config.model.family]
  _, eval_graphdef, _, _ = steps.split_model(
      nnx.eval_shape(lambda: models.build(family, cfg, seed=run.config.seed)))

  def score(params, rest, batch):
    logits, _ = steps.forward(eval_graphdef, params, rest, batch)
    weights = batch["weights"]
    right = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32)
    return jnp.sum(right * weights, axis=-1), jnp.sum(weights, axis=-1)

  sh = run.trainable.state_sharding
  return jax.jit(score, in_shardings=(sh.params, sh.rest, sharding.batch_sharding(run.mesh)))


def evaluate_task(run: TaskRun, lengths: Optional[Sequence[int]] = None, *,
                  num_examples: Optional[int] = None, seed: Optional[int] = None) -> list[dict]:
  """Per-length accuracy of a trained task model.

  One row per input length: `task, scheme, family, positions, length, in_train (length within
  the training range), seq_accuracy, token_accuracy, examples`; a length whose positions a
  learned table cannot embed gets NaN accuracies and `skipped` set to the reason.
  """
  config = run.config
  e, d = config.eval, config.data
  lengths = default_lengths(config) if lengths is None else sorted({int(n) for n in lengths})
  num_examples = int(num_examples or e.num_examples)
  batch_size = e.batch_size
  host_rows = batch_size // jax.process_count()
  num_batches = -(-num_examples // batch_size)
  positions = eval_positions(config)
  if positions == "randomized":
    too_long = [n for n in lengths
                if task_data.sequence_length(config.task, n) > d.max_position]
    if too_long:
      raise ValueError(f"randomized evaluation positions cannot cover lengths {too_long[:5]}... "
                       f"(sequences over data.max_position={d.max_position}): raise it")
  limit = _learned_limit(run.cfg)
  scorer = _make_scorer(run)
  rng = np.random.default_rng([e.seed if seed is None else seed, jax.process_index(), 1])
  rows = []
  for n in lengths:
    seq_len = task_data.sequence_length(config.task, n)
    row = {"task": config.task, "scheme": scheme_label(config), "family": config.model.family,
           "positions": positions, "length": n,
           "in_train": d.min_train_length <= n <= d.max_train_length}
    highest = d.max_position - 1 if positions == "randomized" else seq_len - 1
    if limit is not None and highest >= limit:
      rows.append({**row, "seq_accuracy": float("nan"), "token_accuracy": float("nan"),
                   "examples": 0, "skipped": f"positions up to {highest} exceed the learned "
                                             f"table (max_len={limit})"})
      continue
    pad_to = eval_pad_length(seq_len, e.bucket)
    seq_right = tok_right = tok_total = examples = 0.0
    for _ in range(num_batches):
      host = task_data.make_batch(config.task, rng, [n] * host_rows, family=config.model.family,
                                  pad_to=pad_to, randomized=positions == "randomized",
                                  max_position=d.max_position)
      correct, total = jax.device_get(scorer(run.state.params, run.state.rest,
                                             sharding.global_batch(host, run.mesh)))
      seq_right += float(np.sum(correct == total))
      tok_right += float(np.sum(correct))
      tok_total += float(np.sum(total))
      examples += len(total)
    rows.append({**row, "seq_accuracy": seq_right / examples,
                 "token_accuracy": tok_right / tok_total, "examples": int(examples),
                 "skipped": ""})
  return rows


def summarize(rows: Sequence[dict]) -> list[dict]:
  """One row per (task, scheme): mean sequence and token accuracy over the training lengths and
  over the longer test lengths (Ruoss et al. report the mean over test lengths 41..500)."""
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault((r["task"], r["scheme"]), []).append(r)
  out = []
  for (task, scheme), rs in groups.items():
    def mean(key, inside):
      vals = [r[key] for r in rs if bool(r["in_train"]) == inside and not r.get("skipped")]
      return float(np.mean(vals)) if vals else float("nan")
    test = [r["length"] for r in rs if not r["in_train"]]
    out.append({"task": task, "scheme": scheme,
                "train_seq_acc": mean("seq_accuracy", True),
                "test_seq_acc": mean("seq_accuracy", False),
                "test_token_acc": mean("token_accuracy", False),
                "test_lengths": f"{min(test)}-{max(test)}" if test else ""})
  return out


def notes_for(rows: Sequence[dict]) -> list[str]:
  notes = ["sequence accuracy: all output tokens right (teacher forcing, argmax); token "
           "accuracy: share of output tokens right; `in_train`: inside the training lengths"]
  skipped = sorted({(r["scheme"], r["skipped"]) for r in rows if r.get("skipped")})
  for scheme, why in skipped:
    lengths = [r["length"] for r in rows if r["scheme"] == scheme and r.get("skipped") == why]
    notes.append(f"{scheme}: lengths {min(lengths)}-{max(lengths)} skipped: {why}")
  return notes


def write_task_report(rows: Sequence[dict], workdir: str, *, name: str = "tasks",
                      title: str = "Algorithmic length generalisation") -> dict[str, str]:
  """`<name>.csv` (every row), `<name>.md` (summary then per-length table, with notes) and one
  `accuracy_<task>.png` per task (sequence accuracy vs input length, one line per scheme), via
  `posjax.evaluate.report`."""
  os.makedirs(workdir, exist_ok=True)
  paths = {"csv": report.write_csv(os.path.join(workdir, f"{name}.csv"), rows)}
  summary = summarize(rows)
  md = os.path.join(workdir, f"{name}.md")
  report.write_markdown(md, rows, title=title, notes=notes_for(rows),
                        intro="Mean accuracy by task and scheme:\n\n"
                              + report.markdown_table(summary) + "\n\nBy length:")
  paths["md"] = md
  for task in dict.fromkeys(r["task"] for r in rows):
    series = []
    for scheme in dict.fromkeys(r["scheme"] for r in rows if r["task"] == task):
      rs = [r for r in rows if r["task"] == task and r["scheme"] == scheme]
      series.append(report.Series(scheme, [r["length"] for r in rs],
                                  [r["seq_accuracy"] for r in rs], {"marker": "."}))
    longest = max((r["length"] for r in rows if r["task"] == task and r["in_train"]), default=0)
    paths[f"png_{task}"] = report.line_plot(
        os.path.join(workdir, f"accuracy_{task}.png"), series, xlabel="input length",
        ylabel="sequence accuracy", title=f"{task}: accuracy vs length",
        vlines=[(longest + 0.5, "longest training length")] if longest else ())
  return paths


def run_task(config, workdir: str, *, log: Optional[Callable[[str], None]] = print) -> list[dict]:
  """Train, evaluate at every test length and write the report under `workdir`."""
  run = train_task(config, log=log)
  rows = evaluate_task(run)
  report.write_csv(os.path.join(workdir, "train_loss.csv"),
                   [{"step": s, "loss": l} for s, l in run.losses])
  write_task_report(rows, workdir, title=f"{config.task}, {scheme_label(config)}")
  return rows
