"""Checkpoints that resume a run exactly where it stopped (docs/reference.md §6; issue 5).

One `tf.train.Checkpoint` holds, by attribute name:
- `agent`: the agent (`tf.Module`): world model, actor, critic, target critic, the three
  optimisers with their slots, iteration counts and loss scales, and `agent.updates`; with
  `expl_behavior` other than greedy also `agent.expl` (expl.py): the ensemble (`disag<i>`) or
  head, the explorer's actor-critic and its updates counter, the reward normalisers, and its three
  optimisers;
- `step`: the int64 agent-step counter (frames = step × action_repeat);
- `tf_rng`: TensorFlow's global `tf.random.Generator`;
- `host`: a `HostState` (JSON): Python's `random` state, numpy's global state, named numpy
  Generators (the prefill policy's) and the loop's counters (when it last trained, logged,
  evaluated).
Replay episodes are not in it: they are files on disk and reload on restart.

What cannot be checkpointed: the internal state of TF's stateful random ops seeded by
`tf.random.set_seed` (op-level seeds), and the environments' emulator state; a resumed run
therefore does not repeat the exact random stream of an uninterrupted one.

`tf.train.CheckpointManager` writes `<dir>/ckpt-<agent step>.{index,data-*}` and the `checkpoint`
state file (atomically) and keeps the latest `max_to_keep` checkpoints, deleting older ones;
the loop says so at start-up. A failed write (full disk, read-only logdir) raises
`CheckpointWriteError` naming the path and removes the partial files. A process killed while saving leaves the state file pointing at the
previous complete checkpoint. Variables created after `restore()` (Keras layers build lazily,
optimiser slots appear on the first update) are restored when they are created (TF's deferred
restoration).
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import random
import shutil
from typing import Any, Callable, Mapping

import numpy as np
import tensorflow as tf

from dreamerv2_tf.faults import CheckpointWriteError

MAX_TO_KEEP = 3


class CheckpointError(ValueError):
  """No checkpoint of a folder can be read back; the message names each one and why."""


class HostState(tf.train.experimental.PythonState):
  """Random-number and counter state of the host program, saved as JSON inside the checkpoint.

  Args:
    generators: named numpy Generators whose bit-generator state is saved and restored in place.
    get_extra / set_extra: callables returning / receiving a JSON-able dict (e.g. loop counters).
  """

  def __init__(self, generators: Mapping[str, np.random.Generator] | None = None,
               get_extra: Callable[[], dict] | None = None,
               set_extra: Callable[[dict], None] | None = None):
    self.generators = dict(generators or {})
    self.get_extra = get_extra
    self.set_extra = set_extra
    self.restored: dict | None = None

  def serialize(self) -> str:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    data = {
        'python_random': _to_json(random.getstate()),
        'numpy_global': [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        'generators': {k: _to_json(g.bit_generator.state) for k, g in self.generators.items()},
        'extra': self.get_extra() if self.get_extra else {},
    }
    return json.dumps(data)

  def deserialize(self, string_value) -> None:
    if isinstance(string_value, bytes):
      string_value = string_value.decode()
    data = json.loads(string_value)
    version, internal, gauss = data['python_random']
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = data['numpy_global']
    np.random.set_state((kind, np.asarray(keys, np.uint32), pos, has_gauss, cached))
    for name, state in data['generators'].items():
      if name in self.generators:
        self.generators[name].bit_generator.state = state
    if self.set_extra:
      self.set_extra(data['extra'])
    self.restored = data


def _to_json(value: Any) -> Any:
  if isinstance(value, tuple):
    return [_to_json(v) for v in value]
  if isinstance(value, dict):
    return {k: _to_json(v) for k, v in value.items()}
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.integer):
    return int(value)
  return value


class Checkpointer:
  """`tf.train.Checkpoint` + `CheckpointManager` over the given trackable objects.

  Args:
    directory: where checkpoints go, e.g. `<logdir>/checkpoints`.
    step: the int64 agent-step `tf.Variable`; it numbers the checkpoints.
    max_to_keep: older checkpoints beyond this many are deleted by the manager.
    **objects: trackables saved under these names (`agent=agent, host=HostState(...)`).
  """

  def __init__(self, directory: str | os.PathLike, step: tf.Variable,
               max_to_keep: int = MAX_TO_KEEP, **objects):
    self.directory = pathlib.Path(directory)
    self.max_to_keep = max_to_keep
    self.step = step
    self.checkpoint = tf.train.Checkpoint(step=step, **objects)
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, str(self.directory), max_to_keep=max_to_keep, checkpoint_name='ckpt')
    self._last_saved_key = None

  @property
  def latest(self) -> str | None:
    """Path prefix of the newest complete checkpoint, or None."""
    return self.manager.latest_checkpoint

  def save(self, key: Any = None) -> str:
    """Saves a checkpoint numbered by the current agent step; returns its path prefix.

    `key` (e.g. (step, updates)): when equal to the previous save's key nothing is written and
    the previous path is returned, so saving twice at the same point never overwrites a
    complete checkpoint in place.

    Raises:
      CheckpointWriteError: the write failed (full disk, read-only folder): the message names
        the checkpoint and the OS error; the partial files are removed and the earlier
        checkpoints (and the state file naming them) are untouched.
    """
    if key is not None and key == self._last_saved_key and self.latest:
      return self.latest
    number = int(self.step.numpy())
    try:
      path = self.manager.save(checkpoint_number=number)
    except (OSError, tf.errors.OpError) as e:
      prefix = self.directory / f'ckpt-{number}'
      self._remove_partial(prefix)
      reason = getattr(e, 'strerror', None) or getattr(e, 'message', None) or str(e)
      where = getattr(e, 'filename', None) or prefix
      raise CheckpointWriteError(
          f'Cannot write checkpoint {prefix} ({type(e).__name__}: '
          f'{" ".join(str(reason).split())[:200]}; at {where}); removed its partial files, '
          f'{self.latest or "no earlier checkpoint"} stays the latest. Free disk space or make '
          f'{self.directory} writable, then run again to resume.') from e
    self._last_saved_key = key
    return path

  def _remove_partial(self, prefix: pathlib.Path) -> None:
    """Deletes the files of an unfinished save at `prefix` (its data, index and TF's
    `<prefix>_temp` folder) unless the state file on disk lists that checkpoint as complete."""
    state = tf.train.get_checkpoint_state(str(self.directory))
    listed = {pathlib.Path(p).name for p in (state.all_model_checkpoint_paths if state else [])}
    if prefix.name in listed:
      return
    for file in prefix.parent.glob(prefix.name + '*'):
      rest = file.name[len(prefix.name):]
      if rest == '.index' or rest.startswith('.data-') or rest.startswith('_temp'):
        if file.is_dir():
          shutil.rmtree(file, ignore_errors=True)
        else:
          file.unlink(missing_ok=True)

  def restore_readable(self, warn: Callable[[str], None] = print):
    """Restores the newest checkpoint whose files read back completely (`unreadable`).

    Newer ones that do not read (a data file truncated by a full disk or a copy cut short)
    are renamed aside to `unreadable-<UTC time>-ckpt-<N>.*` (never deleted: the manager would
    otherwise rotate them away, or a save at the same step overwrite them) and dropped from the
    manager's list; `warn` gets one line naming each.

    Returns:
      the load status as `restore` does, or None when there is no checkpoint.
    Raises:
      CheckpointError: there are checkpoints but none reads back (nothing is moved then).
      tf errors / ValueError: the readable checkpoint does not fit the objects (see `restore`).
    """
    paths = list(reversed(self.manager.checkpoints))  # newest first
    bad = []
    for path in paths:
      reason = unreadable(path)
      if reason is None:
        break
      bad.append((path, reason))
    else:
      if bad:
        raise CheckpointError(
            f'No checkpoint in {self.directory} can be read: ' + '; '.join(
                f'{pathlib.Path(p).name} ({r})' for p, r in bad) + '. Restore them from a '
            'backup, or move the checkpoints folder away to start over from the episodes on '
            'disk.')
      return None
    for path, reason in bad:
      aside = set_aside(path)
      warn(f'Warning: checkpoint {path} cannot be read ({reason}); kept it as '
           f'{aside.name}.* and resuming from the previous one.')
    if bad:
      self._forget([p for p, _ in bad])
    return self.restore()

  def _forget(self, paths: list[str]) -> None:
    """Drops `paths` from the manager's state file and rebuilds the manager over it."""
    state = tf.train.get_checkpoint_state(str(self.directory))
    names = {pathlib.Path(p).name for p in paths}
    stamps = list(state.all_model_checkpoint_timestamps)
    stamps += [None] * (len(state.all_model_checkpoint_paths) - len(stamps))
    keep = [(pathlib.Path(p).name, t) for p, t in zip(state.all_model_checkpoint_paths, stamps)
            if pathlib.Path(p).name not in names]
    # The state file as the manager writes it (relative names, so the run folder can move),
    # atomically.
    lines = [f'model_checkpoint_path: {json.dumps(keep[-1][0])}']
    lines += [f'all_model_checkpoint_paths: {json.dumps(p)}' for p, _ in keep]
    lines += [f'all_model_checkpoint_timestamps: {t!r}' for _, t in keep if t is not None]
    lines.append(f'last_preserved_timestamp: {state.last_preserved_timestamp!r}')
    tmp = self.directory / '.tmp-checkpoint'
    tmp.write_text('\n'.join(lines) + '\n')
    os.replace(tmp, self.directory / 'checkpoint')
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, str(self.directory), max_to_keep=self.max_to_keep,
        checkpoint_name='ckpt')

  def restore(self, path: str | None = None):
    """Restores `path` (default: the latest checkpoint). Returns the load status, or None when
    there is no checkpoint. Raises a tf error when the checkpoint does not fit the objects."""
    path = path or self.latest
    if not path:
      return None
    status = self.checkpoint.restore(path)
    status.assert_nontrivial_match()
    return status


