"""Errors that stop a training run, and the checks that raise them (issue 12).

Every class derives from `RunError` (a RuntimeError): `train.py` prints its one-line message.
- `NonFiniteError`: a loss or gradient norm of an update is NaN or infinite (`check_finite`).
- `EnvFailureError`: an environment failed `env_max_failures` times in a row (see driver.py).
- `CheckpointWriteError`: a checkpoint could not be written (full disk, read-only logdir).
- `Aborted`: a signal arrived during a phase that cannot stop part-way (the first update's
  tracing); the run ends without a checkpoint.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np


class RunError(RuntimeError):
  """A fault that ends a training run; `str(error)` is one line naming the cause."""


class NonFiniteError(RunError):
  """An update produced a NaN or infinite loss or gradient norm.

  Attributes:
    update: the 1-based number of the update (agent.updates after it).
    metrics: {name: value} of the non-finite metrics.
  """

  def __init__(self, message: str, update: int, metrics: Mapping[str, float]):
    super().__init__(message)
    self.update = update
    self.metrics = dict(metrics)


class EnvFailureError(RunError):
  """An environment kept failing; `__cause__` is its last exception."""


class CheckpointWriteError(RunError):
  """A checkpoint could not be written; the message names the path and the OS error."""


class Aborted(RunError):
  """A signal (`signum`) ended the run during a phase that cannot stop part-way."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


def guarded_keys(metrics: Mapping[str, Any], mixed: bool) -> list[str]:
  """The metric names whose values must stay finite: every `*_loss`, and (in float32 only:
  under mixed float16 the loss scaler handles overflowing gradients by skipping the step) every
  `*_grad_norm`. Sorted, for a stable error message."""
  keys = [k for k in metrics if k.endswith('_loss')]
  if not mixed:
    keys += [k for k in metrics if k.endswith('_grad_norm')]
  return sorted(keys)


def check_finite(metrics: Mapping[str, Any], update: int, mixed: bool = False) -> None:
  """Raises NonFiniteError when a guarded metric (`guarded_keys`) of update `update` is NaN/inf.

  Args:
    metrics: the update's metrics (Python, numpy or TF scalars).
    update: the update's number (agent.updates after it), for the message.
    mixed: True under mixed float16 (gradient norms are then not checked).
  """
  bad = {}
  for key in guarded_keys(metrics, mixed):
    value = metrics[key]
    value = np.asarray(value.numpy() if hasattr(value, 'numpy') else value, np.float64)
    if value.size == 1 and not math.isfinite(float(value.reshape(()))):
      bad[key] = float(value.reshape(()))
  if bad:
    names = ', '.join(f'{k} = {v}' for k, v in bad.items())
    raise NonFiniteError(
        f'Update {update:,} gave a non-finite {names}; training stopped before writing a '
        'checkpoint from these weights (the last checkpoint on disk is from before it). Look '
        'for NaN/inf in the episodes (rewards, images) or lower the learning rates.',
        update, bad)
