"""The run directory's record of what was trained: `config.json` and `provenance.json`.

A run writes both before its first step. Everything that later starts from the workdir (resume,
`mode=eval`, `mode=generate`, the studies, `train.init_from`) compares the config it was given
with the record: fields that say *what was trained* (model, data, tokenizer, task, optimizer)
must agree, fields that say *how to run it now* (`RUN_OPTIONS`: evaluation, generation, mesh,
logging and checkpoint intervals) may differ. A difference is an error that lists every differing
field, unless the caller allows it (`allow_changes`: True, or the names of the fields it may
change, e.g. `("model.pe_options",)` to evaluate a RoPE run under a context-extension scaling).

  config.json       the resolved config in force (ml_collections `to_dict`, JSON)
  provenance.json   {"created": {...}, "sessions": [{...}, ...]}: for each start, the time, the
                    command line, posjax/jax/flax versions, git commit, devices and processes,
                    what besides these changes the floats (`numerics`: XLA/JAX environment,
                    JAX flags, host CPU), and the fields changed from the record, if any

On CPU a rerun of a run's command is bit-identical when all of that agrees. With one config,
commit and versions, XLA's CPU threading alone (`XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`
or not) reorders float sums, and training carries the last-bit difference on.
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import json
import os
import pathlib
import platform
import socket
import subprocess
import sys
from typing import Any, Iterable, Optional, Union

import ml_collections

from posjax import configs

CONFIG_FILE = "config.json"
PROVENANCE_FILE = "provenance.json"

# Fields that may differ from the record: how to evaluate, generate, place and log the run, not
# what it trained. A dotted name covers everything under it.
RUN_OPTIONS = ("mode", "eval", "generate", "mesh", "data.num_workers", "train.log_every",
               "train.checkpoint_every", "train.keep_checkpoints")

AllowChanges = Union[bool, Iterable[str]]

# Environment variables (by prefix) and JAX flags that change a run's floats or random numbers.
NUMERIC_ENV_PREFIXES = ("XLA_", "JAX_", "LIBTPU_")
NUMERIC_JAX_FLAGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_threefry_partitionable",
                     "jax_default_prng_impl")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if hasattr(tree, "to_dict"):
    tree = tree.to_dict()
  if isinstance(tree, dict) and tree:
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out
  return {prefix: _normalize(prefix, tree)}


def _normalize(name: str, value: Any) -> Any:
  """Values as JSON holds them (tuples become lists); `pe_options` text parsed, so that
  '{"a": 1}' and '{"a":1}' are the same option."""
  if name.endswith("pe_options") and isinstance(value, str):
    try:
      value = json.loads(value or "{}")
    except json.JSONDecodeError:
      pass
  return json.loads(json.dumps(value, default=str))


def _covered(name: str, prefixes: Iterable[str]) -> bool:
  return any(name == p or name.startswith(p + ".") for p in prefixes)


def _is_neutral(value: Any) -> bool:
  """Off, empty or zero: the value a field added to the configs starts at."""
  return value is None or (isinstance(value, (str, int, float, list, dict)) and not value)


@functools.cache
def _base_config() -> ml_collections.ConfigDict:
  return configs.load_config("lm.py")


@functools.cache
def _base_fields() -> dict[str, Any]:
  return _flatten(_base_config())


def _is_added_default(name: str, value: Any) -> bool:
  """Whether a field a record lacks holds what the record's run did without it: a neutral value,
  or the value the base config (configs/lm.py) declares, e.g. `peft.method="full"`."""
  return _is_neutral(value) or _base_fields().get(name, "<absent>") == value


def differences(recorded: Any, config: Any, *, ignore: Iterable[str] = RUN_OPTIONS) -> list[str]:
  """`"field: recorded → given"` for each training field where the two configs differ.

  A field the record lacks at its neutral value (off, empty or zero), or at the base config's
  value, is no difference: the record predates the field, which posjax adds switched off (a new
  option may only change what a run trains when it is set)."""
  old, new = _flatten(recorded), _flatten(config)
  ignore = tuple(ignore)
  lines = []
  for name in sorted(set(old) | set(new)):
    if _covered(name, ignore) or old.get(name, "<absent>") == new.get(name, "<absent>"):
      continue
    if name not in old and _is_added_default(name, new[name]):
      continue
    lines.append(f"{name}: {json.dumps(old.get(name, '<absent>'))} (run) → "
                 f"{json.dumps(new.get(name, '<absent>'))} (given)")
  return lines


def read_config(workdir: str | os.PathLike) -> Optional[ml_collections.ConfigDict]:
  """The recorded config of the run in `workdir`, or None for a run that has no record."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.exists():
    return None
  try:
    values = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"the run record {path} cannot be read ({e}): restore it from a copy, or "
                     "delete it to run with the config given on the command line") from e
  return ml_collections.ConfigDict(_tuples(values))


def read_run_config(workdir: str | os.PathLike) -> Optional[ml_collections.ConfigDict]:
  """The recorded config to run again from (`Run.from_workdir`), or None without a record: a
  field the base config (configs/lm.py) declares and the record predates reads at its base
  value, what the run had before the field existed (`_is_added_default`)."""
  recorded = read_config(workdir)
  if recorded is not None:
    for name in added_since(recorded, _base_config()):
      _copy_field(_base_config(), recorded, name)
  return recorded


