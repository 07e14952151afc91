"""The one place that sets a run's precision, seeds and tf.function mode (docs/reference.md §5).

`setup(precision, seed, jit)` is called once, before any model is built (the training Runner,
`evaluate`): it picks the Keras dtype policy (mixed float16 only with `precision: 16` AND a GPU,
else float32), seeds Python, numpy and TensorFlow (`seeding.set_global_seeds`), and turns
tf.function off when `jit` is false.
"""

from __future__ import annotations

import os

from dreamerv2_tf.config import ConfigError
from dreamerv2_tf import seeding


def describe_devices() -> tuple[str, bool]:
  """('1 GPU(s): NVIDIA ...' or 'CPU (N cores, no GPU found)', whether a GPU is visible)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  gpus = tf.config.list_physical_devices('GPU')
  if not gpus:
    return f'CPU ({os.cpu_count()} cores, no GPU found)', False
  names = []
  for gpu in gpus:
    try:
      names.append(tf.config.experimental.get_device_details(gpu).get('device_name', gpu.name))
    except (ValueError, RuntimeError):
      names.append(gpu.name)
  return f'{len(gpus)} GPU(s): {", ".join(names)}', True


def cpu_flags() -> set[str]:
  """The CPU's feature flags from /proc/cpuinfo (empty if unknown, e.g. not Linux)."""
  try:
    with open('/proc/cpuinfo') as f:
      return next((set(line.split(':', 1)[1].split()) for line in f
                   if line.startswith('flags')), set())
  except OSError:
    return set()


def cpu_has_amx() -> bool:
  """Whether this CPU has AMX tiles for bfloat16 (`amx_bf16` in /proc/cpuinfo; False if unknown)."""
  return 'amx_bf16' in cpu_flags()


def bf16_cpu_note(flags: set[str]) -> str:
  """What is known of `precision: bf16` speed on a CPU with these flags ('' with AMX).

  Measured with `python -m dreamerv2_tf.bench` (Atari Pong config): on an AMD EPYC with
  AVX512_BF16 (no AMX) bf16 took 6.0 CPU-s per update against float32's 9.2 (1.5x faster);
  on an Intel Xeon with AVX512_BF16 (no AMX) about twice float32's time (issue 16).
  """
  if 'amx_bf16' in flags:
    return ''
  if 'avx512_bf16' in flags:
    return ('; on CPUs with AVX512_BF16 but no AMX it was 1.5x faster than float32 on an AMD '
            'EPYC and 2x slower on an Intel Xeon: check this one with '
            '`python -m dreamerv2_tf.bench --precision bf16`')
  return '; slower than float32 on this CPU (no AVX512_BF16 or AMX): use precision: 32 here'


def set_precision(precision) -> str:
  """Sets the global Keras dtype policy for `precision` (16, 32 or 'bf16'); returns a description.

  'bf16' is `mixed_bfloat16` on any device (float32 variables, no loss scaling); on a CPU
  without AMX the description adds what is known of its speed there (`bf16_cpu_note`).

  Raises:
    ConfigError: when precision is not 16, 32 or 'bf16'.
  """
  import keras  # pylint: disable=import-outside-toplevel
  if precision not in (16, 32, 'bf16'):
    raise ConfigError(f"Config key 'precision' must be 16, 32 or 'bf16', got {precision!r}.")
  _, gpu = describe_devices()
  if precision == 'bf16':
    keras.mixed_precision.set_global_policy('mixed_bfloat16')
    note = '' if gpu else bf16_cpu_note(cpu_flags())
    return f'mixed bfloat16 (float32 variables, no loss scaling{note})'
  if precision == 16 and gpu:
    keras.mixed_precision.set_global_policy('mixed_float16')
    return 'mixed float16 (float32 variables, dynamic loss scaling)'
  keras.mixed_precision.set_global_policy('float32')
  return 'float32' + (' (precision: 16 needs a GPU)' if precision == 16 else '')


def _precision(value):
  return value if isinstance(value, str) else int(value)


def setup(precision, seed: int, jit: bool = True, strategy: str = 'default',
          cpu_devices: int = 0) -> tuple[str, str]:
  """Precision, seeds and tf.function mode of a run. Returns (device, precision description).

  First of all (before any TF op) the CPU split and the tf.distribute strategy
  (`distribute.setup`; `distribute.current()` returns it); the device text then names it.

  Raises:
    ConfigError: when precision is not 16, 32 or 'bf16'; a bad strategy or cpu_devices.
  """
  from dreamerv2_tf import distribute  # pylint: disable=import-outside-toplevel
  placed = distribute.setup(strategy, cpu_devices)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  described = set_precision(_precision(precision))
  seeding.set_global_seeds(int(seed))
  tf.config.run_functions_eagerly(not jit)
  device = describe_devices()[0]
  return (device if placed == 'default' else f'{device}; strategy {placed}'), described


def setup_device(precision) -> tuple[str, str]:
  """Precision only (for tools that seed nothing): (device, precision description)."""
  described = set_precision(_precision(precision))
  return describe_devices()[0], described
