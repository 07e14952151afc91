#!/usr/bin/env python
"""The learning check through the authors' release (PyPI dreamerv2 2.2.0), for side-by-side runs.

Run it with the interpreter of the authors' virtual environment (../shared/peer/install.sh, plus
`pip install minigrid==3.2.0 gymnasium==1.4.0` there):

  VENV=/tmp/dreamerv2-authors-venv
  $VENV/bin/python scripts/peer_learning_check.py --seed 0 --logdir /tmp/lc/authors_0 \\
      --output /tmp/lc/authors_0.json

It trains with the authors' own `dreamerv2.api.train(env, config)` on the task of
`dreamerv2_tf/learning_task.py` (loaded by file path: no TensorFlow 2.21 / Keras 3 import), with
their `defaults` updated by this project's `small` overlay from configs.yaml (keys their config
lacks, such as `dataset.prefetch`, are listed and skipped; `replay.maxlen` is set to
`dataset.length` and `replay.minlen` kept, so that, as in this project, every training
sequence is `dataset.length` transitions from one episode). Then it rebuilds their Agent, loads
the `variables.pkl` their `train` saved, and plays `--episodes` episodes with their
`policy(..., mode='eval')` and as many with a uniform random policy, through the same
`learning_task.play` loop this project's check uses. It writes one JSON object to `--output`:

  {"impl": "authors", "seed", "steps" (agent steps = frames), "train_wall_s", "train_cpu_s",
   "learned": [returns], "random": [returns], "curve_steps": [...], "curve_returns": [...],
   "config": {overlay keys applied}}

Only compatibility shims (nothing in the installed package is modified): `np.bool` (removed in
numpy 1.24, used by their env wrappers and replay) is set to `bool`, and the module
`tensorflow.keras.mixed_precision.experimental` their nets.py imports is provided from the
stable mixed-precision API (as ../shared/peer/peer_bench.py does).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import pathlib
import random
import resource
import sys
import time
import types
import warnings

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
warnings.filterwarnings('ignore')

ROOT = pathlib.Path(__file__).resolve().parent.parent
SKIP_KEYS = ('dataset.prefetch', 'xla', 'env_max_failures', 'progress_every_s',
             'deterministic_check', 'gym_image')


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--logdir', required=True, help='run folder (must not hold another run)')
  p.add_argument('--output', required=True, help='JSON result file')
  p.add_argument('--episodes', type=int, default=50, help='evaluation episodes, each policy')
  p.add_argument('--overlay', default='small', help='configs.yaml block applied on their defaults')
  p.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE',
                 help='extra overrides (their config names), e.g. steps=3000 actor_ent=3e-3')
  p.add_argument('--task', default=None, help='MiniGrid id (default: learning_task.DEFAULT_TASK)')
  p.add_argument('--max_steps', type=int, default=None, help='episode limit, agent steps')
  p.add_argument('--eval_only', action='store_true',
                 help='skip training: evaluate the variables.pkl already in --logdir')
  return p.parse_args(argv)


def load_learning_task():
  """dreamerv2_tf/learning_task.py by file path (the package's __init__ may import TF 2.21)."""
  path = ROOT / 'dreamerv2_tf' / 'learning_task.py'
  spec = importlib.util.spec_from_file_location('learning_task', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def import_authors():
  """Their `api`, `common` and `agent` modules, with the two shims of the module docstring."""
  import numpy as np
  np.bool = bool  # numpy >= 1.24 removed the alias their code uses.
  import tensorflow as tf
  mp = importlib.import_module('tensorflow.keras.mixed_precision')
  if not hasattr(mp, 'experimental'):
    shim = types.ModuleType('tensorflow.keras.mixed_precision.experimental')
    shim.global_policy, shim.set_policy, shim.Policy = (
        mp.global_policy, mp.set_global_policy, mp.Policy)
    mp.experimental = shim
    sys.modules['tensorflow.keras.mixed_precision.experimental'] = shim
  from dreamerv2 import api  # pylint: disable=import-outside-toplevel
  import common  # their package folder is on sys.path after importing api
  import agent
  return tf, api, common, agent


class OldGymEnv:
  """A gymnasium env presented in the old gym API their GymWrapper expects.

  reset() -> obs (seeded with `seed` on the first call); step(action int) -> (obs, reward,
  done, info) with done = terminated or truncated and info['is_terminal'] = terminated.
  Spaces are gym 0.26 spaces (their wrappers test `hasattr(space, 'n')`).
  """

  def __init__(self, env, seed: int):
    import gym
    import numpy as np
    self._env = env
    self._seed = int(seed)
    box = env.observation_space
    self.observation_space = gym.spaces.Box(0, 255, box.shape, np.uint8)
    self.action_space = gym.spaces.Discrete(int(env.action_space.n))

  def reset(self):
    obs, _ = self._env.reset(seed=self._seed)
    self._seed = None
    return obs

  def step(self, action):
    obs, reward, terminated, truncated, info = self._env.step(int(action))
    return obs, float(reward), bool(terminated or truncated), {'is_terminal': bool(terminated)}


def authors_config(api, overlay: str, sets, seed: int, logdir: str):
  """Their defaults + our overlay (keys they lack are skipped, printed) + overrides."""
  import ruamel.yaml as yaml
  blocks = yaml.safe_load((ROOT / 'configs.yaml').read_text())
  config = api.defaults
  flat = api.defaults.flat
  applied, skipped = {}, []
  for key, value in blocks[overlay].items():
    items = value.items() if isinstance(value, dict) else [(None, value)]
    for sub, val in items:
      name = key if sub is None else f'{key}.{sub}'
      if name in SKIP_KEYS or name not in flat:
        skipped.append(name)
        continue
      applied[name] = val
  config = config.update(applied)
  extra = {}
  for item in sets:
    name, _, val = item.partition('=')
    extra[name] = yaml.safe_load(val)
  config = config.update(extra)
  # Their api.train only checks `steps` between chunks of `eval_every` agent steps (saving
  # variables.pkl after each; it has no evaluation): chunks of 100 stop it within 100 steps of
  # `steps`, as this project's loop stops at `steps`.
  config = config.update({
      'replay.maxlen': int(config['dataset.length']), 'seed': seed, 'logdir': logdir,
      'task': 'minigrid', 'time_limit': 0, 'eval_every': 100})
  print('Applied from configs.yaml', overlay, applied, '\nskipped', skipped, '\nextra', extra,
        flush=True)
  return config, {**applied, **extra}


def cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def evaluate_authors(tf, common, agent_mod, config, task, learned_env, episodes, seed):
  """Rebuilds their Agent from `variables.pkl` and plays `episodes` with mode='eval'."""
  import numpy as np
  logdir = pathlib.Path(config.logdir)
  env = common.OneHotAction(common.ResizeImage(common.GymWrapper(learned_env)))
  step = common.Counter(int(config.steps))
  agnt = agent_mod.Agent(config, env.obs_space, env.act_space, step)
  replay = common.Replay(logdir / 'train_episodes', **config.replay)
  dataset = iter(replay.dataset(**config.dataset))
  common.CarryOverState(agnt.train)(next(dataset))  # creates the variables, as their api does
  agnt.load(logdir / 'variables.pkl')
  state = [None]

  def policy(tran):
    obs = {k: np.asarray(v)[None] for k, v in tran.items()}
    out, state[0] = agnt.policy(obs, state[0], mode='eval')
    return int(np.argmax(np.asarray(out['action'])[0]))

  return task.play(task.make_task(**TASK_KWARGS), policy, episodes, seed)[0]


TASK_KWARGS = {}  # make_task arguments from the command line


def main(argv=None) -> int:
  args = parse(argv)
  task = load_learning_task()
  if args.task:
    TASK_KWARGS['task'] = args.task
  if args.max_steps:
    TASK_KWARGS['max_steps'] = args.max_steps
  tf, api, common, agent_mod = import_authors()
  import numpy as np
  random.seed(args.seed)
  np.random.seed(args.seed)
  tf.random.set_seed(args.seed)
  config, applied = authors_config(api, args.overlay, args.set, args.seed, args.logdir)
  env = OldGymEnv(task.make_task(**TASK_KWARGS), seed=args.seed)
  start_wall, start_cpu = time.time(), cpu_seconds()
  timing = pathlib.Path(config.logdir) / 'timing.json'
  if args.eval_only:
    wall, cpu = json.loads(timing.read_text()) if timing.exists() else (float('nan'),) * 2
  else:
    api.train(env, config, outputs=[common.TerminalOutput(),
                                    common.JSONLOutput(config.logdir)])
    wall, cpu = time.time() - start_wall, cpu_seconds() - start_cpu
    timing.write_text(json.dumps([wall, cpu]))
  print(f'Trained {int(config.steps)} agent steps in {wall / 60:.1f} min ({cpu:.0f} CPU-s).',
        flush=True)
  eval_seed = 10_000 + args.seed
  learned = evaluate_authors(tf, common, agent_mod, config, task,
                             OldGymEnv(task.make_task(**TASK_KWARGS), eval_seed),
                             args.episodes, eval_seed)
  rand = task.play(task.make_task(**TASK_KWARGS), task.random_policy(eval_seed),
                   args.episodes, eval_seed)[0]
  steps, returns = task.episode_curve(pathlib.Path(config.logdir) / 'train_episodes')
  result = dict(impl='authors', seed=args.seed, steps=int(steps[-1]), train_wall_s=wall,
                train_cpu_s=cpu, learned=learned, random=rand, curve_steps=steps.tolist(),
                curve_returns=returns.tolist(), config=applied, task=TASK_KWARGS)
  tmp = pathlib.Path(args.output).with_suffix('.tmp')
  tmp.write_text(json.dumps(result))
  os.replace(tmp, args.output)
  print(f"authors seed {args.seed}: learned {np.mean(learned):.3f} (success "
        f"{np.mean(np.array(learned) > 0):.2f}), random {np.mean(rand):.3f} (success "
        f"{np.mean(np.array(rand) > 0):.2f})", flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
