"""Training logs: a terminal line, `metrics.jsonl` and TensorBoard (docs/reference.md §6, §8).

Every record carries one `step`, in FRAMES (agent steps × action_repeat): the unit of every
logged step in this port and in the authors' score files. The caller converts; this module never
sees agent steps.

Outputs:
- `TerminalOutput`: one line per record, `[frames 1,234,000] train_return -20.3 | model_loss ...`,
  showing a fixed list of main keys first (or every key when none of them is present).
- `JSONLOutput`: `<logdir>/metrics.jsonl`, one JSON object per line, `{"step": frames, key: value}`.
  Non-finite values (NaN, ±inf) are written as `null` (JSON has no NaN); the terminal shows them.
- `TensorBoardOutput`: `tf.summary` scalars under their plain names (`model_loss`, `eval_return`,
  ...) and videos (`uint8 [T, H, W, C]`) as animated GIFs in TensorBoard's image dashboard.

`logger` depends on nothing else in this package; TensorFlow and PIL are imported only by the
TensorBoard output.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
import pathlib
import sys
import tempfile
from typing import Any, Mapping, Sequence, TextIO

import numpy as np

# Keys the terminal line shows first, in this order (docs/reference.md §8 names).
MAIN_KEYS = (
    'train_return', 'train_length', 'eval_return', 'eval_length', 'model_loss', 'image_loss',
    'reward_loss', 'discount_loss', 'model_kl', 'actor_loss', 'actor_ent', 'critic_loss',
    'updates', 'updates_per_sec', 'update_seconds', 'env_steps_per_sec', 'fps')


def _finite_or_none(value: int | float) -> int | float | None:
  return value if math.isfinite(value) else None


def _to_scalar(value: Any) -> int | float:
  """Converts a Python/numpy/TF scalar to int (integer or bool dtypes) or float.

  Raises:
    TypeError: for a value that is not a single number.
  """
  if hasattr(value, 'numpy'):
    value = value.numpy()
  array = np.asarray(value)
  if array.size != 1:
    raise TypeError(f'Expected a scalar, got an array of shape {array.shape}.')
  array = array.reshape(())
  if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
    return int(array)
  return float(array)


def format_value(value: float) -> str:
  """Terminal formatting: integers with thousands separators, other floats with 4 digits."""
  if math.isfinite(value) and float(value).is_integer() and abs(value) < 1e15:
    return f'{int(value):,}'
  return f'{value:.4g}'


class TerminalOutput:
  """Prints `[frames N] key value | key value ...` lines to a stream (stdout by default).

  Args:
    keys: keys shown first, in order; other keys are shown after them only when `show_all`,
      or when none of `keys` is present in a record.
  """

  def __init__(self, keys: Sequence[str] = MAIN_KEYS, show_all: bool = False,
               stream: TextIO | None = None):
    self._keys = tuple(keys)
    self._show_all = show_all
    self._stream = stream

  def __call__(self, step: int, scalars: Mapping[str, float],
               videos: Mapping[str, np.ndarray]) -> None:
    del videos
    if not scalars:
      return
    shown = [k for k in self._keys if k in scalars]
    if self._show_all or not shown:
      shown += sorted(k for k in scalars if k not in shown)
    parts = ' | '.join(f'{k} {format_value(scalars[k])}' for k in shown)
    stream = self._stream or sys.stdout
    print(f'[frames {step:,}] {parts}', file=stream, flush=True)

  def close(self) -> None:
    pass


class JSONLOutput:
  """Appends one JSON object per record to `path`: `{"step": frames, key: value, ...}`.

  Each record is written with one `write` call and flushed, so a killed process leaves at most
  its last line incomplete; `rewind` moves such a line aside.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._file = None

  def __call__(self, step: int, scalars: Mapping[str, float],
               videos: Mapping[str, np.ndarray]) -> None:
    del videos
    if not scalars:
      return
    record = {'step': int(step)}
    record.update({k: _finite_or_none(v) for k, v in scalars.items()})
    if self._file is None:
      self._file = open(self.path, 'a')
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()

  def rewind(self, step: int) -> tuple[int, pathlib.Path | None]:
    """Moves records with `step` > `step` (and unparsable lines) out of the file.

    Used when a run resumes from a checkpoint older than the last records (the process was
    killed after the checkpoint): those records will be produced again. They are appended to
    `metrics.jsonl.after-checkpoint-<UTC time>` next to the file, never deleted. The file is
    rewritten atomically. Returns (number of lines moved, path they went to or None).
    """
    if self._file is not None:
      self._file.close()
      self._file = None
    if not self.path.exists():
      return 0, None
    keep, moved = [], []
    for line in self.path.read_text().splitlines(keepends=True):
      try:
        record = json.loads(line)
        ok = line.endswith('\n') and int(record['step']) <= step
      except (ValueError, KeyError, TypeError):
        ok = False
      (keep if ok else moved).append(line if line.endswith('\n') else line + '\n')
    if not moved:
      return 0, None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%SZ')
    aside = self.path.with_name(f'{self.path.name}.after-checkpoint-{stamp}')
    with open(aside, 'a') as f:
      f.writelines(moved)
    fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix='.tmp-', suffix='.jsonl')
    with os.fdopen(fd, 'w') as f:
      f.writelines(keep)
    os.chmod(tmp, self.path.stat().st_mode & 0o777)
    os.replace(tmp, self.path)
    return len(moved), aside

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None


