"""Document sources: where the text of each split comes from.

`config.data.name` picks one:

- `shakespeare` (default): the embedded corpus through its TFDS builder (`tfds_shakespeare`),
  prepared offline in array_record under `config.data.data_dir` (when set)
  or `tfds_shakespeare.default_data_dir()`. One document per work; splits train / validation /
  test as listed in `posjax.data.shakespeare`.
- `text`: `config.data.path`, a `.txt` file or a folder of them (searched recursively, UTF-8).
  A folder gives one document per file, in sorted path order; the last `max(1, round(n / 10))`
  files are `validation`, the rest `train` (a folder needs at least two files). A single file is
  cut at the first line break after 90% of its characters: the head is `train`, the tail
  `validation`. There is no `test` split.
- anything else: a TFDS catalog name (e.g. `lm1b`), read with `config.data.text_key` from an
  array_record copy under `config.data.data_dir` (or the TFDS default). Preparing one needs the
  network and, for most catalog datasets, TensorFlow; without TensorFlow we stop with an error that
  says how to prepare it elsewhere.

A source is a random-access sequence of `str` documents (`len`, `[i]`).
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
from typing import Mapping, Sequence

SOURCE_NAMES = ("shakespeare", "text")
TEXT_VALIDATION_FRACTION = 0.1


def _unknown_name_error(name: str) -> ValueError:
  hint = ("" if _has_tensorflow() else "; without TensorFlow some catalog datasets (glue, "
          "conll2003, wikiann, ...) are not even registered: pip install -e '.[catalog]'")
  return ValueError(
      f"unknown dataset name {name!r}: use one of {', '.join(SOURCE_NAMES)} (the embedded corpus "
      "or a .txt file/folder in config.data.path), or a TensorFlow Datasets catalog name such as "
      f"lm1b or tiny_shakespeare (see tfds.list_builders()){hint}")


def as_text(value) -> str:
  """A TFDS text feature (bytes) or any value as str."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class _Records(Sequence[str]):
  """Text documents read lazily from a random-access record source."""

  def __init__(self, records, text_key: str):
    self._records, self._text_key = records, text_key

  def __len__(self) -> int:
    return len(self._records)

  def __iter__(self):
    return (self[i] for i in range(len(self)))

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    if not -len(self) <= index < len(self):
      raise IndexError(f"document {index} out of range ({len(self)} documents)")
    index %= len(self)
    return as_text(self._records[index][self._text_key])


def shakespeare_documents(split: str, data_dir: str | None = None) -> list[str]:
  """The works of one split as documents, in the split's (alphabetical) order."""
  from posjax.data import shakespeare, tfds_shakespeare  # tfds imports take a moment
  order = {work: i for i, work in enumerate(shakespeare.split_works(split))}
  source = tfds_shakespeare.data_source(split, data_dir)
  records = [source[i] for i in range(len(source))]
  records.sort(key=lambda r: order[r["work"].decode("utf-8")])
  return [r["text"].decode("utf-8") for r in records]


def text_files(path: str) -> list[pathlib.Path]:
  """The `.txt` files named by `path` (itself, or those under it, sorted)."""
  if not path:
    raise ValueError("config.data.path is empty: name=text needs a .txt file or a folder of them")
  root = pathlib.Path(path).expanduser()
  if root.is_file():
    return [root]
  if not root.is_dir():
    raise ValueError(f"config.data.path={path!r} is neither a file nor a folder")
  files = sorted(p for p in root.rglob("*.txt") if p.is_file())
  if not files:
    raise ValueError(f"no .txt files under config.data.path={path!r}")
  return files


