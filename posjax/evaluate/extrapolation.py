"""Perplexity versus evaluation length: how a model trained on L tokens reads kL tokens.

The text. Every length and protocol scores the same targets: the validation split's documents, in
their documented order, tokenized with the run's tokenizer, each followed by eos (as in training)
and joined into one stream; the first N + 1 tokens are kept, N being `num_tokens` rounded down to
a multiple of every window length (at least one longest window). Tokens 1..N are the targets. For
the embedded Shakespeare corpus and the defaults this is the beginning of the first validation
play (it holds ~155k byte tokens), so no window crosses a document boundary.

Three measurements at each length W = k·L:

- `windows`: non-overlapping windows of W inputs (positions 0..W-1); every target scored once,
  with 0..W-1 tokens of context (the protocol of the runs' own validation,
  `posjax.run.objectives.LanguageModeling.evaluate_length`).
- `sliding`: windows of W inputs that advance by a stride s ≤ W; the first window scores all its
  targets, every later one only its last s (weights 0 elsewhere), so each target is scored
  exactly once with at least W - s tokens of context (Press et al. 2022, "sliding window
  evaluation"). The last window is shifted back to end at the stream's end. s = W gives exactly
  the `windows` protocol. Default s = W/2.
- loss by position: the mean `windows` loss at each position bucket within the window
  (`num_buckets` equal buckets of W/num_buckets positions), which shows where past-L positions
  start to hurt.

Long windows use the `chunked` attention backend (query blocks; memory O(chunk · W)), so 32·L
fits on a CPU for the default model. A scheme with a position table (`learned`, `max_len`) cannot
read past it: those lengths are skipped, with a note in the report, rather than failing.

  run = load_run(workdir)                      # the latest checkpoint of a trained run
  result = evaluate_lengths(run, multipliers=(1, 2, 4, 8, 16, 32))
  write_report(result, f"{workdir}/extrapolation")
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Optional, Sequence

import jax
import numpy as np

from posjax import data
from posjax.evaluate import report
from posjax.evaluate.scoring import RunModel, Scorer, load_run, make_scorer, max_positions
from posjax.run.experiment import Run

DEFAULT_MULTIPLIERS = (1, 2, 4, 8, 16, 32)
PROTOCOLS = ("windows", "sliding")


# ---------------------------------------------------------------------------------- the text


def validation_stream(data_config, tokenizer, num_tokens: int, *,
                      split: str = "validation") -> np.ndarray:
  """The first `num_tokens + 1` tokens of `split`: documents in order, each followed by eos.

  Raises `ValueError` if the split is shorter.
  """
  pieces, have = [], 0
  eos = np.asarray([tokenizer.eos_id], np.int32)
  for text in data.documents(data_config, split):
    ids = np.asarray(tokenizer.encode(text), np.int32)
    pieces += [ids, eos]
    have += ids.size + 1
    if have > num_tokens:
      break
  stream = np.concatenate(pieces) if pieces else np.zeros([0], np.int32)
  if stream.size < num_tokens + 1:
    raise ValueError(f"the {split} split holds {stream.size} tokens, fewer than the "
                     f"{num_tokens + 1} needed: lower the evaluation lengths or num_tokens")
  data.check_token_ids(stream[:num_tokens + 1], tokenizer.vocab_size, what=f"{split} tokens")
  return stream[:num_tokens + 1]


def text_length(windows: Sequence[int], num_tokens: int) -> int:
  """N: `num_tokens` rounded down to a multiple of every window (at least one lcm of them)."""
  common = math.lcm(*[int(w) for w in windows])
  return max(common, num_tokens // common * common)


# ------------------------------------------------------------------------------- protocols


def window_spans(num_inputs: int, window: int, stride: int) -> list[tuple[int, int, int]]:
  """`(start, score_from, end)` of each sliding window over `num_inputs` inputs.

  Window inputs are `[start, end)` (`end - start == window` unless the text is shorter) and its
  targets at inputs `[score_from, end)` are scored; the `score_from..end` ranges tile
  `[0, num_inputs)` exactly.
  """
  if not 1 <= stride <= window:
    raise ValueError(f"the stride must be in [1, window={window}], got {stride}")
  spans, scored = [], 0
  while scored < num_inputs:
    end = min(scored + (stride if spans else window), num_inputs)
    start = max(0, end - window)
    spans.append((start, scored, end))
    scored = end
  return spans


@dataclasses.dataclass
class ProtocolResult:
  protocol: str
  window: int
  stride: int
  loss: float
  accuracy: float
  tokens: int
  bucket_loss: Optional[np.ndarray] = None    # [num_buckets] mean loss by position (windows)
  bucket_starts: Optional[np.ndarray] = None  # first position of each bucket

  @property
  def perplexity(self) -> float:
    return float(np.exp(self.loss))


def evaluate_windows(scorer: Scorer, stream: np.ndarray, window: int, *,
                     num_buckets: int = 32) -> ProtocolResult:
  """Non-overlapping windows of `window` inputs over `stream[:-1]` (length a multiple of it)."""
  num = stream.size - 1
  if num % window:
    raise ValueError(f"the text ({num} targets) is not a whole number of {window}-token windows")
  inputs = stream[:-1].reshape(-1, window)
  targets = stream[1:].reshape(-1, window)
  xent, prediction = scorer(inputs, targets)
  num_buckets = max(1, min(num_buckets, window))
  buckets = np.arange(window) * num_buckets // window
  per_position = xent.astype(np.float64).mean(0)
  bucket_loss = np.asarray([per_position[buckets == b].mean() for b in range(num_buckets)])
  bucket_starts = np.asarray([int(np.argmax(buckets == b)) for b in range(num_buckets)])
  return ProtocolResult("windows", window, window, float(xent.astype(np.float64).mean()),
                        float((prediction == targets).mean()), int(xent.size),
                        bucket_loss, bucket_starts)


def sliding_weights(spans, window: int) -> np.ndarray:
  """`[num_windows, window]` float32: 1 on the targets each window scores, 0 elsewhere."""
  weights = np.zeros((len(spans), window), np.float32)
  for i, (start, score_from, end) in enumerate(spans):
    weights[i, score_from - start:end - start] = 1.0
  return weights


def evaluate_sliding(scorer: Scorer, stream: np.ndarray, window: int,
                     stride: int) -> ProtocolResult:
  """Sliding windows (see the module docstring): each target scored once, in its last window."""
  num = stream.size - 1
  if num < window:
    raise ValueError(f"the text ({num} targets) is shorter than one window of {window}")
  spans = window_spans(num, window, stride)
  starts = np.asarray([s for s, _, _ in spans])
  index = starts[:, None] + np.arange(window)
  xent, prediction = scorer(stream[index], stream[index + 1])
  weights = sliding_weights(spans, window)
  total = float(weights.sum())
  loss = float((xent.astype(np.float64) * weights).sum() / total)
  accuracy = float(((prediction == stream[index + 1]) * weights).sum() / total)
  return ProtocolResult("sliding", window, stride, loss, accuracy, int(total))


# ------------------------------------------------------------------------------ the study


@dataclasses.dataclass
class ExtrapolationResult:
  name: str                           # the scheme (or a label)
  train_len: int
  rows: list[dict]                    # one per (length, protocol), skipped lengths included
  by_position: dict[int, ProtocolResult]   # window length -> `windows` result with buckets
  notes: list[str]
  data: str = ""                      # the text scored, when it is not the run's own data


def stride_for(window: int, stride: Optional[int], stride_fraction: float) -> int:
  """The sliding stride at `window`: `stride` tokens if given (capped at the window), else
  `window × stride_fraction`."""
  if stride is not None:
    return max(1, min(int(stride), window))
  if not 0.0 < stride_fraction <= 1.0:
    raise ValueError(f"stride_fraction must be in (0, 1], got {stride_fraction}")
  return max(1, int(window * stride_fraction))


def evaluate_lengths(run: RunModel, multipliers: Sequence[float] = DEFAULT_MULTIPLIERS, *,
                     protocols: Sequence[str] = PROTOCOLS, stride: Optional[int] = None,
                     stride_fraction: float = 0.5, num_tokens: int = 16384,
                     num_buckets: int = 32, scorer: Optional[Scorer] = None,
                     name: Optional[str] = None, split: str = "validation",
                     data_config=None) -> ExtrapolationResult:
  """Both protocols and loss by position at `train_len × m` for each multiplier m.

  The text is `split` of the run's own data, or of `data_config` (another corpus, read with the
  run's tokenizer), which the result then names (`ExtrapolationResult.data`)."""
  unknown = sorted(set(protocols) - set(PROTOCOLS))
  if unknown:
    raise ValueError(f"unknown protocol(s) {unknown}; choose from {PROTOCOLS}")
  train_len, name = run.train_len, name or run.name
  lengths = [int(round(train_len * m)) for m in multipliers]
  if not lengths or min(lengths) < 1:
    raise ValueError(f"multipliers {tuple(multipliers)} must give lengths of at least 1 token")
  for length in lengths:  # a bad stride fails here, before anything is compiled
    stride_for(length, stride, stride_fraction)
  limit = max_positions(run.cfg)
  notes = []
  usable = [n for n in lengths if limit is None or n <= limit]
  skipped = [n for n in lengths if n not in usable]
  if skipped:
    notes.append(f"{name}: lengths {skipped} skipped: the {run.cfg.pe} position table has "
                 f"max_len={limit} rows and has nothing to add past it")
  if not usable:
    raise ValueError(f"no evaluation length fits the {run.cfg.pe} table of max_len={limit}")
  num = text_length(usable, num_tokens)
  other = data_config is not None
  data_config = data_config if other else run.config.data
  stream = validation_stream(data_config, run.run.tokenizer, num, split=split)
  source = describe_data(data_config)
  notes.append(f"text: the first {num} targets of the {split} split of {source}"
               + (" (not the data the run was trained on)" if other else "")
               + ", the same for every length and protocol")
  scorer = scorer or make_scorer(run)
  rows, by_position = [], {}
  for multiplier, length in zip(multipliers, lengths):
    base = {"scheme": name, "seed": run.config.seed, "train_len": train_len,
            "multiplier": multiplier, "length": length}
    if length in skipped:
      for protocol in protocols:
        rows.append({**base, "protocol": protocol, "stride": None, "loss": None,
                     "perplexity": None, "accuracy": None, "tokens": 0,
                     "note": f"skipped: past max_len={limit}"})
      continue
    for protocol in protocols:
      if protocol == "windows":
        result = evaluate_windows(scorer, stream, length, num_buckets=num_buckets)
        by_position[length] = result
      else:
        result = evaluate_sliding(scorer, stream, length,
                                  stride_for(length, stride, stride_fraction))
      rows.append({**base, "protocol": protocol, "stride": result.stride, "loss": result.loss,
                   "perplexity": result.perplexity, "accuracy": result.accuracy,
                   "tokens": result.tokens, "note": ""})
  return ExtrapolationResult(name, train_len, rows, by_position, notes,
                             data=source if other else "")


