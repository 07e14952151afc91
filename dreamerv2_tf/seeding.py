"""Seeds: one run seed (config `seed`) determines numpy, TensorFlow, replay and environments.

- `set_global_seeds(seed)` seeds Python's `random`, numpy's global generator and TensorFlow's
  global seed (through `keras.utils.set_random_seed`) and TF's global Generator; `device.setup`
  calls it once per run.
- `env_seed(seed, mode, index)`: environment `index` (0..envs-1) of `mode` ('train' or 'eval')
  gets the first 32-bit word of numpy's `SeedSequence([seed, mode id, index])` (train 0,
  eval 1), so train and eval environments, and the environments of one vector env, all differ.
  The env uses it on its first reset (ALE: sticky-action RNG and no-op count; dm_control: the
  initial-state RNG) and continues its random streams afterwards.
- The replay's sampling uses stateless random ops seeded from (seed, dataset number).

This module imports no TensorFlow at import time (environment workers import it).
"""

from __future__ import annotations

import random

import numpy as np

MODES = ('train', 'eval')


def env_seed(seed: int, mode: str, index: int) -> int:
  """Seed of environment `index` of `mode` in a run seeded `seed` (an int in [0, 2**32)).

  Raises:
    ValueError: for a mode other than 'train' or 'eval', or a negative index.
  """
  if mode not in MODES:
    raise ValueError(f"Unknown env mode '{mode}'; valid modes: {', '.join(MODES)}.")
  if int(index) < 0:
    raise ValueError(f'Environment index must be >= 0, got {index}.')
  words = np.random.SeedSequence([int(seed), MODES.index(mode), int(index)]).generate_state(1)
  return int(words[0])


def set_global_seeds(seed: int) -> None:
  """Seeds Python `random`, numpy's global generator, TensorFlow's global seed (through
  `keras.utils.set_random_seed`) and TensorFlow's global `tf.random.Generator` (which the
  training checkpoint saves). Called once per run by `device.setup`."""
  random.seed(int(seed))
  np.random.seed(int(seed) % 2**32)
  # pylint: disable=g-import-not-at-top (keeps this module TF-free on import)
  import keras
  import tensorflow as tf
  keras.utils.set_random_seed(int(seed) % 2**32)
  tf.random.set_global_generator(tf.random.Generator.from_seed(int(seed)))
