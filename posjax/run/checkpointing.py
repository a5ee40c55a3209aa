"""Checkpoints with Orbax: train state, data-iterator state and metrics, per step.

Layout under a workdir:

  <workdir>/checkpoints/<step>/state/        the train state (any pytree of arrays, sharded or not)
  <workdir>/checkpoints/<step>/data_state/   the data iterator's state, one JSON file per process
  <workdir>/checkpoints/<step>/metrics/      the metrics given to `save` (used to pick the best)
  <workdir>/checkpoints/<step>/loop_state/   the training loop's own state, JSON (early stopping:
                                             best value and evaluations since), so a resumed run
                                             goes on exactly where the saved one was

Retention is "the last `keep` checkpoints plus the best one by `best_metric`", expressed with
Orbax's preservation policies (`AnyPreservationPolicy([LatestN, BestN])`; tested with
orbax-checkpoint 0.12.8), so one `CheckpointManager` and one directory hold both: the best step is
simply never deleted while it is the best. `best_fn`/`best_mode` are set as well, because Orbax
writes the metrics to disk (and `best_step()` works) only when they are.

When to save is the training loop's decision (every `train.checkpoint_every` steps, the last
step, a preemption), so `save` always writes; Orbax decides only what to keep.

Restoring to resume needs every part a checkpoint should have: one without its data state or loop
state is an error, never a silent restart of the data order. A step that cannot be read is
reported as damaged (with the earlier step to fall back on) only when its files are missing or
unreadable; other failures (another process count, an I/O error) are reported as they are.

Parameters alone, for `train.init_from` and fine-tuning: `posjax.run.init_from`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

from posjax.run.data_state import (DataStateHandler, DataStateRestore, DataStateSave,
                                    ProcessCountMismatch)

STATE = "state"
DATA_STATE = "data_state"
LOOP_STATE = "loop_state"
PARAMS_KEY = "params"


class DamagedCheckpoint(ValueError):
  """A checkpoint step whose files are missing, truncated or unreadable."""


# --------------------------------------------------------------------------- tree comparison

def path_name(path) -> str:
  """A pytree key path as 'a/b/0/kernel', the name checkpoints and reports use."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def _stored_shape(leaf) -> tuple:
  """The shape as Orbax stores it: typed PRNG keys are saved as their key data."""
  dtype = getattr(leaf, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    leaf = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, dtype))
  return tuple(getattr(leaf, "shape", ()) or ())


def flat_shapes(tree) -> dict[str, tuple]:
  """'a/b/0/kernel' -> shape, for arrays, ShapeDtypeStructs and Orbax ArrayMetadata alike."""
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
  return {path_name(path): _stored_shape(leaf)
          for path, leaf in leaves if leaf is not None}


def tree_mismatches(expected, found) -> list[str]:
  """Human-readable differences between two trees' key paths and shapes (empty when they match).

  `expected` is what the model wants, `found` what the checkpoint holds.
  """
  want, have = flat_shapes(expected), flat_shapes(found)
  problems = []
  missing = sorted(set(want) - set(have))
  unexpected = sorted(set(have) - set(want))
  if missing:
    problems.append("missing in the checkpoint: " + ", ".join(missing))
  if unexpected:
    problems.append("unexpected in the checkpoint (not in the model): " + ", ".join(unexpected))
  for key in sorted(set(want) & set(have)):
    if want[key] != have[key]:
      problems.append(f"shape mismatch at {key}: model {want[key]}, checkpoint {have[key]}")
  return problems


def restore_args(abstract_tree):
  """Per-leaf restore arguments: dtype, and sharding where the abstract leaf has one."""
  return ocp.checkpoint_utils.construct_restore_args(abstract_tree)


def _item_tree_metadata(item_dir: epath.Path):
  metadata = ocp.PyTreeCheckpointHandler().metadata(item_dir)
  return getattr(metadata, "tree", metadata)


# --------------------------------------------------------------------------- the checkpointer

