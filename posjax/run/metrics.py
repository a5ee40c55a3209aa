"""Metrics out of a run: TensorBoard event files, a JSON-lines log, and a console progress line.

`MetricsWriter` writes every scalar twice under the workdir:
  - `<workdir>/tensorboard/`: TensorBoard event files (tensorboardX), for curves;
  - `<workdir>/metrics.jsonl`: one JSON object per call, `{"step", "time", **scalars}`, for
    scripts and reports. Non-finite values are written as the strings "NaN", "Infinity" and
    "-Infinity" (valid JSON; Python's `float()` reads them back).
Only the primary process writes anything: pass `is_primary=jax.process_index() == 0`, or None to
have the writer ask JAX itself.

Resuming: a run that crashed or was preempted after its last checkpoint (at step s) had logged
steps after s, and the resumed run runs and logs them again. Given `start_step=s`, the writer
keeps each step once:
  - `metrics.jsonl` is cut back to the records of steps <= s (what scripts, reports and plots
    read), as is a last line cut short by a crash;
  - event files cannot be edited in place, so the writer's new event file starts with
    `SessionLog.START` at step s + 1 (tensorboardX's `purge_step`): TensorBoard then hides the
    older points at steps > s (its default `--purge_orphaned_data`; the Rust data server drops a
    tag's older points at steps >= each newly read one anyway). Other readers of the raw event
    files (tbparse, `EventFileLoader`) see both copies of those steps.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping, Optional

from absl import logging

try:
  import tqdm as _tqdm
except ImportError:  # optional: plain log lines without it
  _tqdm = None


def _scalar(value: Any) -> float:
  """A Python float from a number, numpy scalar or a size-1 (jax) array."""
  if hasattr(value, "item"):
    value = value.item()
  return float(value)


def _json_number(value: float):
  if math.isfinite(value):
    return value
  return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _is_primary() -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


class MetricsWriter:
  """Scalars to TensorBoard and `metrics.jsonl` under `workdir`; a no-op off the primary process.

  Args:
    workdir: the run's directory.
    is_primary: whether this process writes; None asks JAX (`process_index() == 0`).
    start_step: the step the run (re)starts from, 0 for a fresh one: what was logged after it is
      dropped (see the module docstring). None appends to the history as it is.
  """

  def __init__(self, workdir: str | os.PathLike, *, is_primary: Optional[bool] = True,
               start_step: Optional[int] = None):
    self.workdir = os.fspath(workdir)
    self.is_primary = _is_primary() if is_primary is None else bool(is_primary)
    self.jsonl_path = os.path.join(self.workdir, "metrics.jsonl")
    self.tensorboard_dir = os.path.join(self.workdir, "tensorboard")
    self._tb = None
    self._jsonl = None
    if self.is_primary:
      os.makedirs(self.workdir, exist_ok=True)
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ImportError("MetricsWriter writes TensorBoard files with tensorboardX: "
                          "pip install tensorboardX") from e
      if start_step is not None:
        _truncate_jsonl(self.jsonl_path, int(start_step))
      # A unique, time-ordered file name: tensorboardX's own (seconds.hostname) is the same for
      # two writers started within a second, and the second would overwrite the first's file.
      self._tb = SummaryWriter(logdir=self.tensorboard_dir, flush_secs=30,
                               purge_step=None if start_step is None else int(start_step) + 1,
                               filename_suffix=f".{time.time_ns()}")
      self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """One JSONL record and one TensorBoard point per scalar (names like "train/loss").

    None values (say an MFU that cannot be known on this device) are left out.
    """
    if not self.is_primary:
      return
    step = int(step)
    values = {str(k): _scalar(v) for k, v in scalars.items() if v is not None}
    for name, value in values.items():
      self._tb.add_scalar(name, value, global_step=step)
    record = {"step": step, "time": time.time()}
    record.update({k: _json_number(v) for k, v in values.items()})
    self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
    self._jsonl.flush()

  def write_text(self, tag: str, text: str, step: int = 0) -> None:
    if self.is_primary:
      self._tb.add_text(tag, text, global_step=int(step))

  def write_config(self, config: Mapping[str, Any]) -> None:
    """The run's configuration as a TensorBoard text entry (`config.json` in the workdir is
    written by `posjax.run.record`). Values JSON cannot hold become strings."""
    if not self.is_primary:
      return
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    text = json.dumps(config, indent=2, sort_keys=True, default=str)
    self._tb.add_text("config", "```\n" + text + "\n```", global_step=0)

  def flush(self) -> None:
    if self.is_primary:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.is_primary and self._tb is not None:
      self._tb.close()
      self._jsonl.close()
      self._tb = self._jsonl = None
      self.is_primary = False  # later writes are no-ops, not errors on a closed file

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _record_step(line: str) -> float:
  """The step of a JSONL record; infinity for a line that does not parse (cut short by a crash)."""
  try:
    return float(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return math.inf


def _truncate_jsonl(path: str, step: int) -> None:
  """Keep the records of `path` up to `step`, rewriting the file (atomically) if any goes."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = [line.rstrip("\n") for line in f if line.strip()]
  kept = [line for line in lines if _record_step(line) <= step]
  if len(kept) < len(lines):
    logging.info("resuming at step %d: dropping the %d records logged after it from %s", step,
                 len(lines) - len(kept), path)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.write("".join(line + "\n" for line in kept))
    os.replace(path + ".tmp", path)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  """The records of a `metrics.jsonl`, with "NaN"/"Infinity" strings turned back into floats."""
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        records.append({k: float(v) if v in ("NaN", "Infinity", "-Infinity") else v
                        for k, v in record.items()})
  return records


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def log(text: str, *, stream=None, log_path: Optional[str] = None) -> None:
  """One line of progress wherever the user looks: the console (stderr, also from Python and
  notebooks, where absl's log is silent before `app.run`), the absl log, and `log_path`."""
  print(text, file=stream if stream is not None else sys.stderr, flush=True)
  logging.debug("%s", text)  # the console has it already; absl's log files keep it too
  _append(log_path, text)