def is_complete(status) -> bool:
  """True when every value in the restored checkpoint has found its variable (none deferred)."""
  try:
    status.assert_consumed()
    return True
  except AssertionError:
    return False


def unreadable(path: str) -> str | None:
  """Why the checkpoint with prefix `path` cannot be read back, or None when it can.

  Reads every saved value once (one at a time), so a truncated data file (`IndexError: Read
  less bytes than requested`), a checksum mismatch or a missing file is found before any
  object is restored, whatever TF would otherwise defer to the first update.
  """
  try:
    reader = tf.train.load_checkpoint(path)
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  except (IndexError, ValueError, tf.errors.OpError) as e:
    text = ' '.join(str(e).split())
    return f'{type(e).__name__}: {text[:200]}'
  return None


def set_aside(path: str) -> pathlib.Path:
  """Renames the files of checkpoint `path` to the prefix `unreadable-<UTC time>-<name>` in the
  same folder (a prefix CheckpointManager never deletes); returns the new prefix."""
  path = pathlib.Path(path)
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%SZ')
  aside = path.with_name(f'unreadable-{stamp}-{path.name}')
  for file in sorted(path.parent.glob(path.name + '.*')):
    suffix = file.name[len(path.name):]
    if suffix == '.index' or suffix.startswith('.data-'):
      os.replace(file, aside.with_name(aside.name + suffix))
  return aside