def describe_data(data_config) -> str:
  """A data config as a report names it: `shakespeare`, or `text:/path/to/file.txt`."""
  return f"{data_config.name}:{data_config.path}" if data_config.path else str(data_config.name)


def position_rows(result: ExtrapolationResult) -> list[dict]:
  """Loss by position bucket as rows (length, bucket, first and last position, loss)."""
  rows = []
  for length, r in sorted(result.by_position.items()):
    ends = list(r.bucket_starts[1:]) + [length]
    for b, (start, end, loss) in enumerate(zip(r.bucket_starts, ends, r.bucket_loss)):
      rows.append({"scheme": result.name, "length": length, "bucket": b,
                   "first_position": int(start), "last_position": int(end) - 1,
                   "loss": float(loss)})
  return rows


def protocol_series(rows: Sequence[dict], *, label_prefix: str = "") -> list[report.Series]:
  """One `Series` of perplexity against length per protocol in `rows`: with rows of several
  seeds, the mean perplexity, shaded from the lowest seed's to the highest's."""
  series = []
  for i, protocol in enumerate(p for p in PROTOCOLS if any(r["protocol"] == p for r in rows)):
    mine = [r for r in rows if r["protocol"] == protocol]
    label = f"{label_prefix}{protocol}"
    strides = [(r["stride"], r["length"]) for r in mine if r["stride"]]
    if protocol == "sliding" and strides:
      half = all(2 * stride == length for stride, length in strides)
      label += f" (stride {'W/2' if half else 'varies'})"
    lengths = list(dict.fromkeys(r["length"] for r in mine))
    ppl = [[r["perplexity"] for r in mine if r["length"] == n and r["perplexity"] is not None]
           for n in lengths]
    spread = any(len(p) > 1 for p in ppl)
    series.append(report.Series(
        label, lengths, [float(np.mean(p)) if p else None for p in ppl],
        {"linestyle": "-" if i == 0 else "--"},
        low=[min(p) if p else np.nan for p in ppl] if spread else None,
        high=[max(p) if p else np.nan for p in ppl] if spread else None))
  return series


