"""Speed benchmark of the port, optionally side by side with the authors' release (issue 16).

    python -m dreamerv2_tf.bench [--configs atari] [--task atari_pong] [--peer PYTHON] [--json]
                                 [--profile DIR] [--repeats N]

Prints numbers and asserts nothing (benchmarks are never timed tests). What it measures, for
the configuration given by `--configs` (default `atari`: Pong, batch 16 × 50, 64×64×1 images,
6 actions, float32 unless `--precision`):

- `update_s`, `update_cpu_s`: wall seconds and CPU-seconds (user + system, all threads of the
  process) per train update, after two warm-up updates; `first_update_s`: wall seconds from
  the first `Agent.train` call until its metrics are ready (Python tracing, graph optimisation
  and the first run); `build_s`: building the agent.
- `policy_s`: seconds per `Agent.policy` call at batch 1 (`policy16_s` at batch 16).
- `env_steps_per_s`: agent steps/s of one environment from `envs.make_env`;
  `vec_env_steps_per_s`: of `envs: N` environments in worker processes (`--envs`, agent steps
  summed over the N); `raw_ale_steps_per_s`: a bare ALE loop doing the same frames and the
  same screen work (4 frames per agent step, max of the last two, 64×64 INTER_AREA resize).
- `replay_batches_per_s`: batches of B × T per second from `Replay.dataset` on real Pong
  episodes; `replay_bytes_per_step`: bytes per stored step.
- `train_frames_per_s`: end to end, frames (agent steps × action repeat) per wall second of
  acting in `--envs` environments with the agent's policy and one update every `train_every`
  (16) agent steps (first repeat only).
- `peak_rss_mb`: the peak resident memory of the process that trained.
- `matmul_gflops`: this CPU's float32 matmul rate (4096³) and `floor_fraction`: the share of
  that peak one update reaches, counting 760.8 GFLOP per Atari update (issue 16's count from
  the traced graph's op shapes; other configurations do not report it).

Each repeat runs in a fresh process, so `first_update_s` is measured cold every time; values
are medians over the repeats (each repeat's own value is the median of its updates). With
`--peer PYTHON` (the authors' venv, e.g. /tmp/dreamerv2-authors-venv/bin/python) each repeat
also runs the authors' release 2.2.0 through `peer_bench.py` (../shared/peer/, or `--peer-script`)
right after this port's, so both see the same machine load (`--parallel`: both at once, for a
machine so loaded that running them in turn takes too long; compare CPU-seconds then). Peer
runs use the authors' graph mode (`jit: True`), float32 and no op determinism. `--profile DIR`
writes a TensorFlow profiler trace of two updates and ten policy steps under DIR (open it with
`tensorboard --logdir DIR`, Profile tab; needs the tensorboard-plugin-profile package).

`--track-precision N` instead trains one agent in float32 and one in `bf16` from the same seed
on the same N real Pong batches and prints their losses side by side (means over 50 updates).
`--set KEY=VALUE` overrides a config key (e.g. `--set dataset.batch=8`).

Raises SystemExit with one line when a child process fails or the peer script is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from dreamerv2_tf import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
PEER_SCRIPT = ROOT.parent / 'shared' / 'peer' / 'peer_bench.py'
MARK = '@@BENCH_JSON@@'
PEER_MARK = '@@PEER_JSON@@'
ATARI_GFLOP = 760.8  # one Atari update, counted in issue 16 from the traced graph's op shapes
KEYS = ('update_s', 'update_cpu_s', 'first_update_s', 'build_s', 'policy_s', 'policy16_s',
        'train_frames_per_s', 'peak_rss_mb')


# ---------------------------------------------------------------- machine ---------------------

def machine_info() -> dict:
  """This machine: CPU model, logical CPUs, SIMD flags that matter here, load average."""
  model, flags = '', set()
  try:
    text = subprocess.run(['lscpu'], capture_output=True, text=True, check=False).stdout
    for line in text.splitlines():
      key, _, value = line.partition(':')
      if key.strip() == 'Model name' and not model:
        model = value.strip()
      if key.strip() == 'Flags':
        flags = set(value.split())
  except OSError:
    pass
  return {
      'cpu': model or 'unknown', 'logical_cpus': os.cpu_count(),
      'avx2': 'avx2' in flags, 'fma': 'fma' in flags,
      'avx512': sorted(f for f in flags if f.startswith('avx512')),
      'amx': sorted(f for f in flags if f.startswith('amx')),
      'loadavg': os.getloadavg()[0],
  }


def matmul_gflops(size: int = 4096, dtype: str = 'float32', repeats: int = 3) -> float:
  """Best GFLOP/s of one size³ matrix product in TensorFlow (2·size³ flops)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  a = tf.random.normal([size, size], dtype=tf.float32)
  a = tf.cast(a, dtype)
  (a @ a).numpy()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    (a @ a).numpy()
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best / 1e9


