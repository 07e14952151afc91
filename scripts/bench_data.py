"""Benchmark of the data side (issue 3): prints numbers, asserts nothing.

  1. Pong agent steps/s through `make_env` against a raw ALE loop doing the same frames (4 ALE
     frames per step, screen reads of the last two, max, INTER_AREA resize to 64x64); the ratio
     is factory / raw (aim >= 0.9). Best of several interleaved repeats (the machine is shared).
  2. Replay memory: bytes per stored step of real Pong episodes (array bytes, and the process's
     resident-memory growth while storing them).
  3. Batches/s of `Replay.dataset` at B x T = 16 x 50 on those episodes (aim >= 200), and the
     same per CPU-second used by this process (less sensitive to other load on the machine).

Usage: python scripts/bench_data.py [--steps 3000] [--repeats 3] [--collect 10000] [--batches 400]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))


def rss_bytes() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * 4096


def bench_env(steps: int, repeats: int) -> None:
  import ale_py
  import cv2
  from dreamerv2_tf.config import load_config
  from dreamerv2_tf.envs import make_env

  config = load_config(['atari'])
  env = make_env('atari_pong', config)
  onehots = np.eye(env.act_space.size, dtype=np.float32)
  actions = np.random.default_rng(0).integers(env.act_space.size, size=steps)

  ale = ale_py.ALEInterface()
  ale.setLoggerMode(ale_py.LoggerMode.Error)
  ale.setFloat('repeat_action_probability', 0.25)
  ale.setInt('max_num_frames_per_episode', 0)
  ale.loadROM(ale_py.roms.get_rom_path('pong'))
  action_set = ale.getMinimalActionSet()
  height, width = ale.getScreenDims()
  buffers = [np.empty((height, width), np.uint8) for _ in range(2)]

  def run_factory():
    env.reset()
    start = time.perf_counter()
    for a in actions:
      if env.step(onehots[a])['is_last']:
        env.reset()
    return time.perf_counter() - start

  def run_raw():
    ale.reset_game()
    start = time.perf_counter()
    for a in actions:
      reward = 0.0
      for frame in range(4):
        reward += ale.act(action_set[a])
        if frame >= 2:
          ale.getScreenGrayscale(buffers[frame - 2])
      np.maximum(buffers[0], buffers[1], out=buffers[0])
      cv2.resize(buffers[0], (64, 64), interpolation=cv2.INTER_AREA)[..., None]
      if ale.game_over():
        ale.reset_game()
    return time.perf_counter() - start

  factory, raw = [], []
  for _ in range(repeats):
    factory.append(run_factory())
    raw.append(run_raw())
  env.close()
  f, r = steps / min(factory), steps / min(raw)
  print(f'Pong agent steps/s: factory {f:.0f}, raw ALE loop {r:.0f}, ratio {f / r:.2f} '
        f'(best of {repeats} x {steps} steps; all factory runs: '
        f'{", ".join(f"{steps / t:.0f}" for t in factory)}; raw: '
        f'{", ".join(f"{steps / t:.0f}" for t in raw)})')


def bench_replay(collect: int, batches: int) -> None:
  from dreamerv2_tf.config import load_config
  from dreamerv2_tf.envs import make_env
  from dreamerv2_tf.replay import Replay

  config = load_config(['atari'])
  env = make_env('atari_pong', config)
  rng = np.random.default_rng(0)
  onehots = np.eye(env.act_space.size, dtype=np.float32)
  import tensorflow as tf
  tf.zeros(1)  # TensorFlow's own start-up memory is not the replay's
  with tempfile.TemporaryDirectory() as directory:
    capacity = int(config.replay.capacity)
    replay = Replay(directory, capacity=capacity, minlen=50, seed=0)
    before = rss_bytes()
    transition = env.reset()
    replay.add_step(transition)
    while replay.num_steps < collect:
      transition = env.step(onehots[rng.integers(env.act_space.size)])
      replay.add_step(transition)
      if transition['is_last']:
        replay.add_step(env.reset())
    env.close()
    grown = rss_bytes() - before
    print(f'Replay memory: {replay.bytes_per_step} bytes per stored step '
          f'({replay.num_steps} steps in {replay.num_episodes} Pong episodes, capacity {capacity} '
          f'reserved as {replay.nbytes / 1e9:.1f} GB of address space; resident memory grew '
          f'{grown / replay.num_steps:.0f} bytes/step, the env and episode buffers included)')

    dataset = replay.dataset(batch=16, length=50, prioritize_ends=True, prefetch=4)
    iterator = iter(dataset)
    for _ in range(20):
      next(iterator)
    rates = []
    for _ in range(3):
      wall, cpu = time.perf_counter(), time.process_time()
      for _ in range(batches):
        batch = next(iterator)
      rates.append((batches / (time.perf_counter() - wall), batches / (time.process_time() - cpu)))
    shapes = {k: tuple(v.shape) for k, v in batch.items()}
    best = max(rates)
    print(f'Replay dataset: {best[0]:.0f} batches/s of 16 x 50 through tf.data, best of 3 x '
          f'{batches} (all: {", ".join(f"{w:.0f}" for w, _ in rates)}; per CPU-second of this '
          f'process: {", ".join(f"{c:.0f}" for _, c in rates)}); batch shapes {shapes}')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=3000)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--collect', type=int, default=10000)
  parser.add_argument('--batches', type=int, default=400)
  args = parser.parse_args()
  bench_env(args.steps, args.repeats)
  bench_replay(args.collect, args.batches)


if __name__ == '__main__':
  main()
