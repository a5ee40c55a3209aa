"""Passkey prompts (Mohtashami & Jaggi 2023, "Landmark Attention", arXiv:2305.16300), for
evaluation (`posjax.evaluate.passkey`) and as a training mixture.

A prompt hides a random 5-digit key in repeated filler and asks for it at the end:

  [header] The grass is green. The sky is blue. ... There and back again. The grass is ...
  The pass key is 71432. Remember it. 71432 is the pass key. The grass is green. ...
  What is the pass key? The pass key is 71432

Built in tokens with the run's tokenizer, to an exact length: the prompt plus the answer
(" 71432") is `length + 1` tokens, so the model reads `length` inputs. The filler is the last F
tokens of the repeated lines (it ends with a whole line, so the question follows a full
sentence; the first sentence may be cut). The key sentence goes at the sentence boundary of the
filler nearest to `depth × F` (the filler's start and end count as boundaries: depth 0 puts it
right after the header, depth 1 right before the question); `PasskeyPrompt.key_start` and
`.actual_depth` say where it went.

`PasskeyRows` mixes such prompts into LM training rows (`data.passkey_fraction`), so that a
small model trained on a corpus that hardly ever asks it to copy a number learns retrieval at its
training length; its keys are never the evaluation keys (`passkey_keys`). Its keys may be longer
than the evaluation's 5 digits (`data.passkey_max_digits`): each prompt then holds more digits
to copy, a denser signal for learning to copy, while the prompt's text stays the same.
"""

from __future__ import annotations

import dataclasses

import numpy as np

FILLER_SENTENCES = ("The grass is green. ", "The sky is blue. ", "The sun is yellow. ",
                    "Here we go. ", "There and back again. ")
KEY_SENTENCE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "What is the pass key? The pass key is"
ANSWER = " {key}"
PAPER_HEADER = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
                "memorize them. I will quiz you about the important information there. ")
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclasses.dataclass(frozen=True)
class PasskeyPrompt:
  tokens: np.ndarray            # [length + 1] int32: prompt then answer
  key: str
  depth: float                  # requested depth
  key_start: int                # token index where the key sentence starts
  key_len: int                  # tokens of the key sentence
  header_len: int
  filler_len: int               # F: filler tokens in all
  answer_positions: np.ndarray  # indices into `tokens` of the scored answer tokens

  @property
  def length(self) -> int:
    """The model's input length (the prompt and answer hold one token more)."""
    return int(self.tokens.size - 1)

  @property
  def actual_depth(self) -> float:
    """The fraction of the filler before the key sentence."""
    return (self.key_start - self.header_len) / max(self.filler_len, 1)


def _encode(tokenizer, text: str) -> np.ndarray:
  return np.asarray(tokenizer.encode(text), np.int32)


def min_length(tokenizer, key: str = "12345", header: str = "") -> int:
  """The shortest input length that holds a passkey prompt (no filler)."""
  parts = [header, KEY_SENTENCE.format(key=key), QUESTION, ANSWER.format(key=key)]
  return sum(_encode(tokenizer, p).size for p in parts if p) - 1


def make_prompt(tokenizer, length: int, depth: float, key: str | int, *,
                header: str = "") -> PasskeyPrompt:
  """The passkey prompt of `length` input tokens with `key` at `depth` in [0, 1]."""
  key = str(key)
  if not key.isdigit():
    raise ValueError(f"the pass key must be digits, got {key!r}")
  if not 0.0 <= depth <= 1.0:
    raise ValueError(f"depth must be in [0, 1], got {depth}")
  head = _encode(tokenizer, header) if header else np.zeros([0], np.int32)
  key_ids = _encode(tokenizer, KEY_SENTENCE.format(key=key))
  question = _encode(tokenizer, QUESTION)
  answer = _encode(tokenizer, ANSWER.format(key=key))
  fixed = head.size + key_ids.size + question.size + answer.size
  filler_len = length + 1 - fixed
  if filler_len < 0:
    raise ValueError(f"a passkey prompt needs at least {fixed - 1} input tokens (header, key "
                     f"sentence, question and answer), got length={length}")
  sentences = [_encode(tokenizer, s) for s in FILLER_SENTENCES]
  line = np.concatenate(sentences)
  starts_in_line = np.cumsum([0] + [s.size for s in sentences[:-1]])
  reps = filler_len // line.size + 1
  tiled = np.tile(line, reps)
  offset = tiled.size - filler_len          # the filler is tiled[offset:]
  filler = tiled[offset:]
  boundaries = (np.arange(reps)[:, None] * line.size + starts_in_line[None, :]).ravel() - offset
  boundaries = np.concatenate([[0], boundaries[boundaries > 0], [filler_len]])
  split = int(boundaries[np.argmin(np.abs(boundaries - depth * filler_len))])
  tokens = np.concatenate([head, filler[:split], key_ids, filler[split:], question, answer])
  scored = [i for i, t in enumerate(answer) if tokenizer.decode(np.asarray([t])).strip()]
  answer_positions = tokens.size - answer.size + np.asarray(scored, np.int64)
  return PasskeyPrompt(tokens.astype(np.int32), key, float(depth), int(head.size + split),
                       int(key_ids.size), int(head.size), int(filler_len), answer_positions)


