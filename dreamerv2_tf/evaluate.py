"""Evaluates a trained run: `python -m dreamerv2_tf.evaluate --logdir DIR --episodes N`.

Loads `<logdir>/config.yaml` and the latest checkpoint in `<logdir>/checkpoints` (or
`--checkpoint PREFIX`), plays N episodes with the actor's mode (SPEC.md §6, §8: `policy(...,
mode='eval')`; the latent is sampled unless the run's `eval_state_mean` is true) in a fresh
evaluation environment, prints the mean and standard deviation (population, ddof 0) of the
returns, and writes `<logdir>/evaluation.json` atomically:

  {"checkpoint": prefix, "task": str, "agent_step": int, "frames": int, "seed": int,
   "episodes": N, "returns": [float], "lengths": [int agent steps], "mean": float, "std": float}

Nothing is added to the run's replay. Errors (no config, a config.yaml that does not parse or
holds a bad value, no readable checkpoint, a checkpoint that does not fit the config, bad
arguments) exit with status 2 and a one-line message. When the latest checkpoint cannot be read
(e.g. a truncated data file) the newest readable one is used, with a warning naming the bad one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
import tempfile
from typing import Any

import numpy as np

# TensorFlow is imported inside `evaluate` only: DMC's worker process re-imports this module.
from dreamerv2_tf.config import Config, ConfigError, load_config, read_blocks
from dreamerv2_tf.validate import validate


def load_run_config(logdir: str | os.PathLike) -> Config:
  """The config saved by the run in `<logdir>/config.yaml`, checked against today's keys and
  values (`validate.validate`).

  Raises:
    ConfigError: when the file is missing, does not parse, or holds keys/values this version
      does not accept.
  """
  path = pathlib.Path(logdir) / 'config.yaml'
  if not path.exists():
    raise ConfigError(f'{path} does not exist: is {logdir} a training run directory?')
  try:
    config = load_config([]).update(read_blocks(path))
    validate(config)
  except ConfigError as e:
    raise ConfigError(f'{path}: {e}' if str(path) not in str(e) else str(e)) from None
  return config


def write_json(path: str | os.PathLike, data: Any) -> None:
  """Writes JSON atomically (temporary file in the same folder, then os.replace)."""
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix='.tmp-', suffix='.json')
  with os.fdopen(fd, 'w') as f:
    json.dump(data, f, indent=2)
    f.write('\n')
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
  os.replace(tmp, path)


def evaluate(logdir: str | os.PathLike, episodes: int, checkpoint: str | None = None,
             seed: int | None = None) -> dict:
  """Plays `episodes` evaluation episodes with the checkpointed agent; returns (and writes to
  `<logdir>/evaluation.json`) the result dict described in the module docstring.

  Raises:
    ConfigError: bad `episodes`, a missing or bad config, no readable checkpoint, or a
      checkpoint that does not fit the config.
  """
  if episodes < 1:
    raise ConfigError(f'--episodes must be at least 1, got {episodes}.')
  logdir = pathlib.Path(logdir)
  config = load_run_config(logdir)  # fails fast, before TensorFlow loads

  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  from dreamerv2_tf import envs
  from dreamerv2_tf.agent import Agent
  from dreamerv2_tf.checkpoint import CheckpointError, latest_readable, unreadable
  from dreamerv2_tf.driver import Driver
  from dreamerv2_tf.loop import agent_policy, setup_device

  if checkpoint is None:
    try:
      checkpoint = latest_readable(logdir / 'checkpoints',
                                   lambda line: print(line, file=sys.stderr, flush=True))
    except CheckpointError as e:
      raise ConfigError(str(e)) from None
    if checkpoint is None:
      raise ConfigError(f'No checkpoint in {logdir / "checkpoints"}.')
  elif not tf.io.gfile.exists(checkpoint + '.index'):
    raise ConfigError(f'Checkpoint {checkpoint} does not exist (no {checkpoint}.index).')
  else:
    reason = unreadable(checkpoint)
    if reason:
      raise ConfigError(f'Checkpoint {checkpoint} cannot be read ({reason}).')
  seed = config.seed if seed is None else seed
  device, precision = setup_device(int(config.precision))
  tf.config.run_functions_eagerly(not config.jit)
  tf.random.set_seed(seed)
  np.random.seed(seed % 2**32)

  env = envs.make_vec_env(config.task, config, 'eval', 1, seed)
  try:
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name='agent_step')
    agent = Agent(config, env.obs_space, env.act_space, step)
    def does_not_fit(error):
      first_line = str(error).splitlines()[0] if str(error) else ''
      return ConfigError(
          f'Checkpoint {checkpoint} does not fit the agent of {logdir / "config.yaml"} '
          f'({type(error).__name__}: {first_line}); was the config changed after training?')

    # Only the agent and the step; variables built by the first policy call are restored then.
    try:
      status = tf.train.Checkpoint(step=step, agent=agent).restore(checkpoint)
    except (AssertionError, ValueError, IndexError, tf.errors.OpError) as e:
      raise does_not_fit(e) from None
    status.expect_partial()
    returns, lengths = [], []
    checked = []

    def on_episode(stats, worker):
      del worker
      returns.append(float(stats['return']))
      lengths.append(int(stats['length']))
      print(f'Episode {len(returns)}/{episodes}: return {returns[-1]:g}, '
            f'length {lengths[-1]} agent steps.', flush=True)

    policy = agent_policy(agent, 'eval')

    def checked_policy(obs, state):
      if checked:
        return policy(obs, state)
      # The first call builds the remaining variables, which restores them (deferred).
      try:
        out = policy(obs, state)
        status.assert_existing_objects_matched()
      except (AssertionError, ValueError, IndexError, tf.errors.OpError) as e:
        raise does_not_fit(e) from None
      checked.append(True)
      return out

    print(f'Evaluating {checkpoint} on {config.task} ({device}, {precision}).', flush=True)
    Driver(env, on_episode=[on_episode])(checked_policy, episodes=episodes)
  finally:
    env.close()
  returns = returns[:episodes]
  lengths = lengths[:episodes]
  agent_step = int(step.numpy())
  result = {
      'checkpoint': str(checkpoint), 'task': config.task, 'agent_step': agent_step,
      'frames': agent_step * int(config.action_repeat), 'seed': int(seed),
      'episodes': len(returns), 'returns': returns, 'lengths': lengths,
      'mean': float(np.mean(returns)), 'std': float(np.std(returns)),
  }
  write_json(logdir / 'evaluation.json', result)
  print(f'Return over {len(returns)} episodes: mean {result["mean"]:.3f}, '
        f'std {result["std"]:.3f} (frame {result["frames"]:,}); '
        f'written to {logdir / "evaluation.json"}.', flush=True)
  return result


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m dreamerv2_tf.evaluate',
      description='Play evaluation episodes with the latest checkpoint of a training run.')
  parser.add_argument('--logdir', required=True, help='run directory written by train.py')
  parser.add_argument('--episodes', type=int, default=10, help='episodes to play (default 10)')
  parser.add_argument('--checkpoint', default=None,
                      help='checkpoint prefix (default: the latest in <logdir>/checkpoints)')
  parser.add_argument('--seed', type=int, default=None,
                      help="environment and sampling seed (default: the run's seed)")
  args = parser.parse_args(argv)
  try:
    evaluate(args.logdir, args.episodes, args.checkpoint, args.seed)
  except ConfigError as e:
    # TensorFlow warns at exit about the objects of a failed restore; the error line says it all.
    logging.getLogger('tensorflow').setLevel(logging.ERROR)
    print(f'evaluate: error: {" ".join(str(e).split())}', file=sys.stderr, flush=True)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
