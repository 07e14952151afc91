"""CPU learning check: does this install learn? `python -m dreamerv2_tf.learning_check`.

Trains this project's agent with its own loop (`loop.run`, configs.yaml overlay `small`) on
MiniGrid-Empty-5x5 from 64×64 RGB pixels (`learning_task.py`: 3 actions, 30-step episodes), one
run per seed, then plays `--episodes` evaluation episodes with the learned policy (the actor's
mode, as `evaluate.py`) and as many with a uniform random policy, through the same loop
(`learning_task.play`, same env settings). With `--authors PYTHON` it also runs, for every seed,
the same check through the authors' release (`scripts/peer_learning_check.py`, their
`dreamerv2.api.train`) with the same overlay, task and seed.

Output: a progress line per run event (the loop's own lines, prefixed `[port s0]` /
`[authors s0]`), then one table

  impl  seed  random return (success)  learned return (success)  frames  minutes  CPU-s  pass

and the training-episode return curves (mean per `--bin` agent steps, every seed, both
implementations) as a PNG (`--png`, default `docs/learning_check.png`). Frames = agent steps here
(no action repeat). Minutes are wall-clock training time (the machine may be shared); CPU-s is
the training process's user + system CPU time, steadier on a busy machine.

Pass criterion (every seed): the learned policy's mean evaluation return is at least twice the
random policy's AND at least half-way from the random policy's to the optimum
(`learning_task.optimal_return`, 0.85 with 30-step episodes). The exit status is 0 when every
seed of every implementation passes, 1 otherwise, 2 for bad arguments.

Files under `--outdir` (default `learning_check/`): `<impl>_<seed>/` (the run's logdir),
`<impl>_<seed>.json` (the result: returns, curve, timings), `<impl>_<seed>.log` (its output).
`--report` rebuilds the table and PNG from the JSON files already there, without training.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import resource
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

import numpy as np

from dreamerv2_tf import cli
from dreamerv2_tf import learning_task

ROOT = pathlib.Path(__file__).resolve().parent.parent
PEER_SCRIPT = ROOT / 'scripts' / 'peer_learning_check.py'
IMPLS = ('port', 'authors')
QUIET_PREFIXES = ('Episode has ',)  # the authors' per-episode lines stay in the log file only


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = cli.ArgumentParser(prog='python -m dreamerv2_tf.learning_check',
                              description=__doc__.split('\n')[0])
  p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  p.add_argument('--episodes', type=int, default=50, help='evaluation episodes per policy')
  p.add_argument('--outdir', default='learning_check', help='run folders, results and logs')
  p.add_argument('--png', default='docs/learning_check.png', help='return curves ("" = none)')
  p.add_argument('--authors', default='', metavar='PYTHON',
                 help="the authors' venv interpreter, e.g. /tmp/dreamerv2-authors-venv/bin/"
                      'python; also runs their release on every seed')
  p.add_argument('--jobs', type=int, default=1, help='trainings run at the same time')
  p.add_argument('--impls', nargs='+', choices=IMPLS, default=None,
                 help="implementations to train (default: port, and authors with --authors)")
  p.add_argument('--overlay', default='small', help='configs.yaml overlay')
  p.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE',
                 help='config overrides for both implementations, e.g. steps=4000')
  p.add_argument('--task', default=learning_task.DEFAULT_TASK)
  p.add_argument('--max_steps', type=int, default=learning_task.DEFAULT_MAX_STEPS,
                 help='episode limit in agent steps')
  p.add_argument('--bin', type=int, default=500, help='curve bin width, agent steps')
  p.add_argument('--report', action='store_true', help='only rebuild table and PNG')
  p.add_argument('--child', choices=['port'], help=argparse.SUPPRESS)
  p.add_argument('--seed', type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.episodes < 1 or args.jobs < 1 or args.bin < 1:
    p.error(f'--episodes, --jobs and --bin must be >= 1, got {args.episodes}, {args.jobs}, '
            f'{args.bin}.')
  for item in args.set:
    if '=' not in item:
      p.error(f"--set takes KEY=VALUE items, got '{item}'.")
  if args.authors and not pathlib.Path(args.authors).exists():
    p.error(f'--authors {args.authors}: no such interpreter (see scripts/install_authors.sh).')
  return args


# ----------------------------------------------------------------------------- port training


def port_config(args: argparse.Namespace, seed: int, logdir: pathlib.Path):
  """The `small` config of this project for one seed (task `custom_minigrid`)."""
  from dreamerv2_tf.config import load_config  # pylint: disable=import-outside-toplevel
  from dreamerv2_tf.validate import validate  # pylint: disable=import-outside-toplevel
  overrides = dict(item.split('=', 1) for item in args.set)
  overrides.update(task='custom_minigrid', seed=str(seed), logdir=str(logdir), time_limit='0',
                   progress_every_s='30')
  config = load_config([args.overlay], overrides)
  validate(config)
  return config


def cpu_seconds() -> float:
  """User + system CPU seconds of this process and its finished children."""
  own = resource.getrusage(resource.RUSAGE_SELF)
  kids = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def evaluate_port(config, logdir: pathlib.Path, make_env, episodes: int,
                  seed: int) -> list[float]:
  """Restores the run's latest checkpoint and plays `episodes` with the actor's mode."""
  # pylint: disable=import-outside-toplevel
  from dreamerv2_tf import envs
  from dreamerv2_tf.evaluate import find_checkpoint, restored_policy
  env = envs.make_env(config.task, config, 'eval', seed, env_fn=make_env)
  policy, _ = restored_policy(config, env, find_checkpoint(logdir, None),
                              logdir / 'config.yaml')
  env.close()
  state = [None]

  def act(tran):
    obs = {'image': np.asarray(tran['image'])[None], 'is_first': np.array([tran['is_first']])}
    action, state[0] = policy(obs, state[0])
    return int(np.argmax(action[0]))

  return learning_task.play(make_env(), act, episodes, seed)[0]


def train_port(args: argparse.Namespace) -> dict[str, Any]:
  """Child process: one training run of this project, then its evaluation; returns the result."""
  from dreamerv2_tf import loop  # pylint: disable=import-outside-toplevel
  seed = args.seed
  logdir = pathlib.Path(args.outdir) / f'port_{seed}'
  config = port_config(args, seed, logdir)
  make_env = functools.partial(learning_task.make_task, args.task, args.max_steps)
  start_wall, start_cpu = time.time(), cpu_seconds()
  result = loop.run(config, logdir, make_env=make_env)
  wall, cpu = time.time() - start_wall, cpu_seconds() - start_cpu
  print(f'Trained {result.steps:,} agent steps in {wall / 60:.1f} min ({cpu:.0f} CPU-s).',
        flush=True)
  eval_seed = 10_000 + seed
  learned = evaluate_port(config, logdir, make_env, args.episodes, eval_seed)
  rand = learning_task.play(make_env(), learning_task.random_policy(eval_seed), args.episodes,
                            eval_seed)[0]
  steps, returns = learning_task.episode_curve(logdir / 'train_episodes')
  return dict(impl='port', seed=seed, steps=int(result.steps), train_wall_s=wall,
              train_cpu_s=cpu, learned=learned, random=rand, curve_steps=steps.tolist(),
              curve_returns=returns.tolist(), config=dict(item.split('=', 1) for item in args.set),
              task=dict(task=args.task, max_steps=args.max_steps))


def write_json(path: pathlib.Path, data: Any) -> None:
  """Writes `data` as JSON atomically (temporary file, then rename)."""
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(data))
  os.replace(tmp, path)


# ----------------------------------------------------------------------------- orchestration


def child_command(args: argparse.Namespace, impl: str, seed: int) -> list[str]:
  """The command line that trains and evaluates one (implementation, seed)."""
  outdir = pathlib.Path(args.outdir)
  common = ['--episodes', str(args.episodes), '--task', args.task,
            '--max_steps', str(args.max_steps), '--overlay', args.overlay]
  sets = ['--set', *args.set] if args.set else []
  if impl == 'port':
    return [sys.executable, '-m', 'dreamerv2_tf.learning_check', '--child', 'port',
            '--seed', str(seed), '--outdir', str(outdir), *common, *sets]
  return [args.authors, str(PEER_SCRIPT), '--seed', str(seed),
          '--logdir', str(outdir / f'authors_{seed}'),
          '--output', str(outdir / f'authors_{seed}.json'), *common, *sets]


def _relay(proc: subprocess.Popen, prefix: str, log_path: pathlib.Path) -> None:
  """Copies a child's output to its log file and, prefixed, to stdout (minus noisy lines)."""
  with log_path.open('w') as log:
    for line in proc.stdout:
      log.write(line)
      log.flush()
      if not line.startswith(QUIET_PREFIXES):
        print(f'{prefix} {line}', end='', flush=True)


