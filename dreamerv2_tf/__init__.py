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

import types as _types

from dreamerv2_tf import evaluate as _evaluate_module
from dreamerv2_tf import api as _api
from dreamerv2_tf.api import load_config, resolve_env, train
from dreamerv2_tf.config import Config, ConfigError

__version__ = '0.1.0'
__all__ = ['load_config', 'train', 'evaluate', 'Config', 'ConfigError', '__version__']


class _CallableModule(_types.ModuleType):
  """dreamerv2_tf.evaluate: the evaluate.py module, callable as `api.evaluate`."""

  def __call__(self, *args, **kwargs):
    return _api.evaluate(*args, **kwargs)


# Importing the submodule sets the package attribute `evaluate` to it (at any later import as
# well), so the module itself is made callable rather than shadowed by the function.
_evaluate_module.__class__ = _CallableModule
evaluate = _evaluate_module
