"""Synthetic algorithmic problems for length generalisation, and their encoding into model batches.

The problems follow Delétang et al. 2023 ("Neural Networks and the Chomsky Hierarchy", ICLR), as used
by Ruoss et al. 2023 ("Randomized Positional Encodings Boost Length Generalization of
Transformers", ACL), plus the copy task of Kazemnejad et al. 2023 ("The Impact of Positional
Encoding on Length Generalization in Transformers", NeurIPS). (The papers call them tasks; here
they are *problems*, the data of a run whose `config.task` is `algorithmic`.) Each problem is a
function

    generate(rng: np.random.Generator, length: int) -> (input_tokens, output_tokens)

where `length` is the INPUT length (what the papers train on 1..40 and test on 41..500) and both
sequences are int32 token ids of the one shared vocabulary below.

| problem            | input (length n)                       | output                             |
|--------------------|----------------------------------------|------------------------------------|
| copy               | bits w                                 | w (n)                              |
| reverse            | bits w                                 | reversed w (n)                     |
| duplicate          | bits w                                 | ww (2n)                            |
| parity             | bits w                                 | (number of 1s in w) mod 2 (1)      |
| binary_addition    | a + b, little-endian bits              | a+b little-endian, EOS, 0s (n + 1) |
| bucket_sort        | symbols of {0..4}                      | sorted (n)                         |
| missing_duplicate  | ww with one symbol replaced by MISSING | the replaced bit (1)               |
| modular_arithmetic | d op d op ... d, d in {0..4}           | value mod 5 (1)                    |

Definitions, as in Delétang et al.'s reference tasks:
  - binary_addition: the two numbers have lengths k and n - 1 - k (k uniform in 1..n-2), both
    positive, little-endian; the output is the sum in little-endian binary without trailing zeros,
    then EOS, then DIGIT0s up to n + 1 tokens. The whole n + 1 tokens are scored (the paper masks
    the tokens after EOS; scoring the forced zeros as well is slightly stricter). For n <= 2
    there is no '+': the input is one n-bit number and the output its value.
  - missing_duplicate: a random bit string s of length n // 2 is written twice and one of the 2·
    (n // 2) symbols is replaced by MISSING; the answer is the replaced bit. An odd n ends with one
    EMPTY filler token. For n = 1 the input is a single DIGIT1 and the answer DIGIT1 (as the
    reference does).
  - modular_arithmetic: the "simple" (regular, bracket-free) variant: residues in {0..4} alternate
    with operators {+, -, *}, evaluated with the usual precedence (* before + and -), mod 5;
    e.g. 1 + 2 * 3 = 2, 1 - 1 - 1 = 4. The expression has odd length; an even n ends with one
    EMPTY filler (the reference drops a token instead; the filler keeps the input length exact).
  - parity: the output is DIGIT1 when the number of 1s is odd, DIGIT0 when it is even.

Encoding (`encode_decoder`, `encode_encoder`, `make_batch`):
  - decoder: the sequence `[input, SEP, output]`; the model reads all but its last token and
    predicts the next one; `weights` are 1 exactly on the targets that are output tokens.
  - encoder (Ruoss et al.): `[input, BLANK × len(output)]`; the model predicts the output at the
    BLANK positions, where `weights` are 1.
Batches `{inputs, targets, positions, segment_ids, weights}` are padded to a bucket length with
PAD tokens in segment 0. Positions are 0..n-1, or randomized (Ruoss et al.): a sorted sample
without replacement from [0, max_position) per example, drawn in numpy with the semantics of
`posjax.encodings.randomized_positions`. Padding gets position 0 (it is masked out).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

# The shared token layout. ---------------------------------------------------------------------
PAD = 0        # padding (segment 0); never a target
SEP = 1        # decoder: separates the input from the output
BLANK = 2      # encoder: a placeholder where an output token is to be predicted
EOS = 3        # end of the sum (binary addition)
EMPTY = 4      # filler that keeps an input at its exact length (odd/even-length problems)
MISSING = 5    # the masked symbol of missing_duplicate
PLUS, MINUS, TIMES = 6, 7, 8
DIGIT0 = 9     # symbols 0..4 are DIGIT0..DIGIT0 + 4; bits are DIGIT0 and DIGIT0 + 1
NUM_SYMBOLS = 5
VOCAB_SIZE = DIGIT0 + NUM_SYMBOLS  # 14
MODULUS = 5

TOKEN_NAMES = {PAD: "<pad>", SEP: "|", BLANK: "_", EOS: "$", EMPTY: ".", MISSING: "?", PLUS: "+",
               MINUS: "-", TIMES: "*", **{DIGIT0 + d: str(d) for d in range(NUM_SYMBOLS)}}

Generator = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def tokens(text: str) -> np.ndarray:
  """Tokens of a readable string: `tokens("01+1")`; digits 0..4, `+ - * | _ $ . ?`."""
  lookup = {name: token for token, name in TOKEN_NAMES.items() if token != PAD}
  try:
    return np.asarray([lookup[c] for c in text], np.int32)
  except KeyError as e:
    raise ValueError(f"no token for character {e.args[0]!r} in {text!r}") from None


def text(token_ids: Sequence[int]) -> str:
  """The readable string of tokens (inverse of `tokens`)."""
  return "".join(TOKEN_NAMES[int(t)] for t in token_ids)


def _bits(rng: np.random.Generator, n: int) -> np.ndarray:
  return (DIGIT0 + rng.integers(0, 2, n)).astype(np.int32)


def _check_length(length: int) -> None:
  if int(length) < 1:
    raise ValueError(f"problem inputs need length >= 1, got {length}")


# The problems: a deterministic `solve` (input -> output) where the input defines the answer. ------

def copy(rng: np.random.Generator, length: int):
  """Copy (Kazemnejad et al. 2023): output the input bits unchanged."""
  _check_length(length)
  x = _bits(rng, length)
  return x, x.copy()


def reverse(rng: np.random.Generator, length: int):
  """Reverse string (Delétang et al. 2023, DCF): output the input bits reversed."""
  _check_length(length)
  x = _bits(rng, length)
  return x, x[::-1].copy()


def duplicate(rng: np.random.Generator, length: int):
  """Duplicate string (Delétang et al. 2023, CS): output the input bits twice, `ww`."""
  _check_length(length)
  x = _bits(rng, length)
  return x, np.concatenate([x, x])


def solve_parity(x: np.ndarray) -> np.ndarray:
  return np.asarray([DIGIT0 + int(np.sum(x == DIGIT0 + 1)) % 2], np.int32)


def parity(rng: np.random.Generator, length: int):
  """Parity check (Delétang et al. 2023, regular): the number of 1s mod 2 (DIGIT1 if odd)."""
  _check_length(length)
  x = _bits(rng, length)
  return x, solve_parity(x)


def _to_little_endian(value: int, width: Optional[int] = None) -> list[int]:
  digits = bin(value)[2:][::-1]
  if width is not None:
    digits = digits.ljust(width, "0")
  return [DIGIT0 + int(d) for d in digits]


def _from_little_endian(bits: Sequence[int]) -> int:
  return sum((int(t) - DIGIT0) << i for i, t in enumerate(bits))


def solve_binary_addition(x: np.ndarray) -> np.ndarray:
  """`a+b` (little-endian bits, or one number when there is no PLUS) -> sum, EOS, 0-padding."""
  parts = np.split(x, np.flatnonzero(x == PLUS))
  total = sum(_from_little_endian(p[p != PLUS]) for p in parts)
  out = _to_little_endian(total) + [EOS]
  return np.asarray(out + [DIGIT0] * (len(x) + 1 - len(out)), np.int32)


def _positive_bits(rng: np.random.Generator, n: int) -> np.ndarray:
  """A uniform number in [1, 2^n) as n little-endian bits (rejecting 0; any size)."""
  while True:
    bits = rng.integers(0, 2, n)
    if bits.any():
      return (DIGIT0 + bits).astype(np.int32)


def binary_addition(rng: np.random.Generator, length: int):
  """Binary addition (Delétang et al. 2023, CS): `a+b` little-endian -> `a + b` little-endian,
  then EOS, padded with 0s to `length + 1` tokens."""
  _check_length(length)
  if length <= 2:
    x = np.asarray(_to_little_endian(int(rng.integers(0, 2**length)), length), np.int32)
    return x, solve_binary_addition(x)
  k = int(rng.integers(1, length - 1))  # bits of the first number; length - 1 - k of the second
  a, b = _positive_bits(rng, k), _positive_bits(rng, length - 1 - k)
  x = np.concatenate([a, [PLUS], b]).astype(np.int32)
  return x, solve_binary_addition(x)


def bucket_sort(rng: np.random.Generator, length: int):
  """Bucket sort (Delétang et al. 2023, CS): symbols of a 5-letter alphabet, output sorted."""
  _check_length(length)
  x = (DIGIT0 + rng.integers(0, NUM_SYMBOLS, length)).astype(np.int32)
  return x, np.sort(x)


def solve_missing_duplicate(x: np.ndarray) -> np.ndarray:
  """The bit hidden by MISSING in `ww` (with an optional trailing EMPTY filler)."""
  if len(x) == 1:
    return np.asarray([DIGIT0 + 1], np.int32)
  w = x[x != EMPTY]
  half = len(w) // 2
  i = int(np.flatnonzero(w == MISSING)[0])
  partner = i + half if i < half else i - half
  return np.asarray([w[partner]], np.int32)


def missing_duplicate(rng: np.random.Generator, length: int):
  """Missing duplicate (Delétang et al. 2023, CS): `ww` with one symbol replaced by MISSING;
  output that symbol. An odd length ends with an EMPTY filler; length 1 is `1 -> 1`."""
  _check_length(length)
  if length == 1:
    x = np.asarray([DIGIT0 + 1], np.int32)
    return x, solve_missing_duplicate(x)
  w = _bits(rng, length // 2)
  ww = np.concatenate([w, w])
  i = int(rng.integers(0, len(ww)))
  answer = ww[i]
  ww[i] = MISSING
  x = np.concatenate([ww, np.full(length % 2, EMPTY, np.int32)]).astype(np.int32)
  return x, np.asarray([answer], np.int32)


def solve_modular_arithmetic(x: np.ndarray) -> np.ndarray:
  """Value mod 5 of `d op d op ... d` with * before + and -, ignoring a trailing EMPTY."""
  x = x[x != EMPTY]
  total, term, sign = 0, int(x[0]) - DIGIT0, 1
  for op, d in zip(x[1::2], x[2::2]):
    d = int(d) - DIGIT0
    if op == TIMES:
      term *= d
    else:
      total += sign * term
      term, sign = d, (1 if op == PLUS else -1)
  return np.asarray([DIGIT0 + (total + sign * term) % MODULUS], np.int32)


def modular_arithmetic(rng: np.random.Generator, length: int):
  """Modular arithmetic, simple variant (Delétang et al. 2023, regular; Ruoss et al. 2023):
  residues in {0..4} and operators {+, -, *}, with precedence, mod 5. Even lengths end in EMPTY."""
  _check_length(length)
  n = length if length % 2 else length - 1
  x = np.empty(n, np.int32)
  x[0::2] = DIGIT0 + rng.integers(0, MODULUS, n // 2 + 1)
  x[1::2] = np.asarray([PLUS, MINUS, TIMES])[rng.integers(0, 3, n // 2)]
  x = np.concatenate([x, np.full(length - n, EMPTY, np.int32)]).astype(np.int32)
  return x, solve_modular_arithmetic(x)


SOLVERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "copy": lambda x: np.asarray(x, np.int32).copy(),
    "reverse": lambda x: np.asarray(x, np.int32)[::-1].copy(),
    "duplicate": lambda x: np.concatenate([x, x]).astype(np.int32),
    "parity": solve_parity,
    "binary_addition": solve_binary_addition,
    "bucket_sort": lambda x: np.sort(np.asarray(x, np.int32)),
    "missing_duplicate": solve_missing_duplicate,
    "modular_arithmetic": solve_modular_arithmetic,
}


def solve(name: str, x: Sequence[int]) -> np.ndarray:
  """The output of problem `name` for input tokens `x` (every problem's answer is a function of its
  input): `text(solve("reverse", tokens("001"))) == "100"`."""
  get(name)
  return SOLVERS[name](np.asarray(x, np.int32))


PROBLEMS: dict[str, Generator] = {
    "copy": copy,
    "reverse": reverse,
    "duplicate": duplicate,
    "parity": parity,
    "binary_addition": binary_addition,
    "bucket_sort": bucket_sort,
    "missing_duplicate": missing_duplicate,
    "modular_arithmetic": modular_arithmetic,
}


def get(name: str) -> Generator:
  """The generator of problem `name`; an unknown name lists the known ones."""
  if name not in PROBLEMS:
    raise ValueError(f"unknown problem {name!r}; choose one of {', '.join(PROBLEMS)}")
  return PROBLEMS[name]


def output_length(name: str, length: int) -> int:
  """Output tokens of problem `name` for inputs of `length` (fixed per length for every problem)."""
  if name == "duplicate":
    return 2 * length
  if name == "binary_addition":
    return length + 1
  if name in ("parity", "missing_duplicate", "modular_arithmetic"):
    return 1
  return length


def sequence_length(name: str, length: int) -> int:
  """Model tokens of one encoded example, for either family: n + m (the decoder reads
  `[x, SEP, y]` but its last token, the encoder `[x, BLANK × m]`)."""
  return length + output_length(name, length)


# Encoding into model sequences. ---------------------------------------------------------------

def encode_decoder(x: np.ndarray, y: np.ndarray):
  """`(inputs, targets, weights)` of `[x, SEP, y]` for a causal decoder: targets are the inputs
  shifted by one, weights 1 exactly where the target is an output token."""
  seq = np.concatenate([x, [SEP], y]).astype(np.int32)
  weights = np.zeros(len(seq) - 1, np.float32)
  weights[len(x):] = 1.0
  return seq[:-1], seq[1:], weights


def encode_encoder(x: np.ndarray, y: np.ndarray):
  """`(inputs, targets, weights)` for a bidirectional encoder (Ruoss et al. 2023): the input then
  one BLANK per output token; the targets at the BLANKs are the output, weighted 1."""
  inputs = np.concatenate([x, np.full(len(y), BLANK, np.int32)]).astype(np.int32)
  targets = np.concatenate([np.full(len(x), PAD, np.int32), y]).astype(np.int32)
  weights = np.concatenate([np.zeros(len(x), np.float32), np.ones(len(y), np.float32)])
  return inputs, targets, weights


# By model family (`posjax.models.FAMILIES`): the causal decoder, or the bidirectional encoder
# with its masked-LM head (logits at every position).
ENCODERS = {"decoder": encode_decoder, "mlm": encode_encoder}


def random_positions(rng: np.random.Generator, length: int, max_position: int) -> np.ndarray:
  """Numpy twin of `posjax.encodings.randomized_positions` (Ruoss et al. 2023): `length`
  distinct positions drawn uniformly from [0, max_position), sorted, int32."""
  if length > max_position:
    raise ValueError(f"cannot draw {length} distinct positions below max_position={max_position}:"
                     " raise max_position above the longest sequence")
  return np.sort(rng.choice(max_position, size=length, replace=False)).astype(np.int32)


def bucket(length: int, multiple: int) -> int:
  """`length` rounded up to a multiple of `multiple` (fewer distinct shapes, fewer compiles)."""
  return -(-length // multiple) * multiple


def make_batch(name: str, rng: np.random.Generator, lengths: Sequence[int], *,
               family: str = "decoder", pad_to: Optional[int] = None, randomized: bool = False,
               max_position: int = 2048) -> dict[str, np.ndarray]:
  """One batch of problem `name`, one example per entry of `lengths` (input lengths).

  Returns `{inputs, targets, positions, segment_ids, weights}`, `[B, pad_to]` each (default: the
  longest example), padded with PAD in segment 0. `randomized` draws each example's positions
  as a sorted sample from [0, max_position) (Ruoss et al. 2023); otherwise 0..len-1.
  """
  if family not in ENCODERS:
    raise ValueError(f"unknown model family {family!r} for an algorithmic problem; choose "
                     f"{' or '.join(ENCODERS)}")
  generate, encode = get(name), ENCODERS[family]
  examples = [encode(*generate(rng, int(n))) for n in lengths]
  longest = max(len(e[0]) for e in examples)
  pad_to = longest if pad_to is None else pad_to
  if longest > pad_to:
    raise ValueError(f"an example of {longest} tokens does not fit pad_to={pad_to}")
  batch = {"inputs": np.full((len(examples), pad_to), PAD, np.int32),
           "targets": np.full((len(examples), pad_to), PAD, np.int32),
           "positions": np.zeros((len(examples), pad_to), np.int32),
           "segment_ids": np.zeros((len(examples), pad_to), np.int32),
           "weights": np.zeros((len(examples), pad_to), np.float32)}
  for row, (inputs, targets, weights) in enumerate(examples):
    n = len(inputs)
    batch["inputs"][row, :n] = inputs
    batch["targets"][row, :n] = targets
    batch["weights"][row, :n] = weights
    batch["segment_ids"][row, :n] = 1
    batch["positions"][row, :n] = (random_positions(rng, n, max_position) if randomized
                                   else np.arange(n, dtype=np.int32))
  return batch


class Batches:
  """Batches of problem `name`, an iterator whose state is the number of batches it has given.

  Batch `i` of process `p` is drawn from its own generator, `np.random.default_rng([*seed, p, i])`
  (`seed` an int or a tuple of ints; every example's input length uniform in
  `min_length..max_length`), so a run resumed with
  `set_state` reads exactly the batches an uninterrupted run would have read, and processes read
  different examples. `num_batches` ends the iterator (None: endless).
  """

  def __init__(self, name: str, *, batch_size: int, min_length: int, max_length: int, seed,
               family: str = "decoder", pad_to: Optional[int] = None, randomized: bool = False,
               max_position: int = 2048, process_index: int = 0,
               num_batches: Optional[int] = None):
    get(name)
    if not 1 <= min_length <= max_length:
      raise ValueError(f"input lengths {min_length}..{max_length}: need 1 <= min <= max")
    self.name, self.batch_size = name, int(batch_size)
    self.seed = tuple(int(s) for s in np.atleast_1d(seed))
    self.min_length, self.max_length = int(min_length), int(max_length)
    self.family, self.randomized, self.max_position = family, randomized, max_position
    self.pad_to = sequence_length(name, max_length) if pad_to is None else pad_to
    self.process_index, self.num_batches = process_index, num_batches
    self._index = 0

  def __iter__(self) -> "Batches":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.num_batches is not None and self._index >= self.num_batches:
      raise StopIteration
    rng = np.random.default_rng([*self.seed, self.process_index, self._index])
    lengths = rng.integers(self.min_length, self.max_length + 1, self.batch_size)
    self._index += 1
    return make_batch(self.name, rng, lengths, family=self.family, pad_to=self.pad_to,
                      randomized=self.randomized, max_position=self.max_position)

  def get_state(self) -> dict:
    return {"problem": self.name, "batches_read": self._index}

  def set_state(self, state: dict) -> None:
    if state.get("problem") != self.name or "batches_read" not in state:
      raise ValueError(f"data state {state} is not that of a {self.name} problem iterator")
    self._index = int(state["batches_read"])


class Vocabulary:
  """The problems' token layout as a tokenizer (`vocab_size`, `pad_id`, `encode`, `decode`)."""

  name = "algorithmic"
  vocab_size = VOCAB_SIZE
  pad_id = PAD

  def encode(self, readable: str) -> np.ndarray:
    return tokens(readable)

  def decode(self, ids) -> str:
    return text(int(t) for t in np.asarray(ids).reshape(-1) if int(t) != PAD)
