"""A trained run ready to score: its parameters, and a jitted scorer of token windows.

`load_run(workdir)` restores a run's latest checkpoint as it was trained (see
`posjax.run.record`); `make_scorer(run, ...)` returns a `Scorer` that gives each target's loss
and argmax prediction for windows of any length, with the model rebuilt under options that add
no parameters (an attention backend, a RoPE scaling). The studies (`extrapolation`, `passkey`,
`context_extension`) score through it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental.multihost_utils import process_allgather

from posjax import encodings, models
from posjax.run import checkpointing, sharding, steps
from posjax.run.experiment import Run
from posjax.run.record import AllowChanges


@dataclasses.dataclass
class RunModel:
  """A trained run ready to score: its `Run`, parameters and other model state."""
  run: Run
  params: Any               # pure dict of parameter arrays (sharded on run.mesh)
  rest: Any                 # pure dict of the model's other state
  step: int

  @property
  def config(self):
    return self.run.config

  @property
  def cfg(self) -> models.TransformerConfig:
    return self.run.cfg

  @property
  def tokenizer(self):
    return self.run.tokenizer

  @property
  def train_len(self) -> int:
    return int(self.config.data.seq_len)

  @property
  def name(self) -> str:
    return self.cfg.pe


def load_run(workdir: str, config=None, *, step: Optional[int] = None, state=None,
             run: Optional[Run] = None, allow_changes: AllowChanges = False) -> RunModel:
  """The run in `workdir` at checkpoint `step` (default: the latest), as it was trained.

  Without `config`, the run's recorded config; a `config` must agree with the record in its
  training fields (see `posjax.run.record`; `allow_changes` names those that may differ). Pass
  `state` (e.g. just returned by `posjax.train.loop.train`) to skip restoring, and `run` to reuse
  a `Run`. Raises `ValueError` when the workdir holds no checkpoint.
  """
  if run is None:
    run = (Run.from_workdir(workdir, allow_changes=allow_changes) if config is None
           else Run(config, workdir, allow_changes=allow_changes))
  if run.config.model.family != "decoder":
    raise ValueError(f"length extrapolation scores next-token loss: it needs a decoder run, not "
                     f"model.family={run.config.model.family!r}")
  if state is None:
    if run.checkpointer.latest_step() is None:
      raise ValueError(f"{workdir} has no checkpoint to evaluate: train the run first "
                       f"(python -m posjax.main --config=... --workdir={workdir})")
    state, _ = run.restore(step)
  return RunModel(run, state.params, state.rest, int(state.step))


def max_positions(cfg: models.TransformerConfig) -> Optional[int]:
  """The longest input the scheme can read (`max_len` of a position table), or None if any."""
  defaults = encodings.get(cfg.pe).defaults
  if "max_len" not in defaults:
    return None
  return int(cfg.pe_options.get("max_len", defaults["max_len"]))


class Scorer:
  """Per-token cross-entropy and argmax of a model on contiguous windows.

  `__call__(inputs_NW, targets_NW)` scores N windows of W tokens at positions 0..W-1 (one
  segment each), in batches of rows that hold about `tokens_per_batch` tokens (a multiple of
  `shards`, the data-parallel ways; the last batch is padded with empty rows). Returns numpy
  `(xent_NW float32, prediction_NW int32)`.
  """

  def __init__(self, step_fn: Callable[[dict], dict], *, tokens_per_batch: int = 4096,
               shards: int = 1, place: Optional[Callable[[dict], dict]] = None):
    self._step_fn, self._place = step_fn, place or (lambda b: b)
    self.tokens_per_batch, self.shards = int(tokens_per_batch), int(shards)

  @classmethod
  def from_logits_fn(cls, logits_fn: Callable[[np.ndarray], np.ndarray], **kwargs) -> "Scorer":
    """A scorer of any `logits_fn(inputs_BW) -> logits_BWV` (tests, fake or foreign models)."""

    def step_fn(batch):
      logits = np.asarray(logits_fn(batch["inputs"]), np.float64)
      log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
      picked = np.take_along_axis(logits, batch["targets"][..., None], -1)[..., 0]
      return {"xent": (log_z - picked).astype(np.float32),
              "prediction": logits.argmax(-1).astype(np.int32)}

    return cls(step_fn, **kwargs)

  def rows_for(self, window: int) -> int:
    rows = max(1, self.tokens_per_batch // window) // self.shards * self.shards
    return max(self.shards, rows)

  def __call__(self, inputs_NW, targets_NW) -> tuple[np.ndarray, np.ndarray]:
    inputs_NW, targets_NW = np.asarray(inputs_NW, np.int32), np.asarray(targets_NW, np.int32)
    num, window = inputs_NW.shape
    rows = self.rows_for(window)
    xents, predictions = [], []
    for start in range(0, num, rows):
      chunk = slice(start, min(start + rows, num))
      n = chunk.stop - chunk.start
      pad = [(0, rows - n), (0, 0)]
      batch = {"inputs": np.pad(inputs_NW[chunk], pad),
               "targets": np.pad(targets_NW[chunk], pad),
               "positions": np.broadcast_to(np.arange(window, dtype=np.int32), (rows, window)),
               "segment_ids": np.pad(np.ones((n, window), np.int32), pad)}
      out = jax.device_get(self._step_fn(self._place(batch)))
      xents.append(np.asarray(out["xent"])[:n])
      predictions.append(np.asarray(out["prediction"])[:n])
    return np.concatenate(xents), np.concatenate(predictions)


def make_scorer(run: RunModel, *, attention_backend: Optional[str] = "chunked",
                tokens_per_batch: Optional[int] = None, **cfg_changes) -> Scorer:
  """A `Scorer` of the run's parameters in a model rebuilt with `cfg_changes`.

  `cfg_changes` are `TransformerConfig` fields that leave the parameters unchanged (e.g.
  `pe_options` with a RoPE scaling). `attention_backend` (default `chunked`, memory-safe at any
  length; None keeps the run's) replaces the run's backend. `tokens_per_batch` defaults to
  `eval.batch_size × data.seq_len`, so long windows go a few rows at a time. With several
  processes, every process scores the same windows: each feeds its share of every batch
  (`sharding.batch_share`) and gets back the whole batch's scores.
  """
  if attention_backend is not None:
    cfg_changes["attention_backend"] = attention_backend
  cfg = run.cfg.replace(**cfg_changes)
  seed = run.config.seed
  _, eval_graphdef, abstract_params, _ = steps.split_model(
      nnx.eval_shape(lambda: models.build(run.run.family, cfg, seed=seed)))
  mismatches = checkpointing.tree_mismatches(nnx.to_pure_dict(abstract_params), run.params)
  if mismatches:
    raise ValueError(f"the model rebuilt with {cfg_changes} does not take the run's parameters: "
                     f"{mismatches}; change only options that add no parameters")

  @jax.jit
  def step_fn(params, rest, batch):
    logits, _ = steps.forward(eval_graphdef, params, rest, batch)
    xent = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                           batch["targets"])
    return {"xent": xent, "prediction": jnp.argmax(logits, axis=-1).astype(jnp.int32)}

  mesh = run.run.mesh
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  share, shares = sharding.batch_share(mesh)
  if tokens_per_batch is None:
    tokens_per_batch = run.config.eval.batch_size * run.train_len

  def place(batch):  # this process's rows of the global batch
    rows = len(batch["inputs"]) // shares
    return sharding.global_batch({k: v[share * rows:(share + 1) * rows] for k, v in batch.items()},
                                 mesh)

  def score(batch):
    out = step_fn(run.params, run.rest, batch)
    return process_allgather(out, tiled=True) if jax.process_count() > 1 else out

  return Scorer(score, tokens_per_batch=tokens_per_batch, shards=shards, place=place)
