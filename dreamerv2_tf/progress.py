"""Progress lines of a run, on the terminal and in `<logdir>/progress.log` alike (issue 11).

- `PrefillProgress`: prefill's bar, rewritten in place on a terminal, else one line per 10% (or
  every 30 s).
- `Heartbeat`: during pretraining and training, at most every `every_s` seconds (config
  `progress_every_s`; 0: at every check), one line with agent steps, frames, updates, updates/s,
  agent steps/s, agent steps and estimated time to the next log and evaluation, and the ETA to
  `steps`. The loop checks it after every environment step and every update, so a line comes
  at least every `every_s` seconds plus one update.

Both append every line they print to the log file (line-buffered), prefixed with the UTC time.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import sys
import time
from typing import TextIO


def format_duration(seconds: float | None) -> str:
  """'45s', '12m05s', '3h07m', '2d04h'; '?' for None or a non-finite value."""
  if seconds is None or not seconds == seconds or seconds in (float('inf'), float('-inf')):
    return '?'
  seconds = max(int(seconds), 0)
  days, rest = divmod(seconds, 86400)
  hours, rest = divmod(rest, 3600)
  minutes, secs = divmod(rest, 60)
  if days:
    return f'{days}d{hours:02d}h'
  if hours:
    return f'{hours}h{minutes:02d}m'
  if minutes:
    return f'{minutes}m{secs:02d}s'
  return f'{secs}s'


class ProgressOutput:
  """Prints lines to `stream` (stdout) and appends them, time-stamped, to `path` (optional)."""

  def __init__(self, path: str | os.PathLike | None = None, stream: TextIO | None = None):
    self.path = pathlib.Path(path) if path else None
    self._stream = stream
    self._file = None

  @property
  def stream(self) -> TextIO:
    return self._stream or sys.stdout

  @property
  def tty(self) -> bool:
    return hasattr(self.stream, 'isatty') and self.stream.isatty()

  def line(self, text: str, in_place: bool = False) -> None:
    """Shows `text`; `in_place` rewrites the terminal's current line (files get every line)."""
    if in_place and self.tty:
      print('\r' + text, end='', file=self.stream, flush=True)
    else:
      print(text, file=self.stream, flush=True)
    if self.path is not None:
      if self._file is None:
        self._file = open(self.path, 'a', buffering=1)
      stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
      self._file.write(f'{stamp} {text}\n')

  def end_line(self) -> None:
    if self.tty:
      print(file=self.stream, flush=True)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None


class PrefillProgress:
  """Prefill's progress bar (agent steps on disk out of `total`)."""

  def __init__(self, total: int, frames_per_step: int, output: ProgressOutput):
    self.total = max(int(total), 1)
    self.frames_per_step = frames_per_step
    self.output = output
    self.begin = self.last_print = time.time()
    self.last_fraction = -1.0
    self.last_done = None

  def update(self, done: int, collected: int, force: bool = False) -> None:
    now = time.time()
    fraction = min(done / self.total, 1.0)
    if self.output.tty:
      due = now - self.last_print >= 0.2
    else:
      due = int(fraction * 10) > int(self.last_fraction * 10) or now - self.last_print >= 30
    if not (due or force) or done == self.last_done:
      return
    self.last_done = done
    rate = collected / max(now - self.begin, 1e-9)
    width = 30
    bar = '#' * int(fraction * width) + '-' * (width - int(fraction * width))
    self.output.line(f'Prefill [{bar}] {done:,}/{self.total:,} agent steps on disk '
                     f'({rate:,.0f} agent steps/s, {rate * self.frames_per_step:,.0f} frames/s)',
                     in_place=True)
    self.last_print = now
    self.last_fraction = fraction

  def close(self) -> None:
    self.output.end_line()


class Heartbeat:
  """The training progress line (see the module docstring).

  Args:
    every_s: seconds between lines; 0 prints at every call.
    total_steps: the run's `steps` (agent steps).
    frames_per_step: action repeat.
    output: where lines go.
    clock: seconds (monotonic); injectable for tests.
  """

  def __init__(self, every_s: float, total_steps: int, frames_per_step: int,
               output: ProgressOutput, clock=time.monotonic):
    self.every_s = float(every_s)
    self.total_steps = int(total_steps)
    self.frames_per_step = int(frames_per_step)
    self.output = output
    self._clock = clock
    self._begin: tuple[float, int, int] | None = None
    self._last = None

  def start(self, step: int, updates: int) -> None:
    """Starts the rate measurement (agent steps/s and updates/s are averaged from here)."""
    now = self._clock()
    self._begin = (now, int(step), int(updates))
    self._last = now

  def __call__(self, phase: str, step: int, updates: int, next_log: int | None = None,
               next_eval: int | None = None, force: bool = False) -> bool:
    """Prints a line when due. `next_log`/`next_eval`: agent step of the next log/evaluation
    (None: none scheduled). Returns True when it printed."""
    now = self._clock()
    if self._begin is None:
      self.start(step, updates)
    if not force and self.every_s > 0 and now - self._last < self.every_s:
      return False
    self._last = now
    seconds = max(now - self._begin[0], 1e-9)
    step_rate = (step - self._begin[1]) / seconds
    update_rate = (updates - self._begin[2]) / seconds
    eta = lambda target: (target - step) / step_rate if step_rate > 0 else None  # pylint: disable=unnecessary-lambda-assignment
    parts = [f'{phase}: agent step {step:,}/{self.total_steps:,} '
             f'(frame {step * self.frames_per_step:,})',
             f'updates {updates:,} ({update_rate:.3g}/s)',
             f'{step_rate:.3g} agent steps/s']
    for name, target in (('log', next_log), ('eval', next_eval)):
      if target is not None:
        parts.append(f'next {name} in {max(target - step, 0):,} agent steps '
                     f'(~{format_duration(eta(target))})')
    parts.append(f'ETA {format_duration(eta(self.total_steps))}')
    self.output.line('[progress] ' + ' | '.join(parts))
    return True