def encode_gif(video: np.ndarray, fps: int = 10) -> bytes:
  """Encodes `uint8 [T, H, W, C]` (C = 1 or 3) as an animated GIF (looping). Needs PIL."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  video = np.asarray(video)
  if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] not in (1, 3):
    raise ValueError(
        f'Expected a uint8 video [T, H, W, 1 or 3], got {video.dtype} {video.shape}.')
  frames = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in video]
  buffer = io.BytesIO()
  frames[0].save(buffer, format='GIF', save_all=True, append_images=frames[1:],
                 duration=max(1, int(1000 / fps)), loop=0)
  return buffer.getvalue()


class TensorBoardOutput:
  """Writes `tf.summary` scalars and GIF videos to event files in `logdir`.

  Videos are `uint8 [T, H, W, C]` arrays, written in the image plugin's format (width, height,
  encoded image) so TensorBoard's image dashboard plays them.
  """

  def __init__(self, logdir: str | os.PathLike, fps: int = 10):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    self._tf = tf
    self._fps = fps
    self._writer = tf.summary.create_file_writer(str(logdir), max_queue=1000)

  def __call__(self, step: int, scalars: Mapping[str, float],
               videos: Mapping[str, np.ndarray]) -> None:
    tf = self._tf
    with self._writer.as_default():
      for key, value in scalars.items():
        tf.summary.scalar(key, value, step=step)
      for key, video in videos.items():
        self._video(key, np.asarray(video), step)
    self._writer.flush()

  def _video(self, key: str, video: np.ndarray, step: int) -> None:
    from tensorboard.plugins.image import metadata  # pylint: disable=import-outside-toplevel
    tf = self._tf
    if video.ndim == 3:
      video = video[None]
    if np.issubdtype(video.dtype, np.floating):
      video = (np.clip(video, 0, 1) * 255).astype(np.uint8)
    _, height, width, _ = video.shape
    gif = encode_gif(video, self._fps)
    tensor = tf.constant([str(width), str(height), gif], dtype=tf.string)
    tf.summary.write(key, tensor, step=step,
                     metadata=metadata.create_summary_metadata(key, 'open-loop video'))

  def close(self) -> None:
    self._writer.close()


class Logger:
  """Sends records to every output; the step of each record is in frames.

  Args:
    outputs: callables `output(step_frames, scalars, videos)` with a `close()` method, e.g.
      `[TerminalOutput(), JSONLOutput(p), TensorBoardOutput(d)]`.

  `write(step, scalars, videos, terminal=...)`: `terminal=True` prints the same scalars,
  `False` prints nothing (e.g. one line per training episode would be too many), a mapping
  prints that mapping instead (e.g. the interval's mean return beside the losses).
  """

  def __init__(self, outputs: Sequence[Any]):
    self.outputs = list(outputs)

  def write(self, step: int, scalars: Mapping[str, Any] | None = None,
            videos: Mapping[str, np.ndarray] | None = None,
            terminal: bool | Mapping[str, Any] = True) -> None:
    """Writes one record at `step` (frames). Scalars may be Python, numpy or TF scalars."""
    scalars = {k: _to_scalar(v) for k, v in (scalars or {}).items()}
    videos = dict(videos or {})
    for output in self.outputs:
      if isinstance(output, TerminalOutput):
        if terminal is True:
          output(step, scalars, videos)
        elif terminal:
          output(step, {k: _to_scalar(v) for k, v in terminal.items()}, {})
      else:
        output(step, scalars, videos)

  def rewind(self, step: int) -> tuple[int, pathlib.Path | None]:
    """Moves JSONL records after `step` (frames) aside; see `JSONLOutput.rewind`."""
    moved, path = 0, None
    for output in self.outputs:
      if isinstance(output, JSONLOutput):
        moved, path = output.rewind(step)
    return moved, path

  def close(self) -> None:
    for output in self.outputs:
      output.close()