# ---------------------------------------------------------------- train update (child) --------

def synthetic_batch(batch: int, length: int, image_shape, actions: int, seed: int = 0) -> dict:
  """A replay-like batch: uint8 images, one-hot actions, rewards in {−1, 0, 1}, two episode
  boundaries, as the authors' peer_bench.py builds it (values do not change the speed)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  data = {
      'image': rng.integers(0, 256, (batch, length, *image_shape), dtype=np.uint8),
      'action': np.eye(actions, dtype=np.float32)[rng.integers(0, actions, (batch, length))],
      'reward': rng.choice([-1.0, 0.0, 1.0], (batch, length), p=[0.05, 0.9, 0.05]),
      'is_first': np.zeros((batch, length), bool),
      'is_last': np.zeros((batch, length), bool),
      'is_terminal': np.zeros((batch, length), bool),
  }
  data['reward'] = data['reward'].astype(np.float32)
  data['is_first'][:, 0] = True
  if length > 30:
    for b in range(3, batch, 8):
      data['is_last'][b, 29] = data['is_terminal'][b, 29] = data['is_first'][b, 30] = True
  return data


def _timed(fn, *args):
  """(wall s, CPU s, result) of fn(*args); the result is forced to numpy."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  wall, cpu = time.perf_counter(), time.process_time()
  out = tf.nest.map_structure(lambda x: x.numpy() if hasattr(x, 'numpy') else x, fn(*args))
  return time.perf_counter() - wall, time.process_time() - cpu, out


def build_agent(config, obs_space, act_space):
  """The port's Agent for `config` (seeded with config.seed), and its build seconds."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from dreamerv2_tf import seeding  # pylint: disable=g-import-not-at-top
  from dreamerv2_tf.agent import Agent  # pylint: disable=g-import-not-at-top
  seeding.set_global_seeds(int(config.seed))
  start = time.perf_counter()
  agent = Agent(config, obs_space, act_space, tf.Variable(0, dtype=tf.int64))
  return agent, time.perf_counter() - start


def bench_updates(agent, data: dict, updates: int, profile: str = '') -> dict:
  """first_update_s, then the median wall/CPU seconds of `updates` updates after one more
  warm-up. With `profile`, two further updates are traced by tf.profiler into that folder."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  data = {k: tf.constant(v) for k, v in data.items()}
  first, _, metrics = _timed(agent.train, data)
  _timed(agent.train, data)
  walls, cpus = [], []
  for _ in range(updates):
    wall, cpu, metrics = _timed(agent.train, data)
    walls.append(wall)
    cpus.append(cpu)
  if profile:
    tf.profiler.experimental.start(profile)
    for _ in range(2):
      _timed(agent.train, data)
    tf.profiler.experimental.stop()
  return {'first_update_s': first, 'update_s': statistics.median(walls),
          'update_cpu_s': statistics.median(cpus), 'update_s_all': walls,
          'update_cpu_s_all': cpus,
          'losses': {k: float(v) for k, v in metrics.items() if k.endswith('_loss')}}