def _tuples(value: Any) -> Any:
  """JSON lists back to tuples, as the config files write sequences (`length_multipliers`)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def check(workdir: str | os.PathLike, config: Any, *,
          allow_changes: AllowChanges = False) -> list[str]:
  """Raise ValueError if `config` trains something other than the run recorded in `workdir`.

  Returns the differences that `allow_changes` let through (empty when the record agrees, or
  when there is no record yet).
  """
  recorded = read_config(workdir)
  if recorded is None:
    return []
  found = differences(recorded, config)
  if allow_changes is True:
    return found
  allowed = tuple(allow_changes or ())
  refused = [line for line in found if not _covered(line.split(":")[0], allowed)]
  if refused:
    raise ValueError(
        f"the config differs from the run recorded in {os.path.join(workdir, CONFIG_FILE)} in "
        f"training fields:\n  - " + "\n  - ".join(refused) + "\nUse the run's own config (with "
        "mode=eval or generate, only --config.eval/generate/mesh options need to be given), "
        "another --workdir, or allow the change explicitly (posjax.main --allow_changes)")
  return found


def for_workdir(workdir: str | os.PathLike, given: Any, *, overrides: Iterable[str] = (),
                allow_changes: AllowChanges = False) -> ml_collections.ConfigDict:
  """The config to evaluate or generate from the run in `workdir`: the recorded one, with the
  `mode` of `given` (the command line's config) and the fields named in `overrides` (those the
  command line set explicitly) taken from `given`; an override of a training field must be
  allowed. Without a record, `given` as it is."""
  recorded = read_config(workdir)
  if recorded is None:
    return given
  config = ml_collections.ConfigDict(recorded.to_dict())
  for name in ("mode", *overrides, *added_since(recorded, given)):
    _copy_field(given, config, name)
  check(workdir, config, allow_changes=allow_changes)
  return config


def added_since(recorded: Any, given: Any) -> list[str]:
  """The fields of `given` that the record lacks (it predates them), at the values the run had
  without them (`_is_added_default`)."""
  old = _flatten(recorded)
  return [name for name, value in _flatten(given).items()
          if name not in old and _is_added_default(name, value)]


def _copy_field(source: Any, target: ml_collections.ConfigDict, dotted: str) -> None:
  *parents, leaf = dotted.split(".")
  src, dst = source, target
  for part in parents:
    if part not in src:
      return
    src = src[part]
    if part not in dst:
      dst[part] = ml_collections.ConfigDict()
    dst = dst[part]
  if leaf in src:
    value = src[leaf]
    dst[leaf] = ml_collections.ConfigDict(value.to_dict()) if hasattr(value, "to_dict") else value


def write(workdir: str | os.PathLike, config: Any, *, changes: Iterable[str] = ()) -> None:
  """Record `config` as the run's and add this start to `provenance.json` (primary process)."""
  import jax  # pylint: disable=g-import-not-at-top  (only the caller knows JAX is set up)
  if jax.process_index() != 0:
    return
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  _write_json(workdir / CONFIG_FILE, values)
  path = workdir / PROVENANCE_FILE
  record = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
  session = dict(provenance(), changes=list(changes))
  record.setdefault("created", session)
  record.setdefault("sessions", []).append(session)
  _write_json(path, record)


def _write_json(path: pathlib.Path, values: Any) -> None:
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(values, indent=2, sort_keys=True, default=str) + "\n",
                 encoding="utf-8")
  os.replace(tmp, path)


def provenance() -> dict[str, Any]:
  """What produced a run: versions, source commit, devices, processes, host and command line."""
  import jax  # pylint: disable=g-import-not-at-top
  versions = {}
  for package in ("posjax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
                  "numpy"):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = None
  devices = jax.devices()
  return {
      "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": [sys.executable] + sys.argv,
      "host": socket.gethostname(),
      "python": platform.python_version(),
      "versions": versions,
      "git": _git_commit(),
      "platform": jax.default_backend(),
      "device_kind": devices[0].device_kind,
      "device_count": jax.device_count(),
      "local_device_count": jax.local_device_count(),
      "process_count": jax.process_count(),
      "numerics": numerics(),
  }


def numerics() -> dict[str, Any]:
  """The environment (`XLA_FLAGS`, `JAX_*`, ...), JAX flags and host CPU that change the floats
  (XLA compiles CPU code for the host's instruction set)."""
  import jax  # pylint: disable=g-import-not-at-top
  return {
      "environment": {k: v for k, v in sorted(os.environ.items())
                      if k.startswith(NUMERIC_ENV_PREFIXES)},
      "jax_flags": {name: getattr(jax.config, name, None) for name in NUMERIC_JAX_FLAGS},
      "host_cpu": _cpu_model(),
  }


def _cpu_model() -> Optional[str]:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      for line in cpuinfo:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or None


def _git_commit() -> Optional[dict[str, Any]]:
  """The commit of the posjax source in use and whether it had local changes (None outside a
  git checkout, e.g. an installed wheel)."""
  source = pathlib.Path(__file__).resolve().parents[2]
  if not (source / ".git").exists():
    return None
  try:
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip()
    status = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--", "posjax"],
                            capture_output=True, text=True, timeout=10, check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return None
  return {"commit": commit, "dirty": bool(status.strip())}
