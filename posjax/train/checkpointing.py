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

`restore_params` loads only the parameters of a checkpoint (`train.init_from`, fine-tuning) and
checks the parameter tree against the model's before reading any array.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import signal
import threading
from typing import Any, Callable, Mapping, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

STATE = "state"
DATA_STATE = "data_state"
LOOP_STATE = "loop_state"
PARAMS_KEY = "params"


# --------------------------------------------------------------------------- data-iterator state

class DataStateHandler(ocp.CheckpointHandler):
  """Stores a data iterator's state as JSON, one file per process (each host has its own shard).

  Accepts what grain's iterators return from `get_state()`: bytes (`DataLoader`, JSON text), a
  str, or a JSON-able dict (`grain.DatasetIterator`); `restore` gives back the same type.
  """

  def save(self, directory: epath.Path, args: "DataStateSave"):
    directory.mkdir(parents=True, exist_ok=True)
    _data_state_file(directory).write_text(json.dumps(_encode_data_state(args.state)))

  def restore(self, directory: epath.Path, args: Optional["DataStateRestore"] = None):
    del args
    path = _data_state_file(directory)
    if not path.exists():
      raise FileNotFoundError(
          f"no data-iterator state for process {jax.process_index()} of {jax.process_count()} "
          f"at {path}: the checkpoint was written with a different number of processes")
    return _decode_data_state(json.loads(path.read_text()))

  def metadata(self, directory: epath.Path):
    del directory
    return None

  def finalize(self, directory: epath.Path):
    del directory

  def close(self):
    pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass


def _data_state_file(directory: epath.Path) -> epath.Path:
  return epath.Path(directory) / f"process_{jax.process_index()}-of-{jax.process_count()}.json"


def _encode_data_state(state: Any) -> dict:
  if isinstance(state, (bytes, bytearray)):
    try:
      return {"type": "bytes", "value": bytes(state).decode("utf-8")}
    except UnicodeDecodeError:
      return {"type": "bytes_base64", "value": base64.b64encode(bytes(state)).decode("ascii")}
  if isinstance(state, str):
    return {"type": "str", "value": state}
  try:
    json.dumps(state)
  except (TypeError, ValueError) as e:
    raise ValueError(f"data_state must be bytes, str or a JSON-serializable dict (grain's "
                     f"iterator get_state()); got {type(state).__name__}: {e}") from e
  return {"type": "json", "value": state}


def _decode_data_state(record: Mapping[str, Any]) -> Any:
  kind, value = record["type"], record["value"]
  if kind == "bytes":
    return value.encode("utf-8")
  if kind == "bytes_base64":
    return base64.b64decode(value)
  return value


# --------------------------------------------------------------------------- tree comparison

def key_name(key) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _stored_shape(leaf) -> tuple:
  """The shape as Orbax stores it: typed PRNG keys are saved as their key data."""
  dtype = getattr(leaf, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    leaf = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, dtype))
  return tuple(getattr(leaf, "shape", ()) or ())


def _flat_shapes(tree) -> dict[str, tuple]:
  """'a/b/0/kernel' -> shape, for arrays, ShapeDtypeStructs and Orbax ArrayMetadata alike."""
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
  return {"/".join(key_name(k) for k in path): _stored_shape(leaf)
          for path, leaf in leaves if leaf is not None}


def tree_mismatches(expected, found) -> list[str]:
  """Human-readable differences between two trees' key paths and shapes (empty when they match).

  `expected` is what the model wants, `found` what the checkpoint holds.
  """
  want, have = _flat_shapes(expected), _flat_shapes(found)
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


