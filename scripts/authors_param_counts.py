"""Counts the trainable parameters of the authors' DreamerV2 networks for one config overlay.

Run with the interpreter of the authors' release (PyPI dreamerv2 2.2.0, ../shared/peer/install.sh):

  /tmp/dreamerv2-authors-venv/bin/python scripts/authors_param_counts.py \
      --config dmc_proprio --out tests/fixtures/dmc_proprio_param_counts.json

The observation space is walker's (dmc_walker_walk): image 64x64x3, orientations (14,), height (),
velocity (9,); 6 continuous actions. The authors' agent is built from their own configs.yaml
(defaults + the overlay), its variables created by one forward pass of every network, and the
trainable parameters counted per module: encoder, rssm, decoder, reward (and discount when the
config predicts it), actor, critic. tests/test_api.py compares this port's counts with the file.
"""

import argparse
import importlib
import importlib.util
import json
import math
import os
import pathlib
import sys
import types

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

WALKER = {'image': (64, 64, 3), 'orientations': (14,), 'height': (), 'velocity': (9,)}
ACTIONS = 6


def load_authors():
  """Imports the authors' `common` and `agent` modules (their package uses top-level imports)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  precision = importlib.import_module('tensorflow.keras.mixed_precision')
  if not hasattr(precision, 'experimental'):  # their nets.py imports the pre-2.4 module name
    legacy = types.ModuleType('tensorflow.keras.mixed_precision.experimental')
    legacy.global_policy, legacy.set_policy = precision.global_policy, precision.set_global_policy
    legacy.Policy = precision.Policy
    precision.experimental = legacy
    sys.modules['tensorflow.keras.mixed_precision.experimental'] = legacy
  location = pathlib.Path(list(importlib.util.find_spec('dreamerv2').submodule_search_locations)[0])
  sys.path.insert(0, str(location))
  import common  # pylint: disable=import-outside-toplevel,import-error
  import agent  # pylint: disable=import-outside-toplevel,import-error
  import ruamel.yaml  # pylint: disable=import-outside-toplevel
  configs = ruamel.yaml.YAML(typ='safe').load((location / 'configs.yaml').read_text())
  return tf, common, agent, configs


def count(tf, module) -> int:
  return int(sum(math.prod(v.shape) for v in module.trainable_variables))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='dmc_proprio')
  parser.add_argument('--out', default=None, help='write the counts to this JSON file')
  args = parser.parse_args()
  import gym  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  tf, common, agent_mod, configs = load_authors()
  config = common.Config(configs['defaults']).update(configs[args.config])
  config = config.update({'precision': 32, 'jit': False})
  tf.config.run_functions_eagerly(True)
  obs_space = {k: gym.spaces.Box(-np.inf, np.inf, s, np.float32) for k, s in WALKER.items()}
  obs_space['image'] = gym.spaces.Box(0, 255, WALKER['image'], np.uint8)
  for key in ('reward', 'is_first', 'is_last', 'is_terminal'):
    obs_space[key] = gym.spaces.Box(0, 1, (), np.float32)
  act_space = {'action': gym.spaces.Box(-1, 1, (ACTIONS,), np.float32)}
  agnt = agent_mod.Agent(config, obs_space, act_space, common.Counter(0))
  batch = {k: np.zeros((1, 2) + s, np.uint8 if k == 'image' else np.float32)
           for k, s in WALKER.items()}
  batch.update(action=np.zeros((1, 2, ACTIONS), np.float32), reward=np.zeros((1, 2), np.float32),
               is_first=np.ones((1, 2), bool), is_terminal=np.zeros((1, 2), bool))
  wm = agnt.wm
  pre = wm.preprocess(batch)
  post, _ = wm.rssm.observe(wm.encoder(pre), pre['action'], pre['is_first'])
  feat = wm.rssm.get_feat(post)
  for head in wm.heads.values():
    head(feat)
  behavior = agnt._task_behavior  # pylint: disable=protected-access
  behavior.actor(feat)
  behavior.critic(feat)
  counts = {'encoder': count(tf, wm.encoder), 'rssm': count(tf, wm.rssm)}
  counts.update({name: count(tf, head) for name, head in wm.heads.items()})
  counts.update(actor=count(tf, behavior.actor), critic=count(tf, behavior.critic))
  result = {'config': args.config, 'observations': {k: list(s) for k, s in WALKER.items()},
            'actions': ACTIONS, 'counts': counts,
            'encoder_mlp_inputs': list(wm.encoder.mlp_keys),
            'decoder_mlp_outputs': list(wm.heads['decoder'].mlp_keys)}
  text = json.dumps(result, indent=1, sort_keys=True)
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text + '\n')


if __name__ == '__main__':
  main()
