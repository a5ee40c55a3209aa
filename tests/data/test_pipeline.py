"""grain pipelines: batch layout, packing, determinism, sharding, resuming, evaluation windows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from posjax import data

from data_testing import IntTokenizer, data_config, int_documents

CONFIG = data_config()
LENGTHS = [3, 40, 17, 8, 2, 1, 25, 9, 16, 5, 33, 4]  # some longer than L + 1, many shorter


def _dataset(documents, **kwargs):
  options = dict(split="train", seq_len=8, batch_size=4, tokenizer=IntTokenizer(), seed=0,
                 documents=documents, streaming=False)
  return data.make_lm_dataset(CONFIG, **{**options, **kwargs})


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("streaming", [False, True], ids=["in_memory", "streaming"])
def test_batch_layout_and_packing(streaming):
  docs = int_documents(LENGTHS)
  batches = list(_dataset(docs, shuffle=False, repeat=False, drop_remainder=False,
                          streaming=streaming))
  for batch in batches:
    assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
        "inputs": ((4, 8), "int32"), "targets": ((4, 8), "int32"),
        "positions": ((4, 8), "int32"), "segment_ids": ((4, 8), "int32"),
        "weights": ((4, 8), "float32")}
  inputs, targets, positions, segments, weights = (
      np.concatenate([b[k] for b in batches]) for k in
      ("inputs", "targets", "positions", "segment_ids", "weights"))
  pad = segments == 0
  assert np.all(weights[pad] == 0) and np.all(weights[~pad] == 1)
  assert np.all(inputs[pad] == 0) and np.all(targets[pad] == 0)
  assert segments.max() > 1  # short documents were packed together
  same = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)
  np.testing.assert_array_equal(targets[:, :-1][same], inputs[:, 1:][same])  # next token
  for row_positions, row_segments in zip(positions, segments):
    for s in set(row_segments[row_segments > 0].tolist()):
      np.testing.assert_array_equal(row_positions[row_segments == s],
                                    np.arange(np.sum(row_segments == s)))
  # Every token but each document's first is a target exactly once; inputs never repeat either.
  real = targets[~pad]
  expected = sorted(int(w) for d in docs for w in d.split()[1:])
  assert sorted(real[real != 1].tolist()) == expected
  assert np.sum(real == 1) == len(docs)  # each document's eos
  seen_inputs = inputs[~pad][inputs[~pad] != 1]
  assert len(seen_inputs) == len(set(seen_inputs.tolist()))


@pytest.mark.parametrize("streaming", [False, True], ids=["in_memory", "streaming"])
def test_same_seed_same_batches_different_seed_different_order(streaming):
  docs = int_documents(LENGTHS)
  first = _take(_dataset(docs, seed=3, streaming=streaming), 12)
  _assert_same(first, _take(_dataset(docs, seed=3, streaming=streaming), 12))
  a, b = first[:4], _take(_dataset(docs, seed=4, streaming=streaming), 4)
  assert any(not np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b))


def test_epochs_are_reshuffled_and_complete():
  docs = int_documents([8] * 16)  # with eos, 16 windows of L + 1 = 9 tokens: 4 batches an epoch
  batches = _take(_dataset(docs), 8)
  first = np.concatenate([b["targets"] for b in batches[:4]])
  second = np.concatenate([b["targets"] for b in batches[4:]])
  assert sorted(first[:, 0].tolist()) == sorted(second[:, 0].tolist())
  assert first[:, 0].tolist() != second[:, 0].tolist()


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_processes_see_disjoint_rows_that_make_up_the_whole(drop_remainder):
  # In memory: rows are dealt out after shuffling, and every process gets as many batches.
  docs = int_documents([9] * 20 + LENGTHS)
  def targets(batch_size=4, **kwargs):
    batches = list(_dataset(docs, batch_size=batch_size, repeat=False,
                            drop_remainder=drop_remainder, **kwargs))
    values = np.concatenate([b["targets"][b["weights"] > 0] for b in batches])
    return len(batches), values[values != 1].tolist()
  count, whole = targets()
  count0, part0 = targets(batch_size=2, process_index=0, process_count=2)  # global batch 4
  count1, part1 = targets(batch_size=2, process_index=1, process_count=2)
  assert count0 == count1 == count
  assert not set(part0) & set(part1)
  assert sorted(part0 + part1) == sorted(whole)
  if not drop_remainder:
    assert len(whole) == sum(LENGTHS) - len(LENGTHS) + 20 * 8
  batch = next(_dataset(docs, batch_size=2, process_index=1, process_count=2))
  assert batch["inputs"].shape == (2, 8)
  with pytest.raises(ValueError, match=r"process_index 2 is not in \[0, 2\)"):
    _dataset(docs, batch_size=2, process_index=2, process_count=2)


@pytest.mark.parametrize("streaming", [False, True], ids=["in_memory", "streaming"])
@pytest.mark.parametrize("mlm", [False, True], ids=["lm", "mlm"])
def test_resume_from_state_continues_exactly(streaming, mlm):
  docs = int_documents(LENGTHS)
  iterator = _dataset(docs, streaming=streaming, mlm=mlm)
  _take(iterator, 5)
  state = json.loads(json.dumps(iterator.get_state()))  # what a checkpoint keeps
  expected = _take(iterator, 6)  # crosses an epoch boundary
  resumed = _dataset(docs, streaming=streaming, mlm=mlm)
  resumed.set_state(state)
  _assert_same(_take(resumed, 6), expected)


def test_evaluation_windows_are_non_overlapping_and_cover_the_text():
  docs = int_documents([100, 37, 64, 5])
  rows = list(_dataset(docs, split="validation", seq_len=16, batch_size=3, shuffle=False,
                       repeat=False, drop_remainder=False))
  inputs = np.concatenate([b["inputs"] for b in rows])
  targets = np.concatenate([b["targets"] for b in rows])
  segments = np.concatenate([b["segment_ids"] for b in rows])
  # Full windows first, in document order: each continues the last.
  full = np.all(segments == 1, axis=1)
  assert full[:6].all() and full.sum() == 6 + 2 + 4  # floor(n / 16) per document (n + eos - 1)
  np.testing.assert_array_equal(inputs[1:6, 0], targets[0:5, -1])
  values = targets[segments > 0]
  assert sorted(values[values != 1].tolist()) == sorted(
      int(w) for d in docs for w in d.split()[1:])


def test_evaluation_lengths_score_the_same_validation_text(tfds_dir):
  config = data_config(data_dir=tfds_dir)
  tokenizer = data.get_tokenizer(config)
  texts = data.load_texts(config, "validation")
  total = sum(len(t.encode("utf-8")) for t in texts)  # + eos - the first token, per work
  first_windows = {}
  for seq_len in (32, 64, 256):
    batches = list(data.make_lm_dataset(config, split="validation", seq_len=seq_len,
                                        batch_size=8, tokenizer=tokenizer, shuffle=False,
                                        repeat=False, drop_remainder=False))
    assert sum(float(b["weights"].sum()) for b in batches) == total
    first_windows[seq_len] = tokenizer.decode(batches[0]["inputs"].reshape(-1))
  assert texts[0].startswith(first_windows[256])  # othello, from its first byte
  assert first_windows[256].startswith(first_windows[64])
  assert first_windows[64].startswith(first_windows[32])


def test_token_ids_are_checked_against_the_vocabulary():
  class Small(IntTokenizer):
    vocab_size = 50
  with pytest.raises(ValueError, match="outside the vocabulary of size 50"):
    _dataset(int_documents([60]), tokenizer=Small())


@pytest.mark.parametrize("streaming", [False, True], ids=["in_memory", "streaming"])
def test_mlm_batches_are_masked_and_not_shifted(streaming):
  docs = int_documents([9] * 10 + LENGTHS)
  plain = next(_dataset(docs, seed=1, streaming=streaming))
  batch = next(_dataset(docs, seed=1, mlm=True, mlm_probability=0.5, streaming=streaming))
  again = next(data.make_mlm_dataset(CONFIG, split="train", seq_len=8, batch_size=4,
                                     tokenizer=IntTokenizer(), seed=1, documents=docs,
                                     mlm_probability=0.5, streaming=streaming))
  _assert_same([batch], [again])
  chosen = batch["weights"] > 0
  assert chosen.any() and np.all(batch["segment_ids"][chosen] > 0)
  unchanged = ~chosen
  np.testing.assert_array_equal(batch["inputs"][unchanged], batch["targets"][unchanged])
  # Not shifted: the targets of a packed segment are its own tokens, consecutive ids.
  same = (batch["segment_ids"][:, 1:] == batch["segment_ids"][:, :-1]) & (
      batch["segment_ids"][:, 1:] > 0) & (batch["targets"][:, 1:] != 1)
  np.testing.assert_array_equal(batch["targets"][:, 1:][same], batch["targets"][:, :-1][same] + 1)
  assert not np.array_equal(plain["targets"], batch["targets"])


def test_streaming_processes_see_disjoint_documents_that_make_up_the_whole():
  docs = int_documents([9] * 20 + LENGTHS)
  def targets(**kwargs):
    batches = list(_dataset(docs, batch_size=2, repeat=False, drop_remainder=False,
                            streaming=True, **kwargs))
    values = np.concatenate([b["targets"][b["weights"] > 0] for b in batches])
    return values[values != 1].tolist()
  whole = targets()
  part0 = targets(process_index=0, process_count=2)
  part1 = targets(process_index=1, process_count=2)
  assert not set(part0) & set(part1)
  assert sorted(part0 + part1) == sorted(whole)
  assert len(whole) == sum(LENGTHS) - len(LENGTHS) + 20 * 8


def test_catalog_names_stream_by_default(tfds_dir):
  config = data_config(name="posjax_shakespeare", data_dir=tfds_dir)
  tokenizer = data.ByteTokenizer()
  iterator = data.make_lm_dataset(config, split="validation", seq_len=64, batch_size=4,
                                  tokenizer=tokenizer)
  batch = next(iterator)
  assert batch["inputs"].shape == (4, 64) and batch["weights"].sum() > 0
  assert "parent" in iterator.get_state()  # grain's streaming iterators, not an index


def test_passkey_mixture_replaces_training_rows_deterministically():
  from posjax.data import passkey
  tok = data.ByteTokenizer()
  def batches(fraction, seed=0):
    it = data.make_lm_dataset(data_config(seed=seed), split="train", seq_len=128,
                              batch_size=64, tokenizer=tok, passkey_fraction=fraction)
    return [next(it) for _ in range(4)]
  plain, mixed, again = batches(0.0), batches(0.25), batches(0.25)
  question = tok.encode(passkey.QUESTION)
  prompts = kept = 0
  for p, m, a in zip(plain, mixed, again):
    np.testing.assert_array_equal(m["inputs"], a["inputs"])  # the same seed, the same rows
    for row in range(64):
      if np.array_equal(m["inputs"][row], p["inputs"][row]):
        kept += 1
      else:
        text = m["inputs"][row]
        assert any(np.array_equal(text[i:i + len(question)], question)
                   for i in range(len(text) - len(question) + 1))
        prompts += 1
  assert prompts + kept == 256 and 0.15 < prompts / 256 < 0.35
  with pytest.raises(ValueError, match="not into masked-LM or streamed ones"):
    data.make_lm_dataset(CONFIG, split="train", seq_len=128, batch_size=4,
                         tokenizer=tok, passkey_fraction=0.1, mlm=True)