def text_documents(path: str, split: str) -> list[str]:
  """Documents of a `.txt` file or folder for `split` (train or validation), as described above."""
  if split not in ("train", "validation"):
    raise ValueError(f"unknown split {split!r} for name=text: use train or validation")
  files = text_files(path)
  if len(files) == 1 and pathlib.Path(path).expanduser().is_file():
    text = files[0].read_text(encoding="utf-8")
    cut = text.find("\n", math.floor(len(text) * (1 - TEXT_VALIDATION_FRACTION)))
    cut = len(text) if cut < 0 else cut + 1
    head, tail = text[:cut], text[cut:]
    if not head or not tail:
      raise ValueError(f"{files[0]} is too short to hold out a validation tail (it needs a line "
                       f"break after {1 - TEXT_VALIDATION_FRACTION:.0%} of its text)")
    return [head] if split == "train" else [tail]
  if len(files) < 2:
    raise ValueError(f"config.data.path={path!r} holds one .txt file: name=text needs two or more "
                     "files in a folder (split by file), or the path of a single file")
  num_validation = max(1, round(len(files) * TEXT_VALIDATION_FRACTION))
  chosen = files[:-num_validation] if split == "train" else files[-num_validation:]
  return [f.read_text(encoding="utf-8") for f in chosen]


def _has_tensorflow() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


def catalog_source(name: str, split: str, *, data_dir: str | None = None,
                   required: Mapping[str, str] | None = None):
  """`(records, features)` of a TFDS catalog dataset's split, read from array_record (prepared
  here if TensorFlow and the network are available, otherwise a clear error). `required` maps
  config keys to the features they name; a missing one is an error before any preparation."""
  import tensorflow_datasets as tfds
  from posjax.data import tfds_shakespeare  # noqa: F401  (registers posjax_shakespeare)
  try:
    builder = tfds.builder(name, data_dir=data_dir or None, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    raise _unknown_name_error(name) from None
  check_features(name, builder.info.features, **(required or {}))
  how = (f"prepare it where TensorFlow and the network are available with `tfds build {name} "
         f"--file_format=array_record --data_dir=DIR` and point config.data.data_dir at DIR")
  if not builder.is_prepared():
    if not _has_tensorflow():
      raise RuntimeError(
          f"TFDS dataset {name!r} is not prepared under {builder.data_dir} and preparing it needs "
          f"the network and TensorFlow, which is not installed: {how}; or use "
          "name=shakespeare (embedded, offline) or name=text")
    try:
      builder.download_and_prepare()
    except Exception as e:
      raise RuntimeError(f"could not download and prepare TFDS dataset {name!r} (it needs the "
                         f"network): {e}. Otherwise {how}") from e
  try:
    records = builder.as_data_source(split=split)
  except NotImplementedError as e:
    raise RuntimeError(f"TFDS dataset {name!r} under {builder.data_dir} is not in array_record "
                       f"format, which random access needs: {how}") from e
  except (KeyError, ValueError) as e:
    raise ValueError(f"TFDS dataset {name!r} has no split {split!r}: its splits are "
                     f"{', '.join(builder.info.splits)}") from e
  return records, builder.info.features


def check_features(name: str, features, **keys: str) -> None:
  """A clear error when a config key names a feature the TFDS dataset does not have."""
  for config_key, feature in keys.items():
    if feature not in features:
      raise ValueError(f"TFDS dataset {name!r} has no feature {feature!r} (config.data."
                       f"{config_key}): its features are {', '.join(features)}")


def catalog_documents(name: str, split: str, *, text_key: str = "text",
                      data_dir: str | None = None) -> Sequence[str]:
  """A TFDS catalog dataset's split as lazily read text documents (array_record only)."""
  records, _ = catalog_source(name, split, data_dir=data_dir, required={"text_key": text_key})
  return _Records(records, text_key)


def documents(data_config, split: str) -> Sequence[str]:
  """The documents of `split` for `config.data` (a random-access sequence of str)."""
  name = data_config.name
  data_dir = data_config.data_dir or None
  if name == "shakespeare":
    return shakespeare_documents(split, data_dir)
  if name == "text":
    return text_documents(data_config.path, split)
  if not name or not isinstance(name, str):
    raise _unknown_name_error(name)
  return catalog_documents(name, split, text_key=data_config.text_key,
                           data_dir=data_dir)


def load_texts(data_config, split: str) -> list[str]:
  """All documents of `split` as a list of str."""
  return list(documents(data_config, split))
