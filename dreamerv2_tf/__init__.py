"""DreamerV2 (Hafner et al., "Mastering Atari with Discrete World Models", ICLR 2021) in
TensorFlow 2 / Keras 3.

Python API (dreamerv2_tf/api.py; README "Use it as a library"):

  config = dreamerv2_tf.load_config(overlays=('debug',), overrides={'steps': 1000})
  dreamerv2_tf.train(env, config, logdir)       # env: gymnasium Env, factory, or task/id string
  dreamerv2_tf.evaluate(logdir, env=env, episodes=5)

`import dreamerv2_tf` loads no TensorFlow; `train` and `evaluate` load it when they run.
`dreamerv2_tf.evaluate` is both the function above and the module dreamerv2_tf/evaluate.py
(`dreamerv2_tf.evaluate.main`, ...): the module object is callable.
"""

from __future__ import annotations

from dreamerv2_tf.api import load_config, resolve_env, train
from dreamerv2_tf.config import Config, ConfigError

__version__ = '0.1.0'
__all__ = ['load_config', 'train', 'evaluate', 'Config', 'ConfigError', '__version__']


def __getattr__(name: str):
  """`dreamerv2_tf.evaluate`: the evaluate.py module, imported on first use (so that
  `python -m dreamerv2_tf.evaluate` does not find it imported already); it is callable as
  `api.evaluate` (see the end of evaluate.py)."""
  if name == 'evaluate':
    import importlib  # pylint: disable=import-outside-toplevel
    return importlib.import_module('dreamerv2_tf.evaluate')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
