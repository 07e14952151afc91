"""Counters of the training loop: `Every` (when to train, log, evaluate) and `Mean` (metrics
averaged over a log interval). Steps here are agent steps."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


class Every:
  """Fires on the first call, then whenever `step` reached `last + every` (agent steps).

  `every <= 0` never fires. After a jump of several periods it fires once and moves `last` to the
  latest period boundary, so a resumed or vectorised run does not fire in a burst. `start(step)`
  begins the first period at `step` without firing.
  """

  def __init__(self, every: int):
    self.every = int(every)
    self.last: int | None = None

  def start(self, step: int) -> None:
    """Starts counting at `step` (no fire now, the next at `step + every`), unless already
    started (e.g. restored from a checkpoint)."""
    if self.last is None:
      self.last = int(step)

  def next(self, step: int) -> int | None:
    """The agent step at which it fires next (None: never)."""
    if self.every <= 0:
      return None
    return int(step) if self.last is None else self.last + self.every

  def __call__(self, step: int) -> bool:
    if self.every <= 0:
      return False
    if self.last is None:
      self.last = int(step)
      return True
    if step >= self.last + self.every:
      self.last += (int(step) - self.last) // self.every * self.every
      return True
    return False


class Mean:
  """Averages scalar metrics over a log interval: add(dict of scalars), then result()."""

  def __init__(self):
    self._sums: dict[str, float] = {}
    self._counts: dict[str, int] = {}

  def add(self, metrics: Mapping[str, Any]) -> None:
    for key, value in metrics.items():
      value = np.asarray(value.numpy() if hasattr(value, 'numpy') else value, np.float64)
      if value.size != 1:
        continue
      self._sums[key] = self._sums.get(key, 0.0) + float(value.reshape(()))
      self._counts[key] = self._counts.get(key, 0) + 1

  def result(self, reset: bool = True) -> dict[str, float]:
    out = {k: self._sums[k] / self._counts[k] for k in self._sums}
    if reset:
      self._sums.clear()
      self._counts.clear()
    return out