def bench_policy(agent, image_shape, batch: int, steps: int) -> float:
  """Median seconds per `Agent.policy` call (mode 'train') at `batch` environments."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  state = agent.initial_state(batch)
  times = []
  for i in range(steps + 3):
    obs = {'image': rng.integers(0, 256, (batch, *image_shape), dtype=np.uint8),
           'is_first': np.full(batch, i == 0)}
    wall, _, (_, state) = _timed(agent.policy, obs, state, 'train')
    if i >= 3:
      times.append(wall)
  return statistics.median(times)


def bench_train_loop(agent, config, task: str, updates: int) -> float:
  """End-to-end frames/s: act with the agent, store, one update per `train_every` agent steps.

  A replay is first filled with random-policy episodes until one holds `dataset.length`
  transitions (not timed). Frames are agent steps × action repeat.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dreamerv2_tf import envs, loop  # pylint: disable=g-import-not-at-top
  from dreamerv2_tf.driver import Driver, RandomPolicy  # pylint: disable=g-import-not-at-top
  from dreamerv2_tf.replay import Replay  # pylint: disable=g-import-not-at-top
  length, every = int(config.dataset.length), int(config.train_every)
  with tempfile.TemporaryDirectory() as directory, \
      envs.make_vec_env(task, config, 'train', int(config.envs)) as env:
    replay = Replay(directory, capacity=None, minlen=length, seed=0)
    driver = Driver(env, [replay.add_step])
    random_policy = RandomPolicy(env.act_space, np.random.default_rng(0))
    while replay.num_episodes == 0:
      driver(random_policy, steps=100)
    batches = iter(replay.dataset(int(config.dataset.batch), length,
                                  bool(config.replay.prioritize_ends), 2))
    policy = loop.agent_policy(agent, 'train')
    agent.train(next(batches))  # a replay batch's signature may differ from the synthetic one
    start, steps = time.perf_counter(), 0
    for _ in range(updates):
      steps += driver(policy, steps=every)[0]
      float(agent.train(next(batches))['model_loss'])
    return steps * int(config.action_repeat) / (time.perf_counter() - start)


def peak_rss_mb() -> float:
  import resource  # pylint: disable=g-import-not-at-top
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def configure_threads(threads: str) -> None:
  """`intra,inter` TensorFlow thread pools (before TensorFlow starts); '' keeps its default."""
  if not threads:
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  intra, inter = (int(x) for x in threads.split(','))
  tf.config.threading.set_intra_op_parallelism_threads(intra)
  tf.config.threading.set_inter_op_parallelism_threads(inter)


def port_child(args) -> dict:
  """One repeat of the port (run in a fresh process): build, updates, policy, loop."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  configure_threads(args.threads)
  config = port_config(args)
  from dreamerv2_tf import envs  # pylint: disable=g-import-not-at-top
  env = envs.make_env(args.task, config)
  obs_space, act_space = env.obs_space, env.act_space
  env.close()
  image_shape = tuple(obs_space['image'][0])
  agent, build = build_agent(config, obs_space, act_space)
  data = synthetic_batch(int(config.dataset.batch), int(config.dataset.length), image_shape,
                         act_space.size)
  out = {'build_s': build, **bench_updates(agent, data, args.updates, args.profile)}
  out['policy_s'] = bench_policy(agent, image_shape, 1, args.policy_steps)
  out['policy16_s'] = bench_policy(agent, image_shape, 16, max(args.policy_steps // 4, 3))
  if args.profile:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.profiler.experimental.start(os.path.join(args.profile, 'policy'))
    bench_policy(agent, image_shape, 1, 10)
    tf.profiler.experimental.stop()
  if args.loop_updates:
    out['train_frames_per_s'] = bench_train_loop(agent, config, args.task, args.loop_updates)
  out['peak_rss_mb'] = peak_rss_mb()
  out['precision'] = _policy_name()
  return out


def _policy_name() -> str:
  import keras  # pylint: disable=g-import-not-at-top
  return keras.mixed_precision.global_policy().name


def load(args, **extra):
  """The config of `--configs`, `--set` and `--task` (and `extra` overrides)."""
  from dreamerv2_tf.config import load_config  # pylint: disable=g-import-not-at-top
  names = [n for n in args.configs.split(',') if n]
  overrides = dict(item.split('=', 1) for item in args.set)
  return load_config(names, {**overrides, 'task': args.task, **extra})


def port_config(args):
  """The run config, with the bench's envs, `--precision`, `--eager` and `--xla`."""
  extra = {'envs': args.envs, 'jit': not args.eager, 'xla': args.xla}
  if args.precision:
    extra['precision'] = args.precision
  return load(args, **extra)


