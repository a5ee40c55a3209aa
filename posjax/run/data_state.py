"""The data iterator's position in a checkpoint: one JSON file per process (each process reads
its own shard of the data, so each has its own position)."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any, Mapping, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath


class ProcessCountMismatch(ValueError):
  """The checkpoint's data state was written by another number of processes."""


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
      written = sorted(p.name for p in epath.Path(directory).glob("process_*.json"))
      raise ProcessCountMismatch(
          f"no data-iterator state for process {jax.process_index()} of {jax.process_count()} "
          f"at {path}: the checkpoint holds {written or 'none'}, written by a different number "
          "of processes; resume with that many processes (each process's data state records "
          "where its own shard of the data stands)")
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