class Checkpointer:
  """Saves and restores the train state, data state and metrics of a run under `workdir`.

  Args:
    workdir: the run's directory; checkpoints go to `<workdir>/checkpoints`.
    keep: the most recent checkpoints kept (`train.keep_checkpoints`); None keeps all.
    best_metric: also keep the best checkpoint by this metric name (`train.best_metric`);
      "" or None to disable. A checkpoint saved without this metric never counts as best.
    best_mode: "min" (loss-like) or "max" (accuracy-like).
    async_save: write arrays in a background thread; `wait()` blocks until they are on disk.
  """

  def __init__(self, workdir: str | os.PathLike, *, keep: Optional[int] = 2,
               best_metric: Optional[str] = "eval/loss", best_mode: str = "min",
               async_save: bool = True):
    if best_mode not in ("min", "max"):
      raise ValueError(f"best_mode={best_mode!r}: choose 'min' (loss-like) or 'max'")
    if keep is not None and keep < 1:
      raise ValueError(f"keep={keep}: keep at least 1 checkpoint (or None for all)")
    # Orbax needs absolute paths; a relative workdir (`--workdir=runs/lm`) is resolved here.
    self.workdir = epath.Path(os.path.abspath(os.fspath(workdir)))
    self.directory = self.workdir / "checkpoints"
    self.best_metric = best_metric or None
    self.best_mode = best_mode

    preserve = [policies.LatestN(n=keep)]
    if self.best_metric:
      preserve.append(policies.BestN(get_metric_fn=self._metric_value, reverse=True, n=1,
                                     keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(preserve),
        # Orbax records metrics only when best_fn is set; ranking itself is done by BestN.
        best_fn=self._metric_value if self.best_metric else None,
        best_mode="min",
        enable_async_checkpointing=async_save,
        create=True,
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={STATE: ocp.StandardCheckpointHandler(), DATA_STATE: DataStateHandler(),
                       LOOP_STATE: ocp.JsonCheckpointHandler("loop_state.json")})

  def _metric_value(self, metrics: Mapping[str, Any]) -> float:
    """Lower is better (BestN with reverse=True keeps the smallest); missing or NaN is worst."""
    value = (metrics or {}).get(self.best_metric)
    try:
      value = float(value)
    except (TypeError, ValueError):
      return math.inf
    if math.isnan(value):
      return math.inf
    return value if self.best_mode == "min" else -value

  # ------------------------------------------------------------------ saving

  def save(self, step: int, state: Any, *, data_state: Any = None,
           metrics: Optional[Mapping[str, Any]] = None,
           loop_state: Optional[Mapping[str, Any]] = None) -> bool:
    """Save `state` (and the data iterator's state) at `step`; True if a checkpoint was written.

    `metrics` (scalar values) are stored alongside when they include `best_metric`, which ranks the checkpoint for
    "keep the best". `loop_state` is a JSON-able dict of the training loop's own state, read back
    by `loop_state()`. Saving a step that already exists is a no-op returning False.
    """
    step = int(step)
    if step in self._manager.all_steps():
      logging.info("checkpoint for step %d already exists in %s; not saving again",
                   step, self.directory)
      return False
    items = {STATE: ocp.args.StandardSave(state)}
    if data_state is not None:
      items[DATA_STATE] = DataStateSave(data_state)
    if loop_state is not None:  # a copy: the save may finish in the background
      items[LOOP_STATE] = ocp.args.JsonSave(json.loads(json.dumps(dict(loop_state))))
    scalars = None
    if self.best_metric and metrics and self.best_metric in metrics:
      # Stored only when they can rank this checkpoint: one without the metric is never "best".
      scalars = {k: _to_float(v) for k, v in metrics.items()}
    saved = self._manager.save(step, args=ocp.args.Composite(**items), metrics=scalars,
                               force=True)  # the caller decides when
    if saved:
      logging.info("saving checkpoint for step %d to %s", step, self.directory)
    return saved

  def wait(self) -> None:
    """Block until every pending (async) save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # ------------------------------------------------------------------ queries

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def best_step(self) -> Optional[int]:
    """The best saved step by `best_metric` (the latest if there is no metric to rank by)."""
    scored = [(self._metric_value(self._manager.metrics(s) or {}), s) for s in self.all_steps()]
    scored = [(v, s) for v, s in scored if v != math.inf]
    if not self.best_metric or not scored:
      return self.latest_step()
    return min(scored, key=lambda vs: (vs[0], -vs[1]))[1]

  # ------------------------------------------------------------------ restoring

  def restore(self, abstract_state: Any, step: Optional[int] = None, *,
              to_resume: bool = False) -> tuple[Any, Any]:
    """Restore `(state, data_state)` at `step` (default: the latest).

    `abstract_state` is the pytree to fill: `jax.ShapeDtypeStruct` leaves whose `.sharding` the
    restored arrays get (e.g. `jax.eval_shape` of the init, with the mesh's shardings).
    `to_resume` (training goes on from it) requires the data state and the loop state: a step
    without either is an error, since resuming from it would restart the data order or early
    stopping. Without `to_resume` (evaluation), the data state is not read and is None.
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise ValueError(
            f"no checkpoint to restore in {self.directory}: start from scratch (a fresh "
            "workdir), or point --workdir at the run you want to resume")
    step = int(step)
    if step not in self._manager.all_steps():
      raise ValueError(f"no checkpoint for step {step} in {self.directory}; available steps: "
                       f"{self.all_steps() or 'none'}")
    step_dir = self.directory / str(step)
    _check_tree(abstract_state, step_dir / STATE, what="train state", damaged=self._damaged)
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    if to_resume:
      missing = [part for part in (DATA_STATE, LOOP_STATE) if not (step_dir / part).exists()]
      if missing:
        raise self._damaged(step, f"it has no {' or '.join(p + '/' for p in missing)} (the data "
                            "iterator's position and the loop's early-stopping state); resuming "
                            "from it would silently restart them (a checkpoint written before "
                            "posjax recorded them cannot be resumed)")
      items[DATA_STATE] = DataStateRestore()
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except ProcessCountMismatch:
      raise
    except Exception as e:  # Orbax and tensorstore raise many types
      raise self._classify(step, e) from e
    return restored[STATE], (restored[DATA_STATE] if to_resume else None)

  def loop_state(self, step: Optional[int] = None) -> dict:
    """The `loop_state` saved with `step` (default: the latest); {} when there is no checkpoint
    (a fresh run). A checkpoint without one is refused by `restore(to_resume=True)`."""
    step = self.latest_step() if step is None else int(step)
    if step is None or not (self.directory / str(step) / LOOP_STATE).exists():
      return {}
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(**{LOOP_STATE: ocp.args.JsonRestore()}))
    except Exception as e:
      raise self._classify(step, e) from e
    return dict(restored[LOOP_STATE])

  def _damaged(self, step: int, why: str) -> DamagedCheckpoint:
    earlier = [s for s in self.all_steps() if s < step]
    fallback = (f"To go on, delete {self.directory / str(step)} to resume from step "
                f"{earlier[-1]}, the checkpoint before it" if earlier else
                "It is the only checkpoint: the run must start afresh")
    return DamagedCheckpoint(f"the checkpoint at {self.directory / str(step)} is damaged: {why}. "
                             + fallback)

  def _classify(self, step: int, error: Exception) -> Exception:
    """A damaged step (files missing or unreadable) or a failure to report as it is."""
    if is_damage(error):
      return self._damaged(step, brief_error(error))
    return RuntimeError(f"could not restore the checkpoint at {self.directory / str(step)}: "
                        f"{brief_error(error)}. This does not look like damage to the checkpoint "
                        "(nothing is missing or unreadable), so it is kept: fix the cause and "
                        "rerun")


# Signs, in the messages of Orbax, tensorstore and json, that a checkpoint's files are missing,
# cut short or garbled, rather than unreachable for another reason.
_DAMAGE_SIGNS = ("DATA_LOSS", "NOT_FOUND", "not found", "No such file", "does not exist",
                 "corrupt", "truncated", "Unexpected end", "Expecting value", "Error decoding",
                 "Error reading", "checksum", "Invalid", "invalid")


def is_damage(error: BaseException) -> bool:
  while error is not None:
    if isinstance(error, (FileNotFoundError, json.JSONDecodeError, DamagedCheckpoint)):
      return True
    if isinstance(error, PermissionError):
      return False
    if any(sign in str(error) for sign in _DAMAGE_SIGNS):
      return True
    error = error.__cause__ or error.__context__
  return False


def read_metadata(item_dir: epath.Path, *, what: str):
  """The stored tree's metadata; DamagedCheckpoint when its files are missing or unreadable."""
  try:
    return _item_tree_metadata(item_dir)
  except Exception as e:
    if is_damage(e):
      raise DamagedCheckpoint(f"the {what} metadata at {item_dir} is missing or unreadable "
                              f"({brief_error(e)})") from e
    raise RuntimeError(f"could not read the {what} metadata at {item_dir} "
                       f"({brief_error(e)})") from e


def _check_tree(abstract_tree, item_dir: epath.Path, *, what: str, damaged=None) -> None:
  """Compare key paths and shapes with the checkpoint's metadata; raise ValueError on a mismatch."""
  try:
    stored = read_metadata(item_dir, what=what)
  except DamagedCheckpoint as e:
    if damaged is None:
      raise
    raise damaged(int(item_dir.parent.name), str(e)) from e
  problems = tree_mismatches(abstract_tree, stored)
  if problems:
    raise ValueError(f"the {what} in {item_dir} does not match the model:\n  - "
                     + "\n  - ".join(problems)
                     + "\nUse a checkpoint of the same architecture, or change the model config "
                     "to match it")


def brief_error(error: Exception, limit: int = 300) -> str:
  """The exception's type and first line, cut short (tensorstore errors embed whole specs)."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  text = text if len(text) <= limit else text[:limit] + "..."
  return f"{type(error).__name__}: {text}"


def _to_float(value: Any) -> float:
  try:
    return float(value)
  except (TypeError, ValueError) as e:
    raise ValueError(f"checkpoint metrics must be scalars, got {value!r}") from e