# ---------------------------------------------------------------- environments, replay --------

def _steps_per_s(env, actions) -> float:
  """Agent steps/s of a VecEnv (summed over its workers) for the rows of `actions` [S, N, A]."""
  env.reset()
  start = time.perf_counter()
  for action in actions:
    env.step(action)
  return actions.shape[0] * env.num / (time.perf_counter() - start)


def raw_ale_steps_per_s(game: str, actions, sticky: float = 0.25) -> float:
  """A bare ALE loop doing the factory's frames: 4 frames per step, grayscale screens of the
  last two maxed, INTER_AREA resize to 64×64; `actions` are action-set indices [S]."""
  import ale_py  # pylint: disable=g-import-not-at-top
  import cv2  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  ale = ale_py.ALEInterface()
  ale.setLoggerMode(ale_py.LoggerMode.Error)
  ale.setFloat('repeat_action_probability', sticky)
  ale.setInt('max_num_frames_per_episode', 0)
  ale.loadROM(ale_py.roms.get_rom_path(game))
  action_set = ale.getMinimalActionSet()
  height, width = ale.getScreenDims()
  screens = [np.empty((height, width), np.uint8) for _ in range(2)]
  start = time.perf_counter()
  for a in actions:
    for frame in range(4):
      ale.act(action_set[a])
      if frame >= 2:
        ale.getScreenGrayscale(screens[frame - 2])
    np.maximum(screens[0], screens[1], out=screens[0])
    cv2.resize(screens[0], (64, 64), interpolation=cv2.INTER_AREA)
    if ale.game_over():
      ale.reset_game()
  return len(actions) / (time.perf_counter() - start)


def bench_envs(config, task: str, steps: int, num: int, repeats: int) -> dict:
  """Median agent steps/s of one env, of `num` envs in workers, and of the raw ALE loop."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dreamerv2_tf import envs  # pylint: disable=g-import-not-at-top
  rates = {'env_steps_per_s': [], 'vec_env_steps_per_s': [], 'raw_ale_steps_per_s': []}
  rng = np.random.default_rng(0)
  with envs.make_vec_env(task, config, 'train', 1) as one, \
      envs.make_vec_env(task, config, 'train', num) as many:
    size = one.act_space.size
    index = rng.integers(0, size, steps)
    onehot = np.eye(size, dtype=np.float32)
    for _ in range(repeats):
      rates['env_steps_per_s'].append(_steps_per_s(one, onehot[index][:, None]))
      if num > 1:
        many_index = index[: max(steps // num, 1)]
        actions = np.repeat(onehot[many_index][:, None], num, 1)
        rates['vec_env_steps_per_s'].append(_steps_per_s(many, actions))
      if task.startswith('atari_'):
        game = task[len('atari_'):]
        rates['raw_ale_steps_per_s'].append(
            raw_ale_steps_per_s(game, index, float(config.atari_sticky)))
  return {k: statistics.median(v) for k, v in rates.items() if v}


@contextlib.contextmanager
def _random_replay(config, task: str, steps: int):
  """A Replay in a temporary folder holding at least `steps` transitions (and one finished
  episode) of a uniform random policy on `task` (one env); `replay.minlen` = dataset.length."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dreamerv2_tf import envs  # pylint: disable=g-import-not-at-top
  from dreamerv2_tf.driver import Driver, RandomPolicy  # pylint: disable=g-import-not-at-top
  from dreamerv2_tf.replay import Replay  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as directory, \
      envs.make_vec_env(task, config, 'train', 1) as env:
    replay = Replay(directory, capacity=None, minlen=int(config.dataset.length), seed=0)
    driver = Driver(env, [replay.add_step])
    policy = RandomPolicy(env.act_space, np.random.default_rng(0))
    while replay.num_steps < steps or replay.num_episodes == 0:
      driver(policy, steps=200)
    yield replay


