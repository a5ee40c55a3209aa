"""Text files and folders, TFDS catalog names, and unknown names."""

from __future__ import annotations

import importlib.util

import pytest

from posjax import data
from posjax.data import sources

from data_testing import data_config


def _config(**fields):
  return data_config(**fields)


def test_text_folder_splits_by_file(tmp_path):
  for i in range(12):
    (tmp_path / f"doc{i:02d}.txt").write_text(f"document {i} ünïcode\n", encoding="utf-8")
  (tmp_path / "notes.md").write_text("ignored")
  config = _config(name="text", path=str(tmp_path))
  train, validation = data.load_texts(config, "train"), data.load_texts(config, "validation")
  assert len(train) == 11 and validation == ["document 11 ünïcode\n"]
  assert train[0] == "document 0 ünïcode\n"
  with pytest.raises(ValueError, match="train or validation"):
    data.load_texts(config, "test")
  tokenizer = data.get_tokenizer(config)
  batch = next(data.make_lm_dataset(config, split="train", seq_len=16, batch_size=2,
                                    tokenizer=tokenizer))
  assert batch["inputs"].shape == (2, 16)


def test_single_text_file_holds_out_its_tail(tmp_path):
  path = tmp_path / "one.txt"
  lines = [f"line {i}\n" for i in range(100)]
  path.write_text("".join(lines))
  config = _config(name="text", path=str(path))
  (train,), (validation,) = data.load_texts(config, "train"), data.load_texts(config, "validation")
  assert train + validation == "".join(lines)
  assert validation.startswith("line ") and 0.05 < len(validation) / len(train + validation) < 0.15


def test_text_errors(tmp_path):
  with pytest.raises(ValueError, match="config.data.path is empty"):
    data.load_texts(_config(name="text"), "train")
  with pytest.raises(ValueError, match="no .txt files"):
    data.load_texts(_config(name="text", path=str(tmp_path)), "train")


def test_unknown_name_lists_the_choices(tmp_path):
  with pytest.raises(ValueError, match=r"unknown dataset name 'no_such_corpus'.*shakespeare, text"):
    data.load_texts(_config(name="no_such_corpus", data_dir=str(tmp_path)), "train")


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                    reason="with TensorFlow installed, preparing would try the network")
def test_catalog_dataset_without_tensorflow_says_so(tmp_path):
  config = _config(name="lm1b", data_dir=str(tmp_path))
  with pytest.raises(RuntimeError, match="not prepared.*network and TensorFlow.*tfds build lm1b"):
    data.load_texts(config, "train")
  with pytest.raises(ValueError, match="no feature 'body'.*text"):
    data.load_texts(_config(name="lm1b", text_key="body", data_dir=str(tmp_path)), "train")


def test_catalog_dataset_reads_prepared_array_record(tfds_dir):
  # Any prepared array_record TFDS dataset is read by name, here the embedded one.
  config = _config(name="posjax_shakespeare", data_dir=tfds_dir)
  texts = sources.documents(config, "test")
  assert len(texts) == 3 and all(isinstance(t, str) and len(t) > 100_000 for t in texts)