def latest_readable(directory: str | os.PathLike,
                    warn: Callable[[str], None] = print) -> str | None:
  """The newest checkpoint prefix in `directory` that reads back (`unreadable`), without
  changing anything on disk; `warn` gets one line for each newer unreadable one.

  Returns None when the folder holds no checkpoint.
  Raises:
    CheckpointError: there are checkpoints but none reads back.
  """
  state = tf.train.get_checkpoint_state(str(directory))
  if state is None or not state.model_checkpoint_path:
    return None
  paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
  if state.model_checkpoint_path not in paths:
    paths.append(state.model_checkpoint_path)
  bad = []
  for path in reversed(paths):
    reason = unreadable(path)
    if reason is None:
      for bad_path, bad_reason in bad:
        warn(f'Warning: checkpoint {bad_path} cannot be read ({bad_reason}); using {path}.')
      return path
    bad.append((path, reason))
  raise CheckpointError(
      f'No checkpoint in {directory} can be read: ' + '; '.join(
          f'{pathlib.Path(p).name} ({r})' for p, r in bad) + '.')


def read_variables(path: str) -> dict[str, np.ndarray]:
  """{checkpoint key: value} of a saved checkpoint without building any object (for tests and
  tools). Keys look like `step/.ATTRIBUTES/VARIABLE_VALUE`."""
  reader = tf.train.load_checkpoint(path)
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
          if name != '_CHECKPOINTABLE_OBJECT_GRAPH'}