def bench_replay(config, task: str, collect: int, batches: int) -> dict:
  """Bytes per stored step and median batches/s (and per CPU-second) of `Replay.dataset` at the
  config's B × T on `collect` agent steps of random-policy episodes."""
  batch, length = int(config.dataset.batch), int(config.dataset.length)
  with _random_replay(config, task, collect) as replay:
    iterator = iter(replay.dataset(batch, length, bool(config.replay.prioritize_ends),
                                   int(config.dataset.prefetch)))
    for _ in range(10):
      next(iterator)
    walls, cpus = [], []
    for _ in range(3):
      wall, cpu = time.perf_counter(), time.process_time()
      for _ in range(batches):
        next(iterator)
      walls.append(batches / (time.perf_counter() - wall))
      cpus.append(batches / max(time.process_time() - cpu, 1e-9))
    return {'replay_batches_per_s': statistics.median(walls),
            'replay_batches_per_cpu_s': statistics.median(cpus),
            'replay_bytes_per_step': replay.bytes_per_step}


# ---------------------------------------------------------------- children, peer --------------

def run_child(cmd: list[str], mark: str, timeout: float) -> dict:
  """Runs `cmd`; returns its last `mark` JSON line plus `child_cpu_s` and `peak_rss_mb` of that
  process alone (from wait4).

  Raises:
    SystemExit: when the child fails, runs past `timeout` seconds or prints no result.
  """
  import threading  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryFile('w+') as out, tempfile.TemporaryFile('w+') as err:
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True,
                            env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    _, status, usage = os.wait4(proc.pid, 0)
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    lines = [l for l in out.read().splitlines() if l.startswith(mark)]
    if proc.returncode or not lines:
      raise SystemExit(f'bench: error: {pathlib.Path(cmd[1]).name} {" ".join(cmd[2:4])} ... '
                       f'failed (exit {proc.returncode}):\n{err.read()[-2000:]}')
  result = json.loads(lines[-1][len(mark):])
  result['child_cpu_s'] = usage.ru_utime + usage.ru_stime
  result['peak_rss_mb'] = usage.ru_maxrss / 1024
  return result


def peer_result(raw: dict) -> dict:
  """The authors' peer_bench.py output in this module's keys (seconds)."""
  return {
      'first_update_s': raw['warmup_update_s'][0], 'update_s': raw['update_s_median'],
      'update_cpu_s': raw['update_cpu_s_median'], 'policy_s': raw['policy_step_s_median'],
      'build_s': raw.get('build_s'), 'update_s_all': raw['update_s'],
      'update_cpu_s_all': raw['update_cpu_s'],
      'losses': {k: v for k, v in raw['metrics'][0].items() if k.endswith('_loss')},
      'versions': raw.get('versions')}


def peer_command(python: str, script: str, args) -> list[str]:
  return [python, script, '--jit', '1', '--updates', str(args.updates), '--breakdown', '0',
          '--deterministic', '0', '--policy-steps', str(args.policy_steps),
          '--precision', '32']


# ---------------------------------------------------------------- precision tracking ----------