def _restore_args(abstract_tree):
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
    save_every: with `force=False`, `save` only writes on multiples of this
      (`train.checkpoint_every`); None or 0 writes whenever asked.
    async_save: write arrays in a background thread; `wait()` blocks until they are on disk.
  """

  def __init__(self, workdir: str | os.PathLike, *, keep: Optional[int] = 2,
               best_metric: Optional[str] = "eval/loss", best_mode: str = "min",
               save_every: Optional[int] = None, async_save: bool = True):
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
        # Only multiples of save_every (or force=True, or a preemption Orbax detects itself);
        # no "first save whatever the step" (Orbax's default InitialSavePolicy).
        save_decision_policy=policies.AnySavePolicy([
            policies.FixedIntervalPolicy(save_every or 1),
            policies.PreemptionCheckpointingPolicy()]),
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
           loop_state: Optional[Mapping[str, Any]] = None, force: bool = False) -> bool:
    """Save `state` (and the data iterator's state) at `step`; True if a checkpoint was written.

    Without `force`, only steps that are multiples of `save_every` are written. `metrics` (scalar
    values) are stored alongside when they include `best_metric`, which ranks the checkpoint for
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
                               force=force)
    if saved:
      logging.info("saving checkpoint for step %d to %s", step, self.directory)
    return saved

  def should_save(self, step: int) -> bool:
    return self._manager.should_save(int(step))

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

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> tuple[Any, Any]:
    """Restore `(state, data_state)` at `step` (default: the latest).

    `abstract_state` is the pytree to fill: `jax.ShapeDtypeStruct` leaves whose `.sharding` the
    restored arrays get (e.g. `jax.eval_shape` of the init, with the mesh's shardings). The data
    state is None when the checkpoint holds none.
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
    _check_tree(abstract_state, step_dir / STATE, what="train state")
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    has_data = (step_dir / DATA_STATE).exists()
    if has_data:
      items[DATA_STATE] = DataStateRestore()
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # Orbax raises many types for damaged files.
      raise ValueError(f"could not read the checkpoint at {step_dir} ({_brief(e)}). "
                       "It may be truncated or corrupt: delete that step directory to resume "
                       "from an earlier checkpoint") from e
    return restored[STATE], (restored[DATA_STATE] if has_data else None)

  def loop_state(self, step: Optional[int] = None) -> dict:
    """The `loop_state` saved with `step` (default: the latest); {} when there is none (no such
    checkpoint, or one saved without it)."""
    step = self.latest_step() if step is None else int(step)
    if step is None or not (self.directory / str(step) / LOOP_STATE).exists():
      return {}
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(**{LOOP_STATE: ocp.args.JsonRestore()}))
    except Exception as e:  # a damaged file: as in `restore`
      raise ValueError(f"could not read the loop state at {self.directory / str(step)} "
                       f"({_brief(e)}); delete that step directory to resume from an earlier "
                       "checkpoint") from e
    return dict(restored[LOOP_STATE])


def _read_metadata(item_dir: epath.Path, *, what: str):
  """The stored tree's metadata; a checkpoint that cannot be read is a clear ValueError."""
  try:
    return _item_tree_metadata(item_dir)
  except Exception as e:
    raise ValueError(f"could not read the {what} metadata at {item_dir} "
                     f"({_brief(e)}). The checkpoint may be truncated or corrupt: "
                     "delete it, or pick another step") from e


def _check_tree(abstract_tree, item_dir: epath.Path, *, what: str) -> None:
  """Compare key paths and shapes with the checkpoint's metadata; raise ValueError on a mismatch."""
  stored = _read_metadata(item_dir, what=what)
  problems = tree_mismatches(abstract_tree, stored)
  if problems:
    raise ValueError(f"the {what} in {item_dir} does not match the model:\n  - "
                     + "\n  - ".join(problems)
                     + "\nUse a checkpoint of the same architecture, or change the model config "
                     "to match it")


