"""One process of tests/test_distribute.py: builds the `atari debug` agent under a strategy, runs
train steps on fixed batches and saves losses and weights (TF's logical devices and the
strategy can be chosen only once per process, so every configuration is its own process).

    python tests/distribute_worker.py --strategy mirrored --cpu_devices 2 --steps 1 \
        --restore INIT_CKPT --save CKPT --out OUT.npz [--first_step 0]

Batches are `random_batch(4, 8, seed=1000 + k)` for update k (counting from --first_step), the
same global batch under every strategy; `deterministic_check: true` makes every random draw
its mode, so an update is a function of weights and batch alone. OUT.npz holds `metrics_<k>`
(names in `metric_names`), `var_<i>` for every `agent.variables` entry and `replica_gap`, the
largest difference between the copies of a variable on different local replicas.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreamerv2_tf import distribute  # pylint: disable=wrong-import-position

BATCH, LENGTH = 4, 8


def random_batch(seed: int) -> dict:
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  data = {
      'image': rng.integers(0, 256, (BATCH, LENGTH, 64, 64, 1), dtype=np.uint8),
      'action': np.eye(6, dtype=np.float32)[rng.integers(0, 6, (BATCH, LENGTH))],
      'reward': rng.normal(size=(BATCH, LENGTH)).astype(np.float32),
      'is_first': np.zeros((BATCH, LENGTH), bool),
      'is_terminal': rng.random((BATCH, LENGTH)) < 0.1,
  }
  data['is_first'][:, 0] = True
  return data


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--strategy', default='default')
  parser.add_argument('--cpu_devices', type=int, default=0)
  parser.add_argument('--steps', type=int, default=1)
  parser.add_argument('--first_step', type=int, default=0)
  parser.add_argument('--restore', default='')
  parser.add_argument('--save_init', default='')
  parser.add_argument('--save', default='')
  parser.add_argument('--out', required=True)
  args = parser.parse_args()
  print('strategy:', distribute.setup(args.strategy, args.cpu_devices), flush=True)

  import keras  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from dreamerv2_tf.agent import ActSpace, Agent  # pylint: disable=import-outside-toplevel
  from dreamerv2_tf.config import load_config  # pylint: disable=import-outside-toplevel

  strategy = distribute.current()
  config = load_config(['atari', 'debug'], {
      'deterministic_check': True, 'precision': 32, 'dataset.batch': BATCH,
      'dataset.length': LENGTH})
  tf.random.set_seed(0)
  step = tf.Variable(0, dtype=tf.int64, trainable=False)
  agent = Agent(config, {'image': ((64, 64, 1), np.uint8)}, ActSpace(True, 6), step,
                scope=strategy.scope())
  checkpoint = tf.train.Checkpoint(agent=agent)
  if args.restore:
    checkpoint.read(args.restore).assert_consumed()
  if args.save_init:
    checkpoint.write(args.save_init)
  train = distribute.train_fn(strategy, agent)
  out = {}
  for k in range(args.first_step, args.first_step + args.steps):
    data = random_batch(1000 + k)
    batch = data if distribute.is_default(strategy) else distribute.split_batch(strategy, data)
    metrics = {n: float(v) for n, v in train(batch).items()}
    out['metric_names'] = np.array(sorted(metrics))
    out[f'metrics_{k}'] = np.array([metrics[n] for n in sorted(metrics)], np.float64)
    print(f'update {k}: model_loss {metrics["model_loss"]:.6f} actor_loss '
          f'{metrics["actor_loss"]:.6f} critic_loss {metrics["critic_loss"]:.6f}', flush=True)
  gap = 0.0
  for i, var in enumerate(agent.variables):
    out[f'var_{i}'] = var.numpy()
    tf_var = var.value if isinstance(var, keras.Variable) else var
    copies = [np.asarray(c) for c in strategy.experimental_local_results(tf_var)]
    gap = max([gap] + [float(np.max(np.abs(c - copies[0]))) if c.size else 0.0 for c in copies])
  out['replica_gap'] = np.array(gap)
  out['num_variables'] = np.array(len(agent.variables))
  if args.save:
    checkpoint.write(args.save)
  np.savez(args.out, **out)
  print(f'saved {args.out}: {len(agent.variables)} variables, replica gap {gap}', flush=True)


if __name__ == '__main__':
  main()
