"""Trains DreamerV2 on an environment written in this file, through the Python API.

`Reach` is a small gymnasium env: a dot on a 2-D plane, pushed by a continuous 2-D action, must
reach a target. Its observation is a Dict of an image (the plane drawn as 32x32x3 pixels) and a
vector (the dot's position and the target's), so both the CNN and the MLP encoder are used; the
decoder reconstructs both. An episode ends as `terminated` when the dot reaches the target
(is_terminal: the value beyond is 0) and as `truncated` after 50 steps (is_last only), as
docs/reference.md §1 asks.

  python examples/custom_env.py                   # logdir/reach, ~20k agent steps
  python examples/custom_env.py --debug           # tiny networks, a minute or so (CI)

What your own env needs: a gymnasium.Env whose observation space is an image Box (H, W, C)
uint8, a vector Box, or a Dict of those (Discrete entries become one-hot vectors), and whose
action space is Discrete or a 1-D Box; see README "Use it as a library".
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import gymnasium as gym
import numpy as np

try:
  import dreamerv2_tf
except ImportError:  # run from a checkout without `pip install .`
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
  import dreamerv2_tf


class Reach(gym.Env):
  """Move a dot to a target in [-1, 1]²; reward −distance per step, +10 on reaching it."""

  metadata = {'render_modes': []}
  SIZE = 32

  def __init__(self):
    self.observation_space = gym.spaces.Dict({
        'image': gym.spaces.Box(0, 255, (self.SIZE, self.SIZE, 3), np.uint8),
        'position': gym.spaces.Box(-1, 1, (4,), np.float32),
    })
    # Any bounds work: the agent's actions in [-1, 1] are rescaled to them.
    self.action_space = gym.spaces.Box(-0.2, 0.2, (2,), np.float32)
    self._dot = self._target = np.zeros(2)

  def _pixel(self, point):
    return np.clip(((point + 1) / 2 * (self.SIZE - 1)).round().astype(int), 0, self.SIZE - 1)

  def _obs(self):
    image = np.zeros((self.SIZE, self.SIZE, 3), np.uint8)
    (tx, ty), (dx, dy) = self._pixel(self._target), self._pixel(self._dot)
    image[max(ty - 1, 0):ty + 2, max(tx - 1, 0):tx + 2, 1] = 255  # green target
    image[max(dy - 1, 0):dy + 2, max(dx - 1, 0):dx + 2, 0] = 255  # red dot
    position = np.concatenate([self._dot, self._target]).astype(np.float32)
    return {'image': image, 'position': position}

  def reset(self, *, seed=None, options=None):
    super().reset(seed=seed)
    self._dot = self.np_random.uniform(-1, 1, 2)
    self._target = self.np_random.uniform(-1, 1, 2)
    return self._obs(), {}

  def step(self, action):
    self._dot = np.clip(self._dot + np.asarray(action, np.float64), -1, 1)
    distance = float(np.linalg.norm(self._dot - self._target))
    reached = distance < 0.1
    reward = 10.0 if reached else -distance
    return self._obs(), reward, reached, False, {}


def make_env() -> gym.Env:
  return gym.wrappers.TimeLimit(Reach(), max_episode_steps=50)  # truncated after 50 steps


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--logdir', default='logdir/reach')
  parser.add_argument('--steps', type=float, default=2e4, help='agent steps, prefill included')
  parser.add_argument('--debug', action='store_true', help='configs.yaml `debug`: tiny and short')
  args = parser.parse_args()
  if args.debug:
    overrides = {'steps': 300, 'prefill': 150, 'eval_every': 300, 'log_every': 150,
                 'time_limit': 0, 'replay.minlen': 5, 'dataset.length': 10}
    config = dreamerv2_tf.load_config(('dmc_vision', 'debug'), overrides)
  else:
    config = dreamerv2_tf.load_config(('dmc_vision',), {
        'steps': args.steps, 'prefill': 2000, 'eval_every': 5000, 'log_every': 1000,
        'precision': 32, 'action_repeat': 1, 'replay.minlen': 5, 'dataset.length': 20})
  # dmc_vision's continuous-control settings, with the encoder and decoder on both keys.
  config = config.update({'encoder.cnn_keys': 'image', 'encoder.mlp_keys': 'position',
                          'decoder.cnn_keys': 'image', 'decoder.mlp_keys': 'position',
                          'action_repeat': 1})
  result = dreamerv2_tf.train(make_env, config, args.logdir, name='reach')
  print(f'Trained {result.steps:,} agent steps ({result.updates:,} updates); checkpoint '
        f'{result.checkpoint}.')
  evaluation = dreamerv2_tf.evaluate(args.logdir, env=make_env, episodes=2)
  print(f'Evaluation return: {evaluation["mean"]:.2f}')


if __name__ == '__main__':
  main()
