"""Checkpoints that resume a run exactly where it stopped (SPEC.md §6; issue 5).

One `tf.train.Checkpoint` holds, by attribute name:
- `agent`: the agent (`tf.Module`): world model, actor, critic, target critic, the three
  optimisers with their slots, iteration counts and loss scales, and `agent.updates`;
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
the loop says so at start-up. A process killed while saving leaves the state file pointing at the
previous complete checkpoint. Variables created after `restore()` (Keras layers build lazily,
optimiser slots appear on the first update) are restored when they are created (TF's deferred
restoration).
"""

from __future__ import annotations

import json
import os
import pathlib
import random
from typing import Any, Callable, Mapping

import numpy as np
import tensorflow as tf

MAX_TO_KEEP = 3


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
    """
    if key is not None and key == self._last_saved_key and self.latest:
      return self.latest
    path = self.manager.save(checkpoint_number=int(self.step.numpy()))
    self._last_saved_key = key
    return path

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


def read_variables(path: str) -> dict[str, np.ndarray]:
  """{checkpoint key: value} of a saved checkpoint without building any object (for tests and
  tools). Keys look like `step/.ATTRIBUTES/VARIABLE_VALUE`."""
  reader = tf.train.load_checkpoint(path)
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
          if name != '_CHECKPOINTABLE_OBJECT_GRAPH'}