def _brief(error: Exception, limit: int = 300) -> str:
  """The exception's type and first line, cut short (tensorstore errors embed whole specs)."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  text = text if len(text) <= limit else text[:limit] + "..."
  return f"{type(error).__name__}: {text}"


def _to_float(value: Any) -> float:
  try:
    return float(value)
  except (TypeError, ValueError) as e:
    raise ValueError(f"checkpoint metrics must be scalars, got {value!r}") from e


# --------------------------------------------------------------------------- init_from

def resolve_checkpoint(path: str | os.PathLike) -> tuple[epath.Path, int]:
  """The step directory and step for `path`: a workdir, its `checkpoints` dir, or one step dir.

  A workdir or checkpoints dir resolves to its latest finished step.
  """
  path = epath.Path(os.path.abspath(os.fspath(path)))
  if not path.exists():
    raise ValueError(f"checkpoint path {path} does not exist: give a workdir, its checkpoints "
                     "directory, or one step directory inside it")
  if (path / STATE).is_dir() and path.name.isdigit():
    return path, int(path.name)
  root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  steps = sorted(int(p.name) for p in root.iterdir()
                 if p.name.isdigit() and p.is_dir() and (p / STATE).is_dir())
  if not steps:
    raise ValueError(f"no finished checkpoint under {path}: expected <step>/{STATE} directories "
                     f"(in {root}); give a workdir, its checkpoints directory, or a step "
                     "directory")
  return root / str(steps[-1]), steps[-1]


def restore_params(path: str | os.PathLike, abstract_params: Any, *,
                   key: str = PARAMS_KEY) -> Any:
  """Only the parameters (`state[key]`) of the checkpoint at `path`, for `train.init_from`.

  `path` is a workdir, its checkpoints directory, or one step directory (the latest step is
  taken for the first two, and logged). The parameter tree is checked against `abstract_params`
  (ShapeDtypeStructs, with shardings to restore onto) from the metadata alone, so a mismatch
  raises ValueError naming the missing, unexpected and mis-shaped parameters before any array is
  read or anything is compiled.
  """
  item_dir, stored = _stored_params(path, key)
  problems = tree_mismatches(abstract_params, stored)
  if problems:
    raise ValueError(f"init_from={path}: the parameters in {item_dir} do not fit the model:\n  - "
                     + "\n  - ".join(problems)
                     + "\nUse a checkpoint of the same architecture (or change the model config)")
  return _restore_part(item_dir, key, abstract_params)


def _stored_params(path: str | os.PathLike, key: str) -> tuple[epath.Path, Any]:
  """`(item dir, metadata tree of state[key])` of the checkpoint at `path` (a workdir, its
  checkpoints directory or one step; the latest step for the first two, logged)."""
  step_dir, step = resolve_checkpoint(path)
  item_dir = step_dir / STATE
  logging.info("init_from: loading parameters from %s (step %d)", step_dir, step)
  stored = _read_metadata(item_dir, what="checkpoint")
  if not isinstance(stored, Mapping) or key not in stored:
    found = sorted(stored) if isinstance(stored, Mapping) else type(stored).__name__
    raise ValueError(f"the checkpoint at {item_dir} has no {key!r} entry (top-level keys: "
                     f"{found}); init_from needs a train-state checkpoint written by posjax")
  return item_dir, stored[key]


def _restore_part(item_dir: epath.Path, key: str, abstract_tree: Any) -> Any:
  """`state[key]` restored onto `abstract_tree`, which may hold only part of the stored tree."""
  item = {key: abstract_tree}
  try:
    restored = ocp.PyTreeCheckpointer().restore(
        item_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=_restore_args(item),
                                              partial_restore=True))
  except Exception as e:
    raise ValueError(f"could not read the parameters at {item_dir} ({_brief(e)}); "
                     "the checkpoint may be truncated or corrupt") from e
  return restored[key]


def _subtree(stored, wanted: dict[str, Any], prefix: str = ""):
  """The part of the stored metadata tree whose leaves are in `wanted` (by path), as nested dicts
  with the stored keys, each leaf replaced by `wanted[path]`; None if nothing is wanted."""
  if isinstance(stored, Mapping):
    out = {}
    for k, v in stored.items():
      sub = _subtree(v, wanted, f"{prefix}/{k}" if prefix else str(k))
      if sub is not None:
        out[k] = sub
    return out or None
  return wanted.get(prefix)


def restore_pretrained(path: str | os.PathLike, abstract_params: Any, *,
                       source_path: Callable[[tuple[str, ...]], tuple[str, ...]] = tuple,
                       key: str = PARAMS_KEY) -> tuple[dict[str, Any], list[str], list[str]]:
  """The parameters of a model that a checkpoint of a *different* model holds (fine-tuning).

  Each parameter of `abstract_params` (a pure-dict tree of ShapeDtypeStructs with shardings) is
  looked up in the checkpoint at `source_path(its path)`: a masked-LM run's encoder fills a
  classifier's encoder; the head, and any module the checkpoint lacks, stay as initialised.

  Returns `(loaded, fresh, unused)`: `{model path: array}` of what was read, the model paths left
  as initialised, and the checkpoint paths nothing asked for (e.g. the MLM head). Raises
  ValueError, before reading any array, when a shape differs or nothing matches at all.
  """
  item_dir, stored = _stored_params(path, key)
  have = _flat_shapes(stored)
  leaves = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  wanted, sources, fresh, problems = {}, {}, [], []
  for keys, leaf in leaves:
    names = tuple(key_name(k) for k in keys)
    model_path, source = "/".join(names), "/".join(source_path(names))
    if source not in have:
      fresh.append(model_path)
    elif have[source] != tuple(leaf.shape):
      problems.append(f"{source}: model {tuple(leaf.shape)}, checkpoint {have[source]}")
    else:
      wanted[source], sources[source] = leaf, model_path
  if problems:
    raise ValueError(f"init_from={path}: shapes differ between the model and {item_dir}:\n  - "
                     + "\n  - ".join(problems) + "\nPretrain with the same model config "
                     "(dim, layers, heads, positional scheme and its options)")
  if not wanted:
    raise ValueError(f"init_from={path}: no parameter of the model is in {item_dir} (it holds "
                     f"{', '.join(sorted(have)[:5])}, ...); is it a checkpoint of this model "
                     "family's backbone?")
  restored = _restore_part(item_dir, key, _subtree(stored, wanted))
  flat = jax.tree_util.tree_flatten_with_path(restored)[0]
  loaded = {sources["/".join(key_name(k) for k in keys)]: value for keys, value in flat}
  unused = sorted(set(have) - set(wanted))
  return loaded, fresh, unused


# --------------------------------------------------------------------------- preemption

def install_preemption_handler(signals=(signal.SIGTERM,)) -> Callable[..., bool]:
  """Make SIGTERM (by default) set a flag instead of killing the process; returns `is_requested`.

  The training loop polls `is_requested(step)` once per step, and when it is True saves a
  checkpoint (`force=True`), waits for it and exits cleanly. A second signal is not swallowed:
  the handler that was there before is put back after the first one, so a repeated SIGTERM still
  kills; `is_requested.uninstall()` puts it back too (call it when the loop ends). Installing
  again (a second `train()` in one process) replaces the first handler rather than stacking.

  With several processes, pass the step: the answer then comes from
  `jax.experimental.multihost_utils.reached_preemption_sync_point`, which is True on every host
  at the same step once any host was told to stop (JAX's preemption service, started by
  `jax.distributed.initialize`), so all hosts save the same step; without that service each host
  falls back to its own flag. Install it from the main thread (Python's rule for signal handlers).
  """
  requested = threading.Event()
  previous = {}

  def handler(signum, frame):
    del frame
    logging.warning("received signal %d: will checkpoint and stop at the next step", signum)
    requested.set()
    signal.signal(signum, previous[signum])

  for sig in signals:
    current = signal.getsignal(sig)
    # Not stacking on an earlier handler of ours; None (set outside Python) means the default.
    current = getattr(current, "_posjax_previous", current)
    previous[sig] = signal.SIG_DFL if current is None else current
    handler._posjax_previous = previous[sig]
    signal.signal(sig, handler)

  def is_requested(step: Optional[int] = None) -> bool:
    if step is not None and jax.process_count() > 1:
      # Hosts must agree on the step at which they all save, or the collective save hangs:
      # trust the synchronized answer, and this host's own flag only without the service.
      try:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        return bool(multihost_utils.reached_preemption_sync_point(int(step)))
      except RuntimeError:  # no preemption service (jax.distributed not initialized)
        pass
    return requested.is_set()

  def uninstall() -> None:
    for sig, old in previous.items():
      if signal.getsignal(sig) is handler:
        signal.signal(sig, old)

  is_requested.uninstall = uninstall
  return is_requested