def _append(log_path: Optional[str], text: str) -> None:
  if log_path:
    with open(log_path, "a", encoding="utf-8") as f:
      f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")


class Progress:
  """A compact console line: step, loss, tokens/s (and MFU when known), time left.

  On a terminal (with tqdm installed) it is a tqdm bar whose postfix holds the numbers; elsewhere
  (notebooks, CI logs, files) each report is one printed line (see `log`), and there is a report
  only every `every` steps (plus the last step, or when forced), never one per step. Every line
  also goes to `log_path` when given.

  The time left counts training steps only: from the "perf/step_seconds" of the scalars when
  given (the loop measures steps alone, without compilation, validation or saving), else from
  the wall time between reports.

  Call `update(step, scalars)` with the number of finished steps, either every step or only on
  logging steps. `scalars` may be the dict written to `MetricsWriter`: "train/loss" (or "loss")
  and "perf/tokens_per_second" (or "tokens_per_second") are shown, "perf/mfu" as a percentage.
  Without a tokens/s entry, pass `tokens=` (tokens since the previous call) and the rate is
  measured here.
  """

  LOSS_KEYS = ("train/loss", "loss")
  RATE_KEYS = ("perf/tokens_per_second", "tokens_per_second")
  MFU_KEYS = ("perf/mfu", "mfu")
  STEP_SECONDS_KEYS = ("perf/step_seconds", "step_seconds")

  def __init__(self, total_steps: int, *, every: int = 50, start: int = 0,
               use_tqdm: Optional[bool] = None, stream=None, log_path: Optional[str] = None):
    self.total_steps = int(total_steps)
    self.every = max(int(every), 1)
    self._stream = stream if stream is not None else sys.stderr
    if use_tqdm is None:
      use_tqdm = hasattr(self._stream, "isatty") and self._stream.isatty()
    self._bar = None
    if use_tqdm and _tqdm is not None:
      self._bar = _tqdm.tqdm(total=self.total_steps, initial=int(start), file=self._stream,
                             dynamic_ncols=True, mininterval=1.0, unit="step")
    self.log_path = log_path
    self._last_step = self._reported_step = int(start)
    self._window_time = time.perf_counter()
    self._window_tokens = 0
    self._step_seconds = math.nan
    self.last_line = ""

  def update(self, step: int, scalars: Optional[Mapping[str, Any]] = None, *,
             tokens: int = 0, force: bool = False, **extra: Any) -> Optional[str]:
    """Account for `step` finished steps; return the reported line, or None if not reported.

    A step is reported when it is a multiple of `every`, the last one, or `force` is set.
    `extra` values (floats) are shown after the loss under their own names.
    """
    step = int(step)
    self._window_tokens += int(tokens)
    if self._bar is not None:
      self._bar.update(max(step - self._last_step, 0))
    self._last_step = step
    if not (force or step % self.every == 0 or step >= self.total_steps):
      return None
    scalars = dict(scalars or {})
    now = time.perf_counter()
    rate = _first(scalars, self.RATE_KEYS)
    if rate is None and self._window_tokens:
      rate = self._window_tokens / max(now - self._window_time, 1e-9)
    step_seconds = _first(scalars, self.STEP_SECONDS_KEYS)
    if step_seconds is None and step > self._reported_step:
      step_seconds = (now - self._window_time) / (step - self._reported_step)
    if step_seconds is not None:
      self._step_seconds = step_seconds
    self._window_time, self._window_tokens, self._reported_step = now, 0, step
    eta = self._step_seconds * (self.total_steps - step)

    fields = {}
    loss = _first(scalars, self.LOSS_KEYS)
    if loss is not None:
      fields["loss"] = f"{loss:.4f}"
    fields.update({k: f"{_scalar(v):.4g}" for k, v in extra.items()})
    if rate is not None:
      fields["tok/s"] = f"{rate:,.0f}"
    mfu = _first(scalars, self.MFU_KEYS)
    if mfu is not None:
      fields["mfu"] = f"{100 * mfu:.1f}%"
    fields["eta"] = _duration(eta)
    width = len(str(self.total_steps))
    self.last_line = (f"step {step:>{width}}/{self.total_steps} "
                      + " ".join(f"{k} {v}" for k, v in fields.items()))
    if self._bar is not None:
      self._bar.set_postfix(fields, refresh=True)
      _append(self.log_path, self.last_line)
    else:
      log(self.last_line, stream=self._stream, log_path=self.log_path)
    return self.last_line

  def message(self, text: str) -> None:
    """A line of its own (above the bar on a terminal, a log line otherwise)."""
    if self._bar is not None:
      self._bar.write(text, file=self._stream)
      _append(self.log_path, text)
    else:
      log(text, stream=self._stream, log_path=self.log_path)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _first(scalars: Mapping[str, Any], keys) -> Optional[float]:
  for key in keys:
    if key in scalars and scalars[key] is not None:
      return _scalar(scalars[key])
  return None