def run_all(args: argparse.Namespace, jobs: list[tuple[str, int]]) -> list[int]:
  """Runs the (impl, seed) trainings, `args.jobs` at a time; returns their exit statuses."""
  outdir = pathlib.Path(args.outdir)
  outdir.mkdir(parents=True, exist_ok=True)
  pending, running, statuses = list(jobs), [], []
  env = dict(os.environ, PYTHONUNBUFFERED='1', TF_CPP_MIN_LOG_LEVEL='2')
  while pending or running:
    while pending and len(running) < args.jobs:
      impl, seed = pending.pop(0)
      print(f'Starting {impl} seed {seed}: {" ".join(child_command(args, impl, seed))}',
            flush=True)
      proc = subprocess.Popen(child_command(args, impl, seed), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
      thread = threading.Thread(target=_relay, daemon=True, args=(
          proc, f'[{impl} s{seed}]', outdir / f'{impl}_{seed}.log'))
      thread.start()
      running.append((impl, seed, proc, thread))
    time.sleep(1.0)
    for item in list(running):
      impl, seed, proc, thread = item
      if proc.poll() is not None:
        thread.join()
        running.remove(item)
        statuses.append(proc.returncode)
        if proc.returncode:
          print(f'{impl} seed {seed} failed (exit status {proc.returncode}); see '
                f'{outdir / f"{impl}_{seed}.log"}.', flush=True)
  return statuses


# ----------------------------------------------------------------------------- report


def passes(learned: float, rand: float, optimum: float) -> bool:
  """The stated margin: learned >= 2 × random and >= half-way from random to the optimum."""
  return learned >= 2.0 * rand and learned >= (rand + optimum) / 2.0


def load_results(outdir: pathlib.Path) -> list[dict[str, Any]]:
  """Every `<impl>_<seed>.json` in `outdir`, sorted by implementation then seed."""
  results = []
  for path in outdir.glob('*_*.json'):
    data = json.loads(path.read_text())
    if data.get('impl') in IMPLS:
      results.append(data)
  return sorted(results, key=lambda r: (IMPLS.index(r['impl']), r['seed']))


def format_table(results: list[dict[str, Any]], optimum: float) -> str:
  """The results table (markdown), one row per run, then the spread of learned returns."""
  lines = ['| impl | seed | random return (success) | learned return (success) | frames | '
           'minutes | CPU-s | pass |', '|---|---|---|---|---|---|---|---|']
  for r in results:
    lr, rr = learning_task.summarize(r['learned']), learning_task.summarize(r['random'])
    ok = passes(lr['mean'], rr['mean'], optimum)
    lines.append(
        f"| {r['impl']} | {r['seed']} | {rr['mean']:.3f} ({rr['success']:.0%}) | "
        f"{lr['mean']:.3f} ({lr['success']:.0%}) | {r['steps']:,} | "
        f"{r['train_wall_s'] / 60:.1f} | {r['train_cpu_s']:.0f} | {'yes' if ok else 'NO'} |")
  for impl in IMPLS:
    means = [np.mean(r['learned']) for r in results if r['impl'] == impl]
    if means:
      lines.append(f'\n{impl}: learned return over seeds min {min(means):.3f}, '
                   f'max {max(means):.3f}, mean {np.mean(means):.3f} (optimum {optimum:.3f}).')
  return '\n'.join(lines)


def plot(results: list[dict[str, Any]], path: pathlib.Path, every: int, optimum: float) -> None:
  """Training-episode return curves (bin means) of every run, random and optimum levels."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(7, 4), dpi=90)
  colors = {'port': 'tab:blue', 'authors': 'tab:orange'}
  styles = {'port': '-', 'authors': '--'}
  for r in results:
    steps, returns = np.asarray(r['curve_steps']), np.asarray(r['curve_returns'])
    if not len(steps):
      continue
    x, y = learning_task.binned(steps, returns, every)
    label = f"{'this project' if r['impl'] == 'port' else 'authors'} seed {r['seed']}"
    ax.plot(x, y, styles[r['impl']], color=colors[r['impl']], alpha=0.8, lw=1.3, label=label)
  rand = [np.mean(r['random']) for r in results]
  if rand:
    ax.axhline(float(np.mean(rand)), color='gray', ls=':', lw=1.2, label='random policy')
  ax.axhline(optimum, color='green', ls=':', lw=1.2, label='optimum')
  ax.set_xlabel('agent steps (= frames)')
  ax.set_ylabel(f'training episode return (mean per {every} steps)')
  ax.set_title('MiniGrid-Empty-5x5 from pixels, configs.yaml overlay small')
  ax.set_ylim(-0.02, 1.0)
  ax.legend(fontsize=7, ncol=2, loc='upper left')
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name('.tmp-' + path.name)
  fig.savefig(tmp, format='png')
  plt.close(fig)
  os.replace(tmp, path)


def report(args: argparse.Namespace) -> int:
  """Prints the table, writes the PNG; returns 0 if every run passes, else 1."""
  outdir = pathlib.Path(args.outdir)
  results = load_results(outdir)
  if not results:
    print(f'No results (<impl>_<seed>.json) in {outdir}.', flush=True)
    return 1
  optimum = learning_task.optimal_return(args.max_steps)
  table = format_table(results, optimum)
  print(table, flush=True)
  (outdir / 'table.md').write_text(table + '\n')
  if args.png:
    plot(results, pathlib.Path(args.png), args.bin, optimum)
    print(f'Return curves: {args.png}', flush=True)
  ok = all(passes(np.mean(r['learned']), np.mean(r['random']), optimum) for r in results)
  print('Every run beats random by the stated margin.' if ok else
        'Some run does NOT beat random by the stated margin (see the table).', flush=True)
  return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  if args.child == 'port':
    result = train_port(args)
    write_json(pathlib.Path(args.outdir) / f'port_{args.seed}.json', result)
    print(f"port seed {args.seed}: learned {np.mean(result['learned']):.3f}, random "
          f"{np.mean(result['random']):.3f}", flush=True)
    return 0
  if not args.report:
    impls = args.impls or ['port'] + (['authors'] if args.authors else [])
    if 'authors' in impls and not args.authors:
      print('--impls authors needs --authors PYTHON.', file=sys.stderr)
      return 2
    statuses = run_all(args, [(impl, seed) for seed in args.seeds for impl in impls])
    if any(statuses):
      report(args)
      return 1
  return report(args)


if __name__ == '__main__':
  sys.exit(main())
