"""Algorithmic problem generators against hand-worked answers; encodings weight exactly the outputs.

Hand cases follow the examples of Delétang et al. 2023 (the tasks of Ruoss et al. 2023).
"""

from __future__ import annotations

import numpy as np
import pytest

from posjax.data import algorithmic as T


def solved(name: str, text: str) -> str:
  return T.text(T.solve(name, T.tokens(text)))


@pytest.mark.parametrize("name, question, answer", [
    ("copy", "0110", "0110"),
    ("reverse", "001", "100"),
    ("reverse", "0111010", "0101110"),
    ("duplicate", "011", "011011"),
    ("parity", "0110", "0"),
    ("parity", "0111", "1"),
    ("parity", "1", "1"),
    ("parity", "000", "0"),
    # little-endian: 4 + 22 = 26 = 01011; then EOS, then 0s to input length + 1
    ("binary_addition", "001+01101", "01011$0000"),
    ("binary_addition", "1001+000001", "100101$00000"),  # 9 + 32 = 41
    ("binary_addition", "1+1", "01$0"),  # 1 + 1 = 2
    ("binary_addition", "11", "11$"),  # no '+' below length 3: the number itself
    ("binary_addition", "0", "0$"),
    ("bucket_sort", "4201302", "0012234"),
    ("missing_duplicate", "01100?10", "1"),   # 0110 twice; the hidden symbol is 1
    ("missing_duplicate", "?1100110", "0"),   # hidden in the first copy
    ("missing_duplicate", "1011?1.", "0"),    # odd length: 101 twice and an EMPTY filler
    ("missing_duplicate", "1", "1"),
    ("modular_arithmetic", "1+2*3", "2"),     # 7 mod 5
    ("modular_arithmetic", "1-1-1", "4"),     # -1 mod 5
    ("modular_arithmetic", "0*1+4*3-2", "0"),  # 10 mod 5
    ("modular_arithmetic", "3*4*4-1.", "2"),  # 47 mod 5; EMPTY filler of an even length
    ("modular_arithmetic", "4", "4"),
])
def test_hand_worked_answers(name, question, answer):
  assert solved(name, question) == answer


@pytest.mark.parametrize("name", list(T.PROBLEMS))
def test_generated_examples_are_right_and_have_their_lengths(name):
  rng = np.random.default_rng(0)
  for length in list(range(1, 14)) + [41, 100, 500]:
    for _ in range(3):
      x, y = T.get(name)(rng, length)
      assert x.dtype == y.dtype == np.int32
      assert len(x) == length and len(y) == T.output_length(name, length)
      np.testing.assert_array_equal(y, T.solve(name, x))
      assert np.all((x > T.SEP) & (x < T.VOCAB_SIZE)) and np.all((y > T.BLANK)
                                                                  & (y < T.VOCAB_SIZE))


def test_generators_follow_their_definitions():
  rng = np.random.default_rng(1)
  for _ in range(20):
    x, y = T.reverse(rng, 9)
    np.testing.assert_array_equal(y, x[::-1])
    x, y = T.bucket_sort(rng, 30)
    assert np.all(np.diff(y) >= 0) and sorted(x.tolist()) == y.tolist()
    x, y = T.missing_duplicate(rng, 10)
    assert np.sum(x == T.MISSING) == 1
    filled = np.where(x == T.MISSING, y[0], x)
    np.testing.assert_array_equal(filled[:5], filled[5:])  # ww with the answer put back
    x, y = T.binary_addition(rng, 12)
    plus = int(np.flatnonzero(x == T.PLUS)[0])
    a = int("".join(T.text(x[:plus])[::-1]), 2)
    b = int("".join(T.text(x[plus + 1:])[::-1]), 2)
    out = T.text(y)
    assert a > 0 and b > 0 and int(out[:out.index("$")][::-1], 2) == a + b
    x, y = T.modular_arithmetic(rng, 11)
    expr = T.text(x)
    assert int(T.text(y)) == eval(expr) % 5  # Python's precedence: * before + and -
  # Both numbers of a long addition are big: Python integers, no overflow.
  x, y = T.binary_addition(np.random.default_rng(2), 400)
  assert len(y) == 401 and T.EOS in y


