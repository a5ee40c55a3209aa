"""The data iterator's position in a checkpoint: one JSON file per process (each process reads
its own shard of the data, so each has its own position), `process_{i}-of-{n}.json`.

Resuming with another number of processes: posjax's index-based pipelines (in memory:
`posjax.data.pipeline` for the embedded corpus and text files, `posjax.data.labelled`) deal the
rows of global batch k round-robin to the processes, so the k-th global batch holds the same rows
whatever their number, and every process's state is the same `{"next_index": k}`. Such a state
carries over to any process count. Any other (a streaming pipeline, where each process reads its
own documents and packs its own rows) is refused with ProcessCountMismatch, which says why.

Why not grain's own `grain.checkpoint.CheckpointHandler` (grain 0.2.18)? Its files have the same
name and hold the same JSON, but it restores only into a live grain iterator (`set_state`, then
`start_prefetch`), while a run restores its checkpoint before it builds the iterator; it knows only
grain iterators (the algorithmic problems' example stream is not one); and it reads only the file
of the current process count, so neither the carry-over above nor a clear refusal fits in it.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from typing import Any, Mapping, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging
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
    if path.exists():
      return _decode_data_state(json.loads(path.read_text()))
    count = jax.process_count()
    written = _written(directory)
    if not written or count in written:
      names = sorted(p.name for files in written.values() for p in files.values())
      raise FileNotFoundError(f"{path} is missing: the checkpoint's data state holds "
                              f"{names or 'no file'}")
    if len(written) > 1:
      raise ValueError(f"the data state in {directory} mixes process counts {sorted(written)}")
    (other, files), = written.items()
    if sorted(files) != list(range(other)):
      raise FileNotFoundError(f"the data state in {directory} lacks processes "
                              f"{sorted(set(range(other)) - set(files))} of {other}")
    states = [_decode_data_state(json.loads(files[i].read_text())) for i in range(other)]
    if not carries_over(states):
      raise ProcessCountMismatch(
          f"the checkpoint's data state was written by {other} process(es) and this run has "
          f"{count}: each process's data iterator stands at its own place in its own part of the "
          f"data ({_brief(states)}), which does not carry over to {count} (it does for the "
          "in-memory pipelines of the embedded corpus, text files and labelled sets, not for "
          f"streamed datasets); resume with {other} process(es)")
    logging.info("data state of %d process(es) resumed by %d: global batch %d, the same rows",
                 other, count, states[0]["next_index"])
    return states[0]

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


def carries_over(states: list[Any]) -> bool:
  """Whether the data states of all the processes of a run say one global batch index alone
  (index-based pipelines; see the module docstring), which any process count can resume."""
  return (all(isinstance(s, dict) and set(s) == {"next_index"} for s in states)
          and len({s["next_index"] for s in states}) == 1)


def _written(directory: epath.Path) -> dict[int, dict[int, epath.Path]]:
  """The data-state files in `directory`: {process count: {process index: path}}."""
  found: dict[int, dict[int, epath.Path]] = {}
  for path in epath.Path(directory).glob("process_*-of-*.json"):
    match = re.fullmatch(r"process_(\d+)-of-(\d+)\.json", path.name)
    if match:
      found.setdefault(int(match[2]), {})[int(match[1])] = path
  return found


def _brief(states: list[Any]) -> str:
  text = json.dumps(states[0], default=str)
  return text if len(text) <= 120 else text[:117] + "..."


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