def write_report(result: ExtrapolationResult, out_dir: str) -> dict[str, str]:
  """`results.csv`, `results.md`, `ppl_vs_length.png`, `loss_by_position.png` (and
  `loss_by_position.csv`) under `out_dir`; returns their paths by name."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {}
  paths["csv"] = report.write_csv(os.path.join(out_dir, "results.csv"), result.rows)
  pos_rows = position_rows(result)
  paths["position_csv"] = report.write_csv(os.path.join(out_dir, "loss_by_position.csv"),
                                           pos_rows)
  columns = ["length", "multiplier", "protocol", "stride", "loss", "perplexity", "accuracy",
             "tokens", "note"]
  paths["md"] = report.write_markdown(
      os.path.join(out_dir, "results.md"), result.rows, columns=columns,
      title=f"Perplexity by length: {result.name} (trained at {result.train_len} tokens)"
      + (f", on {result.data}" if result.data else ""),
      notes=result.notes)
  train_mark = [(result.train_len, f"train length {result.train_len}")]
  paths["ppl_png"] = report.line_plot(
      os.path.join(out_dir, "ppl_vs_length.png"), protocol_series(result.rows),
      xlabel="evaluation length (tokens)", ylabel="validation perplexity",
      title=f"{result.name}: perplexity vs length", log2_x=True, log_y=True, vlines=train_mark)
  series = []
  for length, r in sorted(result.by_position.items()):
    ends = np.asarray(list(r.bucket_starts[1:]) + [length])
    centers = (r.bucket_starts + ends - 1) / 2.0 + 1.0  # 1-based, so a log axis keeps bucket 0
    series.append(report.Series(f"W={length}", centers, r.bucket_loss, {"marker": "."}))
  paths["position_png"] = report.line_plot(
      os.path.join(out_dir, "loss_by_position.png"), series,
      xlabel="position in window (1-based, bucket centers)", ylabel="mean loss (nats)",
      title=f"{result.name}: loss by position", log2_x=True, vlines=train_mark)
  return paths


def run_extrapolation(workdir: str, config=None, *, out_dir: Optional[str] = None, state=None,
                      run: Optional[Run] = None,
                      **kwargs) -> tuple[ExtrapolationResult, dict[str, str]]:
  """Load the run (see `load_run`), evaluate every length (kwargs of `evaluate_lengths`), write
  the report under `<workdir>/extrapolation/` (or `out_dir`). Another text (`data_config=`)
  gets a directory of its own, `extrapolation_<its name>/`: the run's own report stays."""
  run = load_run(workdir, config, state=state, run=run)
  result = evaluate_lengths(run, **kwargs)
  if out_dir is None:
    suffix = "_" + re.sub(r"[^A-Za-z0-9]+", "_", result.data).strip("_") if result.data else ""
    out_dir = os.path.join(workdir, "extrapolation" + suffix)
  if jax.process_index() != 0:  # every process has the same result; one writes it
    return result, {}
  return result, write_report(result, out_dir)