def pong_batches(config, task: str, steps: int, count: int) -> list[dict]:
  """`count` replay batches (numpy) sampled with fixed seeds from `steps` agent steps of
  random-policy episodes, the same list for every precision compared."""
  batch, length = int(config.dataset.batch), int(config.dataset.length)
  with _random_replay(config, task, steps) as replay:
    prioritize = bool(config.replay.prioritize_ends)
    return [replay.sample(batch, length, prioritize, seed=i) for i in range(count)]


def track_precision(args) -> dict:
  """Trains one agent per precision (32 and 'bf16') from the same seed on the same real
  batches for `args.track_precision` updates; returns {precision: {loss: [per update]}}."""
  from dreamerv2_tf import device, envs  # pylint: disable=g-import-not-at-top
  config = load(args)
  batches = pong_batches(config, args.task, args.replay_steps, args.track_precision)
  env = envs.make_env(args.task, config)
  spaces = env.obs_space, env.act_space
  env.close()
  curves = {}
  for precision in (32, 'bf16'):
    config = load(args, precision=precision)
    print(f'bench: precision {precision}: {device.set_precision(precision)}', file=sys.stderr)
    agent, _ = build_agent(config, *spaces)
    curve = {}
    start = time.perf_counter()
    for data in batches:
      metrics = agent.train(data)
      for key, value in metrics.items():
        if key.endswith('_loss') or key in ('model_kl', 'actor_ent'):
          curve.setdefault(key, []).append(float(value))
    curve['seconds_per_update'] = (time.perf_counter() - start) / len(batches)
    curves[str(precision)] = curve
  return curves


