"""The TFDS builder prepares array_record offline and reads back without TensorFlow."""

from __future__ import annotations

import sys

import tensorflow_datasets as tfds

from posjax import data
from posjax.data import shakespeare, tfds_shakespeare

from data_testing import data_config


def test_prepares_array_record_and_reads_back_without_tensorflow(tfds_dir):
  builder = tfds_shakespeare.PosjaxShakespeare(data_dir=tfds_dir)
  assert builder.is_prepared()
  assert builder.info.file_format.value == "array_record"
  assert {s: builder.info.splits[s].num_examples for s in ("train", "validation", "test")} == {
      "train": 36, "validation": 3, "test": 3}
  sources = builder.as_data_source()
  works = {split: sorted(r["work"].decode() for r in (src[i] for i in range(len(src))))
           for split, src in sources.items()}
  assert works == {s: sorted(w) for s, w in shakespeare.splits().items()}
  assert "tensorflow" not in sys.modules


def test_known_line_by_registered_name(tfds_dir):
  source = tfds.data_source(tfds_shakespeare.NAME, split="train", data_dir=tfds_dir)
  records = {r["work"].decode(): r for r in (source[i] for i in range(len(source)))}
  hamlet = records["hamlet"]
  assert b"To be, or not to be,--that is the question:--" in hamlet["text"]
  genre = tfds_shakespeare.PosjaxShakespeare(data_dir=tfds_dir).info.features["genre"]
  assert genre.int2str(hamlet["genre"]) == "tragedy"
  assert "tensorflow" not in sys.modules


def test_load_texts_in_documented_order(tfds_dir):
  config = data_config(data_dir=tfds_dir)
  texts = data.load_texts(config, "validation")
  assert texts == [shakespeare.texts()[w] for w in shakespeare.VALIDATION_WORKS]
  assert "If music be the food of love, play on," in texts[2]  # twelfth_night
