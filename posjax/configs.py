"""Loading config files outside the command line (tests, notebooks, sweeps).

Config files live in `configs/` as plain Python files, not a package; `posjax.main` reads them
with `ml_collections.config_flags`, and `load_config` reads them the same way from Python.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from typing import Any

import ml_collections

REPO_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
# The copy of configs/ that a non-editable install carries (setup.py installs it there).
PACKAGED_CONFIGS = pathlib.Path(__file__).resolve().parent / "_configs"


def load_config(spec: str, **overrides: Any) -> ml_collections.ConfigDict:
  """`"path/to/file.py[:arg]"` → the file's `get_config(arg)`, with `{"dotted.key": value}`
  overrides applied (`load_config("configs/lm.py:tiny", **{"train.steps": 3})`).

  A path that does not exist as given is looked up in the installed copy of `configs/`, then in
  the repository's `configs/` folder, so `load_config("lm.py:alibi")` works from any directory,
  installed or in a source checkout.
  """
  path, _, arg = spec.partition(":")
  path = find_config_file(path)
  if not os.path.exists(path):
    raise ValueError(f"config file {path!r} does not exist")
  name = "posjax_config_" + pathlib.Path(path).stem
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for dotted, value in overrides.items():
    set_field(config, dotted, value)
  return config


def find_config_file(path: str) -> str:
  """`path` if it exists, else the config file of that name in the installed copy of `configs/`
  or in the repository's `configs/` folder (if either has it), else `path` unchanged."""
  for folder in (PACKAGED_CONFIGS, REPO_CONFIGS):
    if not os.path.exists(path) and (folder / os.path.basename(path)).exists():
      path = str(folder / os.path.basename(path))
  return path


def with_config_found(argv: list[str]) -> list[str]:
  """`argv` with `--config=FILE[:arg]` pointing at the shipped config file when FILE does not
  exist as given, so `--config=configs/lm.py` works from any directory after an install."""
  out = []
  for arg in argv:
    if arg.startswith("--config="):
      path, sep, rest = arg[len("--config="):].partition(":")
      arg = f"--config={find_config_file(path)}{sep}{rest}"
    out.append(arg)
  return out


def set_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  """`config.a.b = value` for `dotted="a.b"`; a field the config lacks is an error."""
  node = config
  *parents, leaf = dotted.split(".")
  for part in parents:
    if part not in node:
      raise ValueError(f"the config has no field {dotted!r}")
    node = node[part]
  if leaf not in node:
    raise ValueError(f"the config has no field {dotted!r}")
  node[leaf] = value
