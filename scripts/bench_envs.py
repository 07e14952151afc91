"""Agent steps per second of `envs: N` environment workers, N from 1 to --max (issue 15).

    python scripts/bench_envs.py [--task atari_pong] [--configs atari] [--max 2] [--steps 2000]
                                 [--repeats 3]

Prints one line per N: the median over --repeats of agent steps per wall second summed over
the N environments (`envs.make_vec_env`, N > 1 in worker processes as training uses them),
and the speed-up over N = 1. Random one-hot actions; no agent, no TensorFlow. Measures only:
asserts nothing (benchmarks are never timed tests). Uses `dreamerv2_tf.bench._steps_per_s`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--task', default='atari_pong')
  parser.add_argument('--configs', default='atari')
  parser.add_argument('--max', type=int, default=2, help='largest number of environments')
  parser.add_argument('--steps', type=int, default=2000, help='agent steps per measurement')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  if args.max < 1 or args.steps < 1 or args.repeats < 1:
    parser.error('--max, --steps and --repeats must be >= 1')
  import numpy as np  # pylint: disable=import-outside-toplevel
  from dreamerv2_tf import envs  # pylint: disable=import-outside-toplevel
  from dreamerv2_tf.bench import _steps_per_s  # pylint: disable=import-outside-toplevel
  from dreamerv2_tf.config import load_config  # pylint: disable=import-outside-toplevel
  config = load_config(args.configs.split(','), {'task': args.task})
  rng = np.random.default_rng(0)
  base = None
  print(f'task {args.task}, {args.steps} agent steps per measurement, median of '
        f'{args.repeats}; CPU cores: {os.cpu_count()}')
  for num in range(1, args.max + 1):
    with envs.make_vec_env(args.task, config, 'train', num) as env:
      size = env.act_space.size
      rows = max(args.steps // num, 1)
      actions = np.eye(size, dtype=np.float32)[rng.integers(0, size, (rows, num))]
      rate = statistics.median(_steps_per_s(env, actions) for _ in range(args.repeats))
    base = base or rate
    print(f'envs: {num}  {rate:8.1f} agent steps/s  ({rate / base:.2f}x of envs: 1)', flush=True)


if __name__ == '__main__':
  main()
