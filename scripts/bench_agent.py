#!/usr/bin/env python
"""Benchmark of the agent's train step and policy (prints numbers; not a test).

For the Atari Pong configuration (batch 16 × 50, 64×64×1, 6 actions) on this machine:
seconds per train step eagerly, with `tf.function`, and with XLA (`jit_compile`), CPU-seconds
per step, and the policy's latency at batch 1. With `--peer VENV_PYTHON` it also runs the
authors' release (../shared/peer/peer_bench.py) in the same session, interleaved with this
port's runs, so both see the same machine load.

    .venv/bin/python scripts/bench_agent.py --modes graph,eager,xla --updates 5
    VENV=$(../shared/peer/install.sh)
    .venv/bin/python scripts/bench_agent.py --modes graph --peer $VENV/bin/python

Prints one JSON object per measurement, then a summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
PEER_SCRIPT = ROOT.parent / 'shared' / 'peer' / 'peer_bench.py'


def cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def run_port(mode: str, updates: int, warmup: int, policy_steps: int, config_names) -> dict:
  """Runs in a subprocess-free way: builds the agent for `mode` and times it."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import numpy as np
  import tensorflow as tf
  sys.path.insert(0, str(ROOT))
  from dreamerv2_tf.agent import ActSpace, Agent
  from dreamerv2_tf.config import load_config

  overrides = {'jit': mode != 'eager', 'xla': mode == 'xla', 'precision': 32}
  config = load_config(config_names, overrides)
  tf.keras.utils.set_random_seed(0)
  agent = Agent(config, {'image': ((64, 64, 1), np.uint8)}, ActSpace(True, 6),
                tf.Variable(0, dtype=tf.int64))
  batch, length = config.dataset.batch, config.dataset.length
  rng = np.random.default_rng(0)
  data = {
      'image': rng.integers(0, 256, (batch, length, 64, 64, 1), dtype=np.uint8),
      'action': np.eye(6, dtype=np.float32)[rng.integers(0, 6, (batch, length))],
      'reward': rng.normal(size=(batch, length)).astype(np.float32),
      'is_first': np.zeros((batch, length), bool),
      'is_terminal': np.zeros((batch, length), bool),
  }
  data['is_first'][:, 0] = True
  data = {k: tf.constant(v) for k, v in data.items()}
  start = time.time()
  for _ in range(warmup):
    metrics = agent.train(data)
  float(metrics['model_loss'])
  first = time.time() - start
  wall, cpu = [], []
  for _ in range(updates):
    t, c = time.time(), cpu_seconds()
    metrics = agent.train(data)
    float(metrics['model_loss'])
    wall.append(time.time() - t)
    cpu.append(cpu_seconds() - c)
  state = agent.initial_state(1)
  obs = {'image': data['image'][:1, 0], 'is_first': tf.constant([True])}
  for _ in range(3):
    out, state = agent.policy(obs, state, mode='train')
  obs = {'image': data['image'][:1, 0], 'is_first': tf.constant([False])}
  t = time.time()
  for _ in range(policy_steps):
    out, state = agent.policy(obs, state, mode='train')
  out['action'].numpy()
  policy = (time.time() - t) / policy_steps
  return {
      'impl': 'port', 'mode': mode, 'warmup_s': round(first, 2),
      'train_s_median': round(statistics.median(wall), 3), 'train_s_all': [round(w, 3) for w in wall],
      'train_cpu_s_median': round(statistics.median(cpu), 3),
      'policy_ms': round(policy * 1000, 2),
      'first_metrics': {k: round(float(v), 4) for k, v in metrics.items()
                        if k in ('image_loss', 'kl_loss', 'reward_loss', 'discount_loss')},
  }


def run_peer(python: str, updates: int) -> dict:
  """Runs the authors' release through ../shared/peer/peer_bench.py (graph mode)."""
  if not PEER_SCRIPT.exists():
    raise SystemExit(f'{PEER_SCRIPT} not found: the peer benchmark needs ../shared/peer.')
  proc = subprocess.run([python, str(PEER_SCRIPT), '--jit', '1', '--updates', str(updates)],
                        capture_output=True, text=True, check=False)
  if proc.returncode:
    raise SystemExit(f'peer benchmark failed:\n{proc.stderr[-2000:]}')
  line = [l for l in proc.stdout.splitlines() if l.startswith('@@PEER_JSON@@')]
  if line:
    raw = json.loads(line[-1][len('@@PEER_JSON@@'):])
  else:
    text = proc.stdout
    raw = json.loads(text[text.index('{'):text.rindex('}') + 1])
    raw = raw.get('jit_1', raw)
  return {'impl': 'authors', 'mode': 'graph', 'train_s_median': raw.get('update_s_median'),
          'train_cpu_s_median': raw.get('update_cpu_s_median'),
          'policy_ms': round(1000 * raw.get('policy_step_s_median', float('nan')), 2),
          'raw': raw}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--modes', default='graph,eager,xla',
                      help='comma list of eager, graph (tf.function), xla')
  parser.add_argument('--updates', type=int, default=5, help='timed updates per mode')
  parser.add_argument('--warmup', type=int, default=2, help='untimed updates (tracing)')
  parser.add_argument('--policy-steps', type=int, default=200)
  parser.add_argument('--configs', default='atari', help='overlays, comma separated')
  parser.add_argument('--peer', default='', help="python of the authors' venv (optional)")
  parser.add_argument('--child', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  names = [n for n in args.configs.split(',') if n]
  if args.child:
    print('@@' + json.dumps(run_port(args.child, args.updates, args.warmup, args.policy_steps,
                                     names)))
    return
  results = []
  modes = [m for m in args.modes.split(',') if m]
  for i, mode in enumerate(modes):
    # One fresh process per mode: same seed, same weights, no shared thread pools.
    cmd = [sys.executable, __file__, '--child', mode, '--updates', str(args.updates),
           '--warmup', str(args.warmup), '--policy-steps', str(args.policy_steps),
           '--configs', args.configs]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = [l for l in proc.stdout.splitlines() if l.startswith('@@')]
    if not line:
      print(f'mode {mode} failed:\n{proc.stderr[-3000:]}', file=sys.stderr)
      continue
    results.append(json.loads(line[0][2:]))
    print(json.dumps(results[-1]), flush=True)
    if args.peer and i == 0:
      results.append(run_peer(args.peer, args.updates))
      print(json.dumps(results[-1]), flush=True)
  print('\nimpl     mode   s/update (median)  CPU-s/update  policy ms (batch 1)')
  for r in results:
    print(f"{r['impl']:8s} {r['mode']:6s} {r['train_s_median'] or float('nan'):17.3f}  "
          f"{r['train_cpu_s_median'] or float('nan'):12.3f}  {r['policy_ms']:8.2f}")


if __name__ == '__main__':
  main()
