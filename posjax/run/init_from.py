"""Parameters from another run's checkpoint: `train.init_from`, fine-tuning, generation.

`restore_params` loads only the parameters of a checkpoint (the same model) and checks the
parameter tree against the model's before reading any array; `restore_pretrained` fills the
parameters a *different* model shares with the checkpoint (a masked-LM encoder into a
classifier), by path.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from posjax.run.checkpointing import (PARAMS_KEY, STATE, DamagedCheckpoint, brief_error,
                                      flat_shapes, is_damage, path_name, read_metadata,
                                      restore_args, tree_mismatches)



def source_path(init_from: str, seed: int) -> str:
  """`train.init_from` with `{seed}` replaced by the run's seed, so that one config (and one
  study command over `--seeds`) starts each seed from its own run, e.g. `runs/base/seed_{seed}`;
  the run records the template, and its log the path taken."""
  if "{" not in init_from and "}" not in init_from:
    return init_from
  try:
    return init_from.format(seed=int(seed))
  except (KeyError, IndexError, ValueError) as e:
    raise ValueError(f"train.init_from={init_from!r}: the only placeholder it may hold is "
                     f"{{seed}} (the run's seed), got {e!r}") from None


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
  stored = read_metadata(item_dir, what="checkpoint")
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
        item_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args(item),
                                              partial_restore=True))
  except Exception as e:
    if is_damage(e):
      raise DamagedCheckpoint(f"the parameters at {item_dir} are missing or unreadable "
                              f"({brief_error(e)}): use another step of that run") from e
    raise RuntimeError(f"could not read the parameters at {item_dir} ({brief_error(e)})") from e
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
  have = flat_shapes(stored)
  leaves = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  wanted, sources, fresh, problems = {}, {}, [], []
  for keys, leaf in leaves:
    names = tuple(path_name(keys).split("/"))
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
  loaded = {sources[path_name(keys)]: value for keys, value in flat}
  unused = sorted(set(have) - set(wanted))
  return loaded, fresh, unused


