"""Early stopping on a validation metric, with the state a checkpoint keeps."""

from __future__ import annotations

from typing import Optional


class EarlyStopping:
  """Stop when `metric` has not improved for `patience` evaluations in a row (0: never)."""

  def __init__(self, patience: int, metric: str, mode: str = "min"):
    self.patience, self.metric, self.mode = patience, metric, mode
    self.sign = 1.0 if mode == "min" else -1.0
    self.best, self._since = None, 0

  def update(self, metrics: dict) -> bool:
    """Record one evaluation; True when training should stop."""
    if not self.patience or not self.metric or self.metric not in metrics:
      return False
    value = float(metrics[self.metric])
    if self.best is None or self.sign * value < self.sign * self.best:
      self.best, self._since = value, 0
    else:
      self._since += 1
    return self.should_stop

  @property
  def should_stop(self) -> bool:
    return bool(self.patience) and self._since >= self.patience

  def state_dict(self) -> dict:
    """What a checkpoint keeps, so that a resumed run stops where an uninterrupted one would."""
    return {"metric": self.metric, "mode": self.mode, "best": self.best,
            "evaluations_since_best": self._since}

  def load_state_dict(self, state: Optional[dict]) -> None:
    """Go on from a checkpoint's `state_dict()`; start afresh without one (a fresh run, an older
    checkpoint) or when it ranked by another metric or direction."""
    if state and (state["metric"], state["mode"]) == (self.metric, self.mode):
      self.best, self._since = state["best"], int(state["evaluations_since_best"])
