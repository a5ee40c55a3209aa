"""Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention", arXiv:2305.16300): a trained
run scored on prompts that hide a random 5-digit key in filler and ask for it at the end
(`posjax.data.passkey` builds them):

  ... The pass key is 71432. Remember it. 71432 is the pass key. The grass is green. ...
  What is the pass key? The pass key is 71432
                                        ^^^^^ scored

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

from posjax.data.passkey import (DEFAULT_DEPTHS, PasskeyPrompt, make_prompt, min_length,
                                 passkey_keys)
from posjax.evaluate import report
from posjax.evaluate.scoring import RunModel, Scorer, make_scorer, max_positions


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
  """`(depths, lengths, accuracy[depth, length])` of `passkey_grid` rows (NaN where skipped);
  a cell with several rows (e.g. one per seed) holds their mean."""
  depths = sorted({r["depth"] for r in rows})
  lengths = sorted({r["length"] for r in rows})
  cells: dict[tuple[int, int], list[float]] = {}
  for r in rows:
    if r["accuracy"] is not None:
      cells.setdefault((depths.index(r["depth"]), lengths.index(r["length"])), []).append(
          r["accuracy"])
  values = np.full((len(depths), len(lengths)), np.nan)
  for cell, accuracies in cells.items():
    values[cell] = np.mean(accuracies)
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