def passkey_keys(trials: int, seed: int = 0) -> list[str]:
  """`trials` random 5-digit keys; the same keys serve every (length, depth) cell."""
  rng = np.random.default_rng(seed)
  return [str(k) for k in rng.integers(10000, 100000, size=trials)]


def evaluation_rows(tokenizer, length: int, trials: int, depths=DEFAULT_DEPTHS,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """The prompts of `length` inputs for `trials` evaluation keys (`passkey_keys(trials, seed)`)
  at each of `depths`, as LM rows (`{inputs, targets, positions, segment_ids, weights}`,
  `[len(depths) * trials, length]`) whose only weighted targets are the answer's digits: a row is
  retrieved when every weighted target is the argmax."""
  prompts = [make_prompt(tokenizer, length, d, k) for d in depths
             for k in passkey_keys(trials, seed)]
  n = len(prompts)
  weights = np.zeros([n, length], np.float32)
  for row, p in enumerate(prompts):
    weights[row, p.answer_positions - 1] = 1.0  # target t is token t + 1
  tokens = np.stack([p.tokens for p in prompts])
  return dict(inputs=tokens[:, :-1], targets=tokens[:, 1:],
              positions=np.broadcast_to(np.arange(length, dtype=np.int32), (n, length)).copy(),
              segment_ids=np.ones([n, length], np.int32), weights=weights)


HELD_OUT_KEYS = 256  # the evaluation keys of every seed < 4 and up to 64 trials never train
HELD_OUT_TRIALS = HELD_OUT_KEYS // 4  # evaluation keys per seed that never train


class PasskeyRows:
  """A grain `random_map` transform of LM rows (`{inputs, targets, positions, segment_ids,
  weights}`, `[seq_len]` each): with probability `fraction` the row becomes a passkey prompt of
  `seq_len` inputs, with a random key (never an evaluation key) at a uniform random depth, every
  token a target. A key has a uniform random number of digits in [5, `max_digits`]."""

  def __init__(self, tokenizer, seq_len: int, fraction: float, max_digits: int = 5):
    if not 0.0 <= fraction < 1.0:
      raise ValueError(f"data.passkey_fraction must be in [0, 1), got {fraction}")
    if not 5 <= max_digits <= 18:
      raise ValueError(f"data.passkey_max_digits must be in [5, 18] (at least the evaluation "
                       f"keys' 5 digits), got {max_digits}")
    shortest = min_length(tokenizer, "1" * max_digits)
    if fraction and seq_len < shortest:
      raise ValueError(f"data.passkey_fraction={fraction} needs data.seq_len >= {shortest} (the "
                       f"shortest passkey prompt with {max_digits}-digit keys), got {seq_len}")
    self.tokenizer, self.seq_len, self.fraction = tokenizer, int(seq_len), float(fraction)
    self.max_digits = int(max_digits)
    self.held_out = {k for seed in range(4) for k in passkey_keys(HELD_OUT_TRIALS, seed)}

  def __call__(self, row: dict, rng: np.random.Generator) -> dict:
    if rng.random() >= self.fraction:
      return row
    digits = int(rng.integers(5, self.max_digits + 1)) if self.max_digits > 5 else 5
    key = self._random_key(rng, digits)
    while key in self.held_out:
      key = self._random_key(rng, digits)
    prompt = make_prompt(self.tokenizer, self.seq_len, float(rng.random()), key)
    n = self.seq_len
    return dict(inputs=prompt.tokens[:-1], targets=prompt.tokens[1:],
                positions=np.arange(n, dtype=np.int32), segment_ids=np.ones([n], np.int32),
                weights=np.ones([n], np.float32))

  @staticmethod
  def _random_key(rng: np.random.Generator, digits: int) -> str:
    """A `digits`-digit number (no leading zero), drawn as the evaluation keys are."""
    return str(rng.integers(10 ** (digits - 1), 10 ** digits))
