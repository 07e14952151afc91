"""Training on several devices or machines with `tf.distribute` (README "Training on several
GPUs or machines"; issue 15).

Config keys:
  strategy: 'default' (one device: the GPU if any, else the CPU), 'mirrored'
    (`tf.distribute.MirroredStrategy` over the local GPUs, or over the logical CPU devices of
    `cpu_devices` on a machine without GPUs), 'multi_worker'
    (`tf.distribute.MultiWorkerMirroredStrategy`, one process per machine, configured by the
    `TF_CONFIG` environment variable as TensorFlow documents it).
  cpu_devices: N >= 2 splits the CPU of a machine without GPUs into N logical devices
    (`tf.config.set_logical_device_configuration`), so that every strategy runs on a CPU;
    0 or 1 leave it whole. Ignored (with a note) when a GPU is visible.

How an update is distributed (one synchronous data-parallel step):
  - The global batch `dataset.batch` B is split into B / R sequences per replica (R replicas
    in sync, over all workers); B must be a multiple of R.
  - Each replica computes the same losses as the single-device step on its share: means over
    its B/R × T posterior states (world model) and over the imagined states started from them
    (actor, critic). The shares are equal, so the mean over replicas of these means is the
    global-batch mean, and so is the MEAN all-reduce of their gradients: `Optimizer.apply`
    all-reduces before the global-norm clip, the weight decay, Adam and the loss scaler, so
    every replica applies the same update to its copy of the variables (`replica_mean`).
  - Metrics come back as one value per name: `strategy.reduce(MEAN)` over replicas (equal
    shares, so the means are weighted properly; the `*_std` statistics are means of
    per-replica standard deviations, not the global one).
  - Acting (`Agent.policy`) and the open-loop report run outside `strategy.run`, on one
    device, reading the first copy of each variable.
  - The replay feeds the replicas through `strategy.distribute_datasets_from_function`: each
    worker samples B / R sequences per replica from its own replay.

Checkpoints hold one value per variable whatever the strategy (tf.train.Checkpoint saves the
first copy of a mirrored variable), so a checkpoint written under any strategy restores
under any other.

Not supported: TPUStrategy (untested, no TPU here), ParameterServerStrategy, uneven shares.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from dreamerv2_tf.config import ConfigError

STRATEGIES = ('default', 'mirrored', 'multi_worker')

_STATE: dict[str, Any] = {}  # the process's strategy: {'name', 'strategy', 'cpu_devices'}


def split_cpu(cpu_devices: int) -> str:
  """Splits the CPU into `cpu_devices` logical devices (>= 2; 0 or 1 do nothing).

  Must run before TensorFlow initialises its devices (before any op). Returns a note for
  the start-up line ('' when nothing was done).

  Raises:
    ConfigError: for a negative count, or when the devices were initialised already with
      another split.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  cpu_devices = int(cpu_devices)
  if cpu_devices < 0:
    raise ConfigError(f"Config key 'cpu_devices' is {cpu_devices}; allowed: 0 or 1 (the whole "
                      'CPU) or a number of logical CPU devices >= 2.')
  if cpu_devices <= 1:
    return ''
  if tf.config.list_physical_devices('GPU'):
    return f'cpu_devices: {cpu_devices} ignored (GPUs are visible)'
  cpu = tf.config.list_physical_devices('CPU')[0]
  config = [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_devices)]
  try:
    tf.config.set_logical_device_configuration(cpu, config)
  except RuntimeError:
    have = tf.config.get_logical_device_configuration(cpu) or [None]
    if len(have) != cpu_devices:
      raise ConfigError(
          f'cpu_devices: {cpu_devices} must be set before TensorFlow initialises its devices '
          f'(this process already has {len(have)} logical CPU device(s)); set it in the config '
          'or on the command line, not after building a model.') from None
  return f'CPU split into {cpu_devices} logical devices'


def _tf_config() -> dict:
  text = os.environ.get('TF_CONFIG', '')
  if not text:
    raise ConfigError("strategy: multi_worker needs the TF_CONFIG environment variable, e.g. "
                      '\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": '
                      '{"type": "worker", "index": 0}}\' (README "Training on several GPUs or '
                      'machines").')
  try:
    value = json.loads(text)
    workers = value['cluster']['worker']
    task = value['task']
    index = int(task['index'])
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError(f'TF_CONFIG is not valid ({type(e).__name__}: {e}); it needs '
                      '"cluster": {"worker": [...]} and "task": {"type": "worker", "index": i}.'
                      ) from None
  if task.get('type') not in ('worker', 'chief') or not 0 <= index < len(workers):
    raise ConfigError(f'TF_CONFIG task {task!r} does not name one of the '
                      f'{len(workers)} workers of its cluster.')
  return value