def test_unknown_problem_and_bad_length_are_clear():
  with pytest.raises(ValueError, match="unknown problem 'sort'.*bucket_sort"):
    T.get("sort")
  with pytest.raises(ValueError, match="length >= 1"):
    T.reverse(np.random.default_rng(0), 0)


def test_decoder_encoding_weights_exactly_the_output():
  x, y = T.tokens("0110"), T.tokens("1001")
  inputs, targets, weights = T.encode_decoder(x, y)
  assert T.text(inputs) == "0110|100" and T.text(targets) == "110|1001"
  np.testing.assert_array_equal(weights, [0, 0, 0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(targets[weights == 1], y)
  # The model reads SEP where it predicts the first output token.
  assert inputs[np.argmax(weights)] == T.SEP


def test_encoder_encoding_weights_exactly_the_blanks():
  x, y = T.tokens("0110"), T.tokens("0")
  inputs, targets, weights = T.encode_encoder(x, y)
  assert T.text(inputs) == "0110_"
  np.testing.assert_array_equal(weights, [0, 0, 0, 0, 1])
  np.testing.assert_array_equal(targets[weights == 1], y)
  assert np.all(inputs[weights == 1] == T.BLANK)


@pytest.mark.parametrize("family", ["decoder", "mlm"])
@pytest.mark.parametrize("name", ["duplicate", "parity", "binary_addition"])
def test_batches_pad_in_segment_zero_and_weight_only_outputs(family, name):
  rng = np.random.default_rng(3)
  lengths = [1, 5, 3, 7]
  batch = T.make_batch(name, rng, lengths, family=family, pad_to=32)
  assert set(batch) == {"inputs", "targets", "positions", "segment_ids", "weights"}
  assert all(v.shape == (4, 32) for v in batch.values())
  for row, n in enumerate(lengths):
    used = T.sequence_length(name, n)
    np.testing.assert_array_equal(batch["segment_ids"][row], [1] * used + [0] * (32 - used))
    np.testing.assert_array_equal(batch["positions"][row, :used], np.arange(used))
    assert np.all(batch["inputs"][row, used:] == T.PAD)
    w = batch["weights"][row]
    assert w.sum() == T.output_length(name, n) and np.all(w[used:] == 0)
    # The weighted targets are the answer to the example's own input.
    x = batch["inputs"][row, :n]
    np.testing.assert_array_equal(batch["targets"][row][w == 1], T.solve(name, x))
  with pytest.raises(ValueError, match="does not fit pad_to"):
    T.make_batch(name, rng, [30], family=family, pad_to=16)


def test_randomized_positions_are_sorted_unique_and_below_the_maximum():
  rng = np.random.default_rng(4)
  batch = T.make_batch("reverse", rng, [3, 10, 25] * 10, randomized=True, max_position=64)
  seen = set()
  for row in range(30):
    used = batch["segment_ids"][row] == 1
    p = batch["positions"][row, used]
    assert np.all(np.diff(p) > 0) and p.min() >= 0 and p.max() < 64
    seen |= set(p.tolist())
  assert seen == set(range(64))  # the whole range is reachable, not just 0..n-1
  with pytest.raises(ValueError, match="max_position=8"):
    T.random_positions(rng, 9, 8)


def test_batches_resume_where_they_stopped_and_differ_per_process():
  def batches(**kw):
    return T.Batches("reverse", batch_size=4, min_length=1, max_length=6, seed=(7,), **kw)
  stream = batches()
  first = [next(stream) for _ in range(3)]
  state = stream.get_state()
  assert state == {"problem": "reverse", "batches_read": 3}
  resumed = batches()
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["inputs"], next(stream)["inputs"])
  np.testing.assert_array_equal(next(iter(batches()))["inputs"], first[0]["inputs"])
  other = next(batches(process_index=1))
  assert not np.array_equal(other["inputs"], first[0]["inputs"])
  assert first[0]["inputs"].shape == (4, T.sequence_length("reverse", 6))
  assert len(list(batches(num_batches=2))) == 2
  with pytest.raises(ValueError, match="not that of a reverse problem"):
    batches().set_state({"problem": "parity", "batches_read": 1})


def test_vocabulary_reads_and_writes_the_token_names():
  vocab = T.Vocabulary()
  assert vocab.vocab_size == 14 and vocab.pad_id == T.PAD
  assert vocab.decode(np.r_[vocab.encode("01+1|"), [T.PAD, T.PAD]]) == "01+1|"
