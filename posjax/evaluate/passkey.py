"""Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention", arXiv:2305.16300).

A prompt hides a random 5-digit key in repeated filler and asks for it at the end:

  [header] The grass is green. The sky is blue. ... There and back again. The grass is ...
  The pass key is 71432. Remember it. 71432 is the pass key. The grass is green. ...
  What is the pass key? The pass key is 71432
                                        ^^^^^ scored

Built in tokens with the run's tokenizer, to an exact length: the prompt plus the answer
(" 71432") is `length + 1` tokens, so the model reads `length` inputs. The filler is the last F
tokens of the repeated lines (it ends with a whole line, so the question follows a full
sentence; the first sentence may be cut). The key sentence goes at the sentence boundary of the
filler nearest to `depth × F` (the filler's start and end count as boundaries: depth 0 puts it
right after the header, depth 1 right before the question); `PasskeyPrompt.key_start` and
`.actual_depth` say where it went.

Scoring is teacher-forced and greedy: one forward pass over prompt + answer, and the key counts
as retrieved when the argmax at every answer token's position is that token (for the byte
tokenizer: the 5 digits; a leading whitespace-only token is not scored). This equals greedy
decoding of the digits, since each argmax is conditioned on the correct previous digits exactly
when all earlier ones were right. `digit_accuracy` is the fraction of correct digit tokens.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

from posjax.evaluate import report
from posjax.evaluate.scoring import RunModel, Scorer, make_scorer, max_positions

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


@dataclasses.dataclass(frozen=True)
class PasskeyScore:
  retrieved: bool
  digit_accuracy: float


def score_prompts(scorer: Scorer, prompts: Sequence[PasskeyPrompt]) -> list[PasskeyScore]:
  """Teacher-forced argmax scoring of prompts of one length (see the module docstring)."""
  if not prompts:
    return []
  lengths = {p.length for p in prompts}
  if len(lengths) != 1:
    raise ValueError(f"score prompts of one length at a time, got lengths {sorted(lengths)}")
  tokens = np.stack([p.tokens for p in prompts])
  _, prediction = scorer(tokens[:, :-1], tokens[:, 1:])
  scores = []
  for row, p in enumerate(prompts):
    hits = prediction[row, p.answer_positions - 1] == p.tokens[p.answer_positions]
    scores.append(PasskeyScore(bool(hits.all()), float(hits.mean())))
  return scores


def passkey_keys(trials: int, seed: int = 0) -> list[str]:
  """`trials` random 5-digit keys; the same keys serve every (length, depth) cell."""
  rng = np.random.default_rng(seed)
  return [str(k) for k in rng.integers(10000, 100000, size=trials)]


def passkey_grid(scorer: Scorer, tokenizer, lengths: Sequence[int],
                 depths: Sequence[float] = DEFAULT_DEPTHS, *, trials: int = 5, seed: int = 0,
                 header: str = "", name: str = "", max_len: Optional[int] = None) -> list[dict]:
  """Accuracy rows, one per (length, depth): the fraction of `trials` keys retrieved.

  Lengths past `max_len` (a position table), or too short for the prompt, get rows with no
  accuracy and a note.
  """
  keys = passkey_keys(trials, seed)
  shortest = max(min_length(tokenizer, k, header) for k in keys)
  rows = []
  for length in lengths:
    skip = ""
    if max_len is not None and length > max_len:
      skip = f"skipped: past max_len={max_len}"
    elif length < shortest:
      skip = f"skipped: a prompt needs {shortest} tokens"
    if skip:
      rows += [{"scheme": name, "length": length, "depth": d, "trials": 0, "accuracy": None,
                "digit_accuracy": None, "note": skip} for d in depths]
      continue
    prompts = [make_prompt(tokenizer, length, d, k, header=header) for d in depths for k in keys]
    scores = score_prompts(scorer, prompts)
    for i, depth in enumerate(depths):
      cell = scores[i * trials:(i + 1) * trials]
      rows.append({"scheme": name, "length": length, "depth": depth, "trials": trials,
                   "accuracy": float(np.mean([s.retrieved for s in cell])),
                   "digit_accuracy": float(np.mean([s.digit_accuracy for s in cell])),
                   "note": ""})
  return rows


def accuracy_matrix(rows: Sequence[dict]) -> tuple[list[float], list[int], np.ndarray]:
  """`(depths, lengths, accuracy[depth, length])` of `passkey_grid` rows (NaN where skipped)."""
  depths = sorted({r["depth"] for r in rows})
  lengths = sorted({r["length"] for r in rows})
  values = np.full((len(depths), len(lengths)), np.nan)
  for r in rows:
    if r["accuracy"] is not None:
      values[depths.index(r["depth"]), lengths.index(r["length"])] = r["accuracy"]
  return depths, lengths, values


def write_report(rows: Sequence[dict], out_dir: str, *, name: str = "",
                 notes: Sequence[str] = ()) -> dict[str, str]:
  """`passkey.csv`, `passkey.md` and `passkey.png` (depth × length heatmap) under `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  depths, lengths, values = accuracy_matrix(rows)
  title = f"Passkey retrieval{': ' + name if name else ''}"
  return {
      "csv": report.write_csv(os.path.join(out_dir, "passkey.csv"), rows),
      "md": report.write_markdown(os.path.join(out_dir, "passkey.md"), rows, title=title,
                                  notes=list(notes) + [
                                      "accuracy: fraction of keys whose digits are all the "
                                      "argmax of a teacher-forced pass"]),
      "png": report.heatmap(os.path.join(out_dir, "passkey.png"), values, rows=depths,
                            columns=lengths, xlabel="context length (tokens)",
                            ylabel="key depth", title=title),
  }


def run_passkey(run: RunModel, multipliers: Sequence[float] = (1, 2, 4, 8), *,
                depths: Sequence[float] = DEFAULT_DEPTHS, trials: int = 5, seed: int = 0,
                header: str = "", scorer: Optional[Scorer] = None,
                out_dir: Optional[str] = None) -> list[dict]:
  """The passkey grid of a trained run at `train_len × m`; writes the report if `out_dir`."""
  lengths = [int(round(run.train_len * m)) for m in multipliers]
  rows = passkey_grid(scorer or make_scorer(run), run.tokenizer, lengths, depths,
                      trials=trials, seed=seed, header=header, name=run.name,
                      max_len=max_positions(run.cfg))
  if out_dir:
    write_report(rows, out_dir, name=run.name)
  return rows