def make_strategy(name: str):
  """The tf.distribute strategy `name` (one of STRATEGIES); call after `split_cpu`.

  Raises:
    ConfigError: for another name, or `multi_worker` without a valid TF_CONFIG.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if name == 'default':
    return tf.distribute.get_strategy()
  if name == 'mirrored':
    if tf.config.list_physical_devices('GPU'):
      return tf.distribute.MirroredStrategy()
    devices = [d.name for d in tf.config.list_logical_devices('CPU')]
    return tf.distribute.MirroredStrategy(devices)
  if name == 'multi_worker':
    _tf_config()
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise ConfigError(f"Config key 'strategy' is {name!r}; allowed: "
                    + ', '.join(repr(s) for s in STRATEGIES) + '.')


def setup(strategy: str = 'default', cpu_devices: int = 0) -> str:
  """Splits the CPU and creates this process's strategy, once (device.setup calls it first,
  before any TF op: MultiWorkerMirroredStrategy must exist before the runtime starts).

  Returns a description, e.g. 'mirrored over 2 replicas (CPU split into 2 logical devices)'.

  Raises:
    ConfigError: bad values (see split_cpu, make_strategy), or a second call asking for
      another strategy or split in the same process.
  """
  strategy, cpu_devices = str(strategy), int(cpu_devices)
  if _STATE:
    if (_STATE['name'], _STATE['cpu_devices']) != (strategy, cpu_devices):
      raise ConfigError(
          f"This process already uses strategy: {_STATE['name']} with cpu_devices: "
          f"{_STATE['cpu_devices']}; a strategy is chosen once per process (got {strategy}, "
          f'{cpu_devices}).')
    return _STATE['description']
  if strategy not in STRATEGIES:
    raise ConfigError(f"Config key 'strategy' is {strategy!r}; allowed: "
                      + ', '.join(repr(s) for s in STRATEGIES) + '.')
  note = split_cpu(cpu_devices)
  made = make_strategy(strategy)
  description = strategy if strategy == 'default' else (
      f'{strategy} over {made.num_replicas_in_sync} replica(s)')
  if note:
    description += f' ({note})'
  _STATE.update(name=strategy, strategy=made, cpu_devices=cpu_devices, description=description)
  return description


def current():
  """The strategy chosen by `setup` (TF's default strategy when setup was not called)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return _STATE['strategy'] if _STATE else tf.distribute.get_strategy()


def is_default(strategy) -> bool:
  """Whether `strategy` is TF's default (no-op) strategy: one device, no replicas."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy()


def is_chief(strategy=None) -> bool:
  """True except on the workers of index >= 1 of a `multi_worker` run (TF_CONFIG's task)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  strategy = strategy or current()
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True
  task = json.loads(os.environ.get('TF_CONFIG', '{}')).get('task', {})
  return task.get('type') == 'chief' or int(task.get('index', 0)) == 0


def per_replica_batch(strategy, batch: int) -> int:
  """B / R, the sequences each replica trains on.

  Raises:
    ConfigError: when the global batch is not a multiple of the replicas in sync.
  """
  replicas = int(strategy.num_replicas_in_sync)
  if int(batch) % replicas:
    raise ConfigError(f"Config key 'dataset.batch' is {int(batch)}; under this strategy it must "
                      f'be a multiple of the {replicas} replicas in sync (each trains on an '
                      'equal share of the global batch).')
  return int(batch) // replicas


def replica_mean(values):
  """All-reduce MEAN of a tensor or list of tensors across the replicas in sync; identity
  outside `strategy.run` or with one replica. Used by `Optimizer.apply` (gradients) and
  statistics that update variables, so every replica applies the same update."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return values
  return context.all_reduce(tf.distribute.ReduceOp.MEAN, values)


def num_replicas() -> int:
  """Replicas in sync of the current replica context (1 outside `strategy.run`)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  context = tf.distribute.get_replica_context()
  return 1 if context is None else int(context.num_replicas_in_sync)


def train_fn(strategy, agent, jit: bool = True) -> Callable[[Any], dict]:
  """The update for batches of `dataset(...)`: `agent.train` itself under the default
  strategy; else one `strategy.run` of the agent's compiled step per replica, metrics
  reduced to their mean over replicas (float32 scalars)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if is_default(strategy):
    return agent.train
  keys = agent.batch_keys

  def step(data):
    per_replica = strategy.run(agent._train, args=({k: data[k] for k in keys},))  # pylint: disable=protected-access
    return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
            for k, v in per_replica.items()}

  return tf.function(step, autograph=False) if jit else step


def dataset(strategy, make: Callable[[int], Any], batch: int):
  """Batches for `train_fn`: `make(batch)` (a tf.data.Dataset of {key: [batch, T, ...]}) under
  the default strategy; else `strategy.distribute_datasets_from_function`, each worker calling
  `make(B / R)` once, its replicas taking successive per-replica batches.

  Raises:
    ConfigError: when `batch` is not a multiple of the replicas in sync.
  """
  if is_default(strategy):
    return make(int(batch))
  per_replica_batch(strategy, batch)

  def fn(context):
    return make(context.get_per_replica_batch_size(int(batch)))

  return strategy.distribute_datasets_from_function(fn)


def split_batch(strategy, data: dict):
  """A global batch {key: numpy [B, ...]} as per-replica values: replica r (global index)
  gets rows [r·B/R, (r+1)·B/R), the split `experimental_distribute_dataset` makes."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  size = per_replica_batch(strategy, len(next(iter(data.values()))))

  def part(context):
    r = context.replica_id_in_sync_group
    return {k: tf.constant(v[r * size:(r + 1) * size]) for k, v in data.items()}

  return strategy.experimental_distribute_values_from_function(part)


def max_of_mean(mean, floor: float):
  """max(mean, floor) where `mean` is a replica's share of a global-batch mean (the free nats of
  `free_avg`): under several replicas the max is decided on the global mean, so the reduced
  value and the all-reduced gradient equal the single-device ones; tf.maximum otherwise."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if num_replicas() == 1:
    return tf.maximum(mean, floor)
  above = replica_mean(tf.stop_gradient(mean)) > floor
  return tf.where(above, mean, tf.cast(floor, mean.dtype))