def comparison_rows(results: Sequence[ExtrapolationResult]) -> list[dict]:
  """One row per (scheme, protocol) with the perplexity at each length (`ppl@<length>`): the
  value of the one seed, or the mean ± sample std over the seeds of that scheme."""
  rows = []
  for scheme in dict.fromkeys(result.name for result in results):
    mine = [r for result in results if result.name == scheme for r in result.rows]
    seeds = sorted({r["seed"] for r in mine})
    for protocol in PROTOCOLS:
      of_protocol = [r for r in mine if r["protocol"] == protocol]
      if not of_protocol:
        continue
      row = {"scheme": scheme, "seeds": len(seeds), "train_len": of_protocol[0]["train_len"],
             "protocol": protocol}
      for stats in report.over_seeds(of_protocol, ("length",), ("perplexity",)):
        row[f"ppl@{stats['length']}"] = (stats["perplexity"] if len(seeds) == 1
                                         else report.mean_std(stats, "perplexity", digits=2))
      rows.append(row)
  return rows


def write_comparison(results: Sequence[ExtrapolationResult], out_dir: str, *,
                     name: str = "comparison") -> dict[str, str]:
  """`<name>.csv` (every row of every scheme and seed), `<name>.md` (perplexity by scheme,
  protocol and length; mean ± std over seeds) and `<name>.png` (one color per scheme; solid:
  windows, dashed: sliding; the range over seeds shaded) under `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  all_rows = [r for result in results for r in result.rows]
  notes = list(dict.fromkeys(n for result in results for n in result.notes))
  series = []
  for i, scheme in enumerate(dict.fromkeys(result.name for result in results)):
    rows = [r for result in results if result.name == scheme for r in result.rows]
    for s in protocol_series(rows, label_prefix=f"{scheme} "):
      s.style = {**s.style, "color": f"C{i % 10}"}
      series.append(s)
  train_lens = sorted({r.train_len for r in results})
  return {
      "csv": report.write_csv(os.path.join(out_dir, f"{name}.csv"), all_rows),
      "md": report.write_markdown(
          os.path.join(out_dir, f"{name}.md"), comparison_rows(results),
          title="Validation perplexity by evaluation length"
          + (f", on {results[0].data}" if results and results[0].data else ""), notes=notes,
          intro=f"Trained at {', '.join(map(str, train_lens))} tokens. `windows`: "
                "non-overlapping windows; `sliding`: each token scored once in a sliding "
                "window (see posjax/evaluate/extrapolation.py). Empty cells: skipped."),
      "png": report.line_plot(
          os.path.join(out_dir, f"{name}.png"), series, xlabel="evaluation length (tokens)",
          ylabel="validation perplexity", title="Perplexity vs length (solid: windows, "
          "dashed: sliding)", log2_x=True, log_y=True,
          vlines=[(n, f"train length {n}") for n in train_lens], size=(8.0, 5.5)),
  }