def print_tracking(curves: dict, window: int = 50) -> None:
  """Means over windows of `window` updates, float32 beside bfloat16, and their relative gap."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  f32, bf16 = curves['32'], curves['bf16']
  print(f"s/update: float32 {f32['seconds_per_update']:.3f}, bf16 {bf16['seconds_per_update']:.3f}")
  keys = [k for k in f32 if k != 'seconds_per_update' and k in bf16]
  for key in keys:
    a, b = np.asarray(f32[key]), np.asarray(bf16[key])
    cells = []
    for i in range(0, len(a), window):
      x, y = a[i:i + window].mean(), b[i:i + window].mean()
      cells.append(f'{x:.4g}/{y:.4g} ({(y - x) / max(abs(x), 1e-8):+.1%})')
    print(f'{key:16s} ' + '  '.join(cells))


# ---------------------------------------------------------------- driver ----------------------

def parse(argv=None) -> argparse.Namespace:
  parser = cli.ArgumentParser(
      prog='python -m dreamerv2_tf.bench', description=__doc__.split('\n', 1)[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  add = parser.add_argument
  add('--configs', default='atari', help='configs.yaml overlays, comma separated')
  add('--task', default='atari_pong')
  add('--peer', default='', help="python of the authors' venv: run their release too")
  add('--peer-script', default=str(PEER_SCRIPT), help='the shared peer_bench.py')
  add('--parallel', action='store_true',
      help='run the port and the authors at the same time instead of in turn')
  add('--json', action='store_true', help='print one JSON object instead of a table')
  add('--profile', default='', help='write a TensorFlow profiler trace to this folder')
  add('--repeats', type=int, default=3, help='fresh processes per implementation')
  add('--updates', type=int, default=3, help='timed updates per repeat (after 2 warm-up)')
  add('--policy-steps', type=int, default=100, help='timed policy calls at batch 1')
  add('--loop-updates', type=int, default=3,
      help='updates of the end-to-end loop (first repeat only; 0 skips it)')
  add('--envs', type=int, default=4, help='environments of the vector-env measurement')
  add('--env-steps', type=int, default=2000, help='agent steps per environment measurement')
  add('--replay-steps', type=int, default=10000, help='agent steps collected into the replay')
  add('--replay-batches', type=int, default=200, help='batches per replay measurement')
  add('--set', action='append', default=[], metavar='KEY=VALUE',
      help='config override, e.g. --set dataset.batch=8 (repeatable)')
  add('--precision', default='', help="override the config's precision (16, 32, bf16)")
  add('--threads', default='', help="TensorFlow 'intra,inter' op threads (default: TF's)")
  add('--eager', action='store_true', help='run the agent eagerly (jit: false)')
  add('--xla', action='store_true', help='compile the train step with XLA')
  add('--skip', default='', help='comma list of parts to leave out: env, replay, matmul')
  add('--timeout', type=float, default=14400,
      help='seconds per child process (a loaded 2-core machine needs over an hour)')
  add('--track-precision', type=int, default=0, metavar='N',
      help='instead: N updates each in float32 and bf16 on the same real batches')
  add('--child', default='', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.repeats < 1 or args.updates < 1 or args.policy_steps < 1:
    parser.error('--repeats, --updates and --policy-steps must be >= 1')
  if args.peer and not pathlib.Path(args.peer_script).exists():
    parser.error(f'--peer needs {args.peer_script} (../shared/peer/peer_bench.py); '
                 f'pass --peer-script PATH')
  return args


def child_command(args, first: bool) -> list[str]:
  cmd = [sys.executable, '-m', 'dreamerv2_tf.bench', '--child', 'port',
         '--configs', args.configs, '--task', args.task, '--envs', str(args.envs),
         '--updates', str(args.updates), '--policy-steps', str(args.policy_steps),
         '--loop-updates', str(args.loop_updates if first else 0),
         '--precision', args.precision, '--threads', args.threads]
  cmd += ['--eager'] * args.eager + ['--xla'] * args.xla
  for item in args.set:
    cmd += ['--set', item]
  return cmd + (['--profile', args.profile] if first and args.profile else [])


def _peer_row(raw: dict) -> dict:
  try:
    return {**peer_result(raw), 'peak_rss_mb': raw['peak_rss_mb']}
  except (KeyError, IndexError, TypeError) as error:  # another peer_bench.py version
    return {'error': f'unexpected peer output ({error!r})', 'raw': raw}


def run_repeats(args) -> tuple[list[dict], list[dict]]:
  """Port and (with --peer) authors' results per repeat: port, authors, port, ... in turn, or
  with `--parallel` both at once (the same load by construction; CPU-seconds stay comparable,
  wall seconds are then those of two jobs sharing the machine)."""
  from concurrent import futures  # pylint: disable=g-import-not-at-top
  port, peer = [], []
  for i in range(args.repeats):
    jobs = [(child_command(args, i == 0), MARK)]
    if args.peer:
      jobs.append((peer_command(args.peer, args.peer_script, args), PEER_MARK))
    if args.parallel:
      with futures.ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: run_child(*job, args.timeout), jobs))
    else:
      results = [run_child(*job, args.timeout) for job in jobs]
    port.append(results[0])
    print(f'bench: port, repeat {i + 1}: {json.dumps(port[-1])}', file=sys.stderr, flush=True)
    if args.peer:
      peer.append(_peer_row(results[1]))
      print(f'bench: authors, repeat {i + 1}: {json.dumps(peer[-1])}', file=sys.stderr,
            flush=True)
  return port, peer


def medians(rows: list[dict]) -> dict:
  """Median over repeats of every numeric key in KEYS that the rows have."""
  out = {}
  for key in KEYS:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    if values:
      out[key] = statistics.median(values)
  return out


def data_side(args) -> dict:
  """Environment, replay and matmul measurements in this process (not repeated per child)."""
  skip = set(args.skip.split(','))
  config = load(args)
  out = {}
  if 'env' not in skip:
    out.update(bench_envs(config, args.task, args.env_steps, args.envs, max(args.repeats, 3)))
  if 'replay' not in skip:
    out.update(bench_replay(config, args.task, args.replay_steps, args.replay_batches))
  if 'matmul' not in skip:
    out['matmul_gflops'] = matmul_gflops()
  return out


def summarize(args, port: list[dict], peer: list[dict], data: dict, info: dict) -> dict:
  """One object: the port's medians at top level, the authors' under 'authors', ratios."""
  config = load(args)
  out = {**medians(port), **data, 'precision': port[0].get('precision'),
         'batch': [int(config.dataset.batch), int(config.dataset.length)],
         'configs': args.configs, 'task': args.task, 'repeats': args.repeats,
         'machine': {**info, 'loadavg_end': os.getloadavg()[0]},
         'losses': port[0].get('losses'), 'per_repeat': port}
  atari = args.configs == 'atari' and not args.set
  if atari and 'matmul_gflops' in out:
    out['floor_s'] = ATARI_GFLOP / out['matmul_gflops']
    out['floor_fraction'] = out['floor_s'] / out['update_s']
  if peer:
    out['authors'] = {**medians(peer), 'versions': peer[0].get('versions'), 'per_repeat': peer}
    if 'floor_s' in out and 'update_s' in out['authors']:
      out['authors']['floor_fraction'] = out['floor_s'] / out['authors']['update_s']
    out['authors_over_port'] = {
        k: out['authors'][k] / out[k] for k in ('update_s', 'update_cpu_s', 'first_update_s',
                                                 'policy_s') if k in out['authors']}
  return out


ROWS = [('update_s', 's per update', 1), ('update_cpu_s', 'CPU-s per update', 1),
        ('first_update_s', 's to the first update', 1), ('build_s', 's to build the agent', 1),
        ('policy_s', 'ms per policy step, batch 1', 1000),
        ('policy16_s', 'ms per policy step, batch 16', 1000),
        ('train_frames_per_s', 'frames/s end to end', 1), ('peak_rss_mb', 'peak RSS MB', 1),
        ('env_steps_per_s', 'agent steps/s, 1 env', 1),
        ('vec_env_steps_per_s', 'agent steps/s, N envs', 1),
        ('raw_ale_steps_per_s', 'agent steps/s, raw ALE', 1),
        ('replay_batches_per_s', 'replay batches/s', 1),
        ('replay_bytes_per_step', 'replay bytes per step', 1),
        ('floor_fraction', 'fraction of the float32 floor', 1)]


def print_table(out: dict) -> None:
  m = out['machine']
  print(f"{m['cpu']}, {m['logical_cpus']} logical CPUs, AVX-512: {', '.join(m['avx512']) or 'no'},"
        f" AMX: {', '.join(m['amx']) or 'no'}; load average {m['loadavg']:.1f} at start, "
        f"{m['loadavg_end']:.1f} at end; matmul {out.get('matmul_gflops', float('nan')):.0f} "
        f"GFLOP/s float32")
  print(f"configs {out['configs']}, batch {out['batch'][0]} x {out['batch'][1]}, precision "
        f"{out['precision']}, medians of {out['repeats']} repeats")
  authors = out.get('authors', {})
  print(f"{'':34s} {'this port':>12s} {'authors':>12s}")
  for key, label, scale in ROWS:
    if key in out or key in authors:
      cell = lambda d: f'{d[key] * scale:12.4g}' if key in d else f"{'-':>12s}"
      print(f'{label:34s} {cell(out)} {cell(authors)}')
  for key, ratio in out.get('authors_over_port', {}).items():
    print(f'authors / port, {key}: {ratio:.2f}x')


def main(argv=None) -> None:
  args = parse(argv)
  if args.child == 'port':
    print(MARK + json.dumps(port_child(args)), flush=True)
    return
  if args.track_precision:
    curves = track_precision(args)
    print(json.dumps(curves) if args.json else '', end='\n' if args.json else '')
    if not args.json:
      print_tracking(curves)
    return
  info = machine_info()
  port, peer = run_repeats(args)
  data = data_side(args)
  out = summarize(args, port, peer, data, info)
  if args.json:
    print(json.dumps(out))
  else:
    print_table(out)


if __name__ == '__main__':
  main()
