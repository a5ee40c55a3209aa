"""From a run's `ConfigDict` to checked objects; every input error is raised here, before compiling."""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence

from posjax import encodings, models
from posjax.models import TransformerConfig
from posjax.run import word_vectors

MODES = ("train", "eval", "train_and_eval", "generate")
# Each objective (`config.task`) and the model families it trains.
TASKS = {"lm": ("decoder",), "mlm": ("mlm",), "classify": ("classifier",), "tag": ("tagger",),
         "algorithmic": ("decoder", "mlm"), "mlm+nsp": ("pretraining",)}
_ZERO_MEANS_DEFAULT = ("num_kv_heads", "mlp_dim", "head_dim")


def pe_options(value: Any) -> dict:
  """`model.pe_options` is JSON text on the command line, or a dict from Python."""
  if isinstance(value, str):
    try:
      value = json.loads(value or "{}")
    except json.JSONDecodeError as e:
      raise ValueError(f"model.pe_options is not valid JSON ({e}): {value!r}; write e.g. "
                       "'{\"max_len\": 2048}'") from None
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if not isinstance(value, dict):
    raise ValueError(f"model.pe_options must be a JSON object, got {value!r}")
  return value


def model_config(config, vocab_size: int) -> TransformerConfig:
  """The `TransformerConfig` of `config.model` (vocab_size 0 means the tokenizer's)."""
  values = dict(config.model.to_dict())
  values.pop("family", None)
  for key in word_vectors.FIELDS:  # read by posjax.run.word_vectors, not the model
    values.pop(key, None)
  for key in _ZERO_MEANS_DEFAULT:
    if values.get(key) == 0:
      values[key] = None
  values["vocab_size"] = values.get("vocab_size") or vocab_size
  values["pe_options"] = pe_options(values.get("pe_options", {}))
  if values["vocab_size"] < vocab_size:
    raise ValueError(f"model.vocab_size={values['vocab_size']} is smaller than the tokenizer's "
                     f"{vocab_size}: token ids would fall outside the embedding; use 0 (automatic)")
  return TransformerConfig.from_dict(values)


def check_run(config, mesh_shape: dict, objective_problems: Sequence[str] = ()) -> None:
  """The checks that need the whole run config, with the objective's own (`objective_problems`);
  one error lists them all, each saying what to change."""
  problems = []
  if config.mode not in MODES:
    problems.append(f"mode={config.mode!r}: choose one of {MODES}")
  if config.task not in TASKS:
    problems.append(f"task={config.task!r}: choose one of {sorted(TASKS)}")
  elif config.model.family not in TASKS[config.task]:
    problems.append(f"task={config.task} trains model.family in {TASKS[config.task]}, not "
                    f"{config.model.family!r}")
  if config.model.family not in models.FAMILIES:
    problems.append(f"model.family={config.model.family!r}: choose one of "
                    f"{sorted(models.FAMILIES)}")
  batch, accum = config.data.global_batch_size, config.train.grad_accum_steps
  shards = mesh_shape["data"] * mesh_shape["fsdp"]
  if batch < 1:
    problems.append(f"data.global_batch_size must be positive, got {batch}")
  elif accum < 1 or batch % accum:
    problems.append(f"train.grad_accum_steps={accum} must divide data.global_batch_size={batch}")
  elif (batch // accum) % shards:
    problems.append(f"the micro-batch of {batch // accum} sequences (global_batch_size / "
                    f"grad_accum_steps) is not divisible by the {shards} data-parallel shards "
                    f"(mesh data×fsdp); make it a multiple of {shards}")
  if config.eval.batch_size < 1 or config.eval.batch_size % shards:
    problems.append(f"eval.batch_size={config.eval.batch_size} must be a positive multiple of "
                    f"the {shards} data-parallel shards")
  if config.eval.num_batches < 0:
    problems.append(f"eval.num_batches must be >= 0 (0: the whole split), got "
                    f"{config.eval.num_batches}")
  tc = config.train
  for field in ("steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
    if tc[field] < 1:
      problems.append(f"train.{field} must be a positive integer, got {tc[field]}")
  if not tc.learning_rate > 0:
    problems.append(f"train.learning_rate must be positive, got {tc.learning_rate}")
  if tc.warmup_steps < 0:
    problems.append(f"train.warmup_steps must be >= 0, got {tc.warmup_steps}")
  if tc.best_mode not in ("min", "max"):
    problems.append(f"train.best_mode={tc.best_mode!r}: choose min (loss-like) or max")
  if tc.early_stopping_patience < 0:
    problems.append(f"train.early_stopping_patience must be >= 0 (0: off), got "
                    f"{tc.early_stopping_patience}")
  problems += objective_problems
  if problems:
    raise ValueError("invalid config:\n  - " + "\n  - ".join(problems))


def table_limit(cfg: TransformerConfig) -> Optional[int]:
  """The positions a scheme with a table (learned absolute, Shaw, ...) can embed: its `max_len`;
  None for a scheme without one."""
  defaults = encodings.get(cfg.pe).defaults
  if "max_len" not in defaults:
    return None
  return int(cfg.pe_options.get("max_len", defaults["max_len"]))


def window_problems(config, cfg: TransformerConfig) -> list[str]:
  """The checks of a run on windows (or passages) of `data.seq_len` tokens, evaluated at
  `eval.length_multipliers` × seq_len."""
  problems = []
  if config.data.seq_len < 1:
    problems.append(f"data.seq_len must be positive, got {config.data.seq_len}")
  if not config.eval.length_multipliers or min(config.eval.length_multipliers) <= 0:
    problems.append(f"eval.length_multipliers must be positive numbers, got "
                    f"{tuple(config.eval.length_multipliers)}")
    return problems
  max_len = table_limit(cfg)
  if max_len is not None:
    longest = config.data.seq_len * max(config.eval.length_multipliers)
    if longest > max_len:
      problems.append(
          f"evaluation at {longest} tokens (seq_len {config.data.seq_len} × "
          f"{max(config.eval.length_multipliers)}) runs past the {cfg.pe} table of max_len="
          f"{max_len}: raise model.pe_options max_len or lower eval.length_multipliers")
    if config.data.seq_len > max_len:
      problems.append(f"data.seq_len={config.data.seq_len} is longer than the {cfg.pe} table "
                      f"(max_len={max_len})")
  return problems


SCALINGS = ("linear", "ntk", "dynamic", "yarn", "llama3")


def scaled_pe_options(pe: str, options, scaling: Optional[str], factor: float,
                      original_max_len: int) -> dict:
  """The RoPE options of `options` with `scaling` at `factor` (None: unchanged)."""
  options = dict(pe_options(options))
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
