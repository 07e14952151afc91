"""Trains DreamerV2 on a MiniGrid task from its pixels, through the Python API.

The authors' release shows its API on MiniGrid; this is the same idea on gymnasium's `minigrid`
package (pip install minigrid, or `pip install '.[minigrid]'`): the agent sees the rendered
7x7-cell view in front of it (RGBImgPartialObsWrapper, 56x56x3, resized to 64x64 by the package),
the direction and mission text are dropped (ImgObsWrapper), and it acts with MiniGrid's 7
discrete actions.

  python examples/minigrid.py                          # MiniGrid-DoorKey-6x6-v0, logdir/minigrid
  python examples/minigrid.py --env MiniGrid-Empty-5x5-v0 --steps 20000
  python examples/minigrid.py --debug                  # tiny networks, a minute or so (CI)

Run it again with the same --logdir to resume. Metrics: <logdir>/metrics.jsonl and TensorBoard.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import sys

# Run as a script, this file's folder comes first on sys.path, where this file would hide the
# `minigrid` package it uses; drop that folder.
HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or '.').resolve() != HERE]

import gymnasium as gym  # pylint: disable=wrong-import-position

try:
  import dreamerv2_tf
except ImportError:  # run from a checkout without `pip install .`
  sys.path.insert(0, str(HERE.parent))
  import dreamerv2_tf

# Small networks and a short loop: learns MiniGrid-Empty-5x5 within tens of thousands of agent
# steps on a CPU; DoorKey takes longer (the authors ran 1e6 steps with the default sizes).
SMALL = {
    'log_every': 1000, 'eval_every': 5000, 'prefill': 5000, 'train_every': 10,
    'actor_ent': '3e-3', 'loss_scales.kl': 1.0, 'discount': 0.99,
    'replay.minlen': 5, 'dataset.batch': 16, 'dataset.length': 16,
    'rssm.hidden': 200, 'rssm.deter': 200, 'encoder.cnn_depth': 16, 'decoder.cnn_depth': 16,
    'reward_head.units': 200, 'discount_head.units': 200, 'actor.units': 200,
    'critic.units': 200, 'precision': 32,
}


def make_env(env_id: str) -> gym.Env:
  """The MiniGrid env with the agent's rendered partial view as its only observation."""
  import minigrid.wrappers  # pylint: disable=import-outside-toplevel
  env = gym.make(env_id)
  env = minigrid.wrappers.RGBImgPartialObsWrapper(env, tile_size=8)
  return minigrid.wrappers.ImgObsWrapper(env)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--env', default='MiniGrid-DoorKey-6x6-v0', help='a MiniGrid id')
  parser.add_argument('--logdir', default='logdir/minigrid')
  parser.add_argument('--steps', type=float, default=2e5, help='agent steps, prefill included')
  parser.add_argument('--debug', action='store_true', help='configs.yaml `debug`: tiny and short')
  args = parser.parse_args()
  if args.debug:
    config = dreamerv2_tf.load_config(('debug',), {'steps': 400, 'eval_every': 400})
  else:
    config = dreamerv2_tf.load_config(overrides={**SMALL, 'steps': args.steps})
  # A module-level function bound with functools.partial: picklable, so `envs: N` works too.
  result = dreamerv2_tf.train(functools.partial(make_env, args.env), config, args.logdir,
                              name=args.env)
  print(f'Trained {result.steps:,} agent steps ({result.updates:,} updates); checkpoint '
        f'{result.checkpoint}.')


if __name__ == '__main__':
  main()
