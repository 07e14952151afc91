"""Command line of the parity tools: `python -m dreamerv2_tf.parity SUBCOMMAND ...`.

  aggregate [--scores FILE] [--method NAME] [--baselines FILE] [--agent KEY] [--per_game] [--json]
      The paper's four final-score aggregates of a published score file (default: the packaged
      atari-dreamerv2-schedules.json) or of a baseline agent's column of baselines.json.
  compare LOGDIR [LOGDIR ...] [--scores FILE] [--method NAME] [--baselines FILE] [--task TASK]
          [--out DIR] [--min_episodes N] [--json]
      Each run's binned evaluation returns against the published seeds' band; PNG + CSV per task
      with --out.

  authors FIXTURE_DIR [--json] [--no_train]
      Imports a fixture's authors' checkpoint and recomputes every array of its outputs.npz with
      this project's components; largest relative error per array, exit 1 above 1e-5.

FILE is a path (JSON, optionally gzip-compressed) or the name of a packaged copy, e.g.
`atari-dreamerv2.json`. Exit status: 0 on success, 1 on a ParityError (message on stderr), 2 on
bad command-line usage.

Adding a subcommand: write `add_NAME(subparsers)` that calls `subparsers.add_parser(...)`, adds
its arguments and `set_defaults(run=FUNCTION)` where FUNCTION(args) -> exit status, and append it
to SUBCOMMANDS.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Callable, Sequence

from dreamerv2_tf import cli
from dreamerv2_tf.parity import compare as compare_lib
from dreamerv2_tf.parity.authors import add_authors
from dreamerv2_tf.parity import scores as scores_lib
from dreamerv2_tf.parity.scores import ParityError


# ----------------------------------------------------------------------------- aggregate

def add_aggregate(subparsers) -> None:
  """Registers `aggregate`."""
  p = subparsers.add_parser(
      'aggregate', help='the paper\'s four final-score aggregates of a score file',
      description='For every game, the mean over seeds of each seed\'s final score (its last '
      'point), then Gamer Median, Gamer Mean, Record Mean and Clipped Record Mean over the '
      'games (docs/reference.md §7).')
  p.add_argument('--scores', metavar='FILE', default=None,
                 help='curve file: a path or a packaged name (default: '
                 f'{scores_lib.ATARI_SCHEDULES}); with --agent, it only names the games')
  p.add_argument('--method', metavar='NAME', default=None,
                 help='only records of this method (e.g. dreamerv2, nosched); default: all')
  p.add_argument('--baselines', metavar='FILE', default=None,
                 help=f'baselines file (default: packaged {scores_lib.BASELINES})')
  p.add_argument('--agent', metavar='KEY', default=None,
                 help='aggregate a baseline column instead, e.g. rainbow_sticky_2e8')
  p.add_argument('--per_game', action='store_true', help='also print every game\'s scores')
  p.add_argument('--json', action='store_true', help='print one JSON object')
  p.set_defaults(run=run_aggregate)


def run_aggregate(args: argparse.Namespace) -> int:
  """`aggregate`: prints the four aggregates (text or JSON)."""
  path = scores_lib.resolve(args.scores, scores_lib.ATARI_SCHEDULES)
  curves = scores_lib.load_curves(path, args.method)
  games = scores_lib.atari_games(curves)
  baselines_path = scores_lib.resolve(args.baselines, scores_lib.BASELINES)
  baselines = scores_lib.load_baselines(baselines_path)
  if args.agent:
    final = scores_lib.agent_scores(baselines, args.agent, games)
    agg = scores_lib.aggregate(final, baselines)
    what = (f'agent {args.agent} of {scores_lib.describe(baselines_path)} over the '
            f'{len(games)} games of {scores_lib.describe(path)}')
  else:
    finals = scores_lib.final_scores({g: curves[g] for g in games})
    agg = scores_lib.aggregate({g: s for g, (s, _) in finals.items()}, baselines,
                               {g: n for g, (_, n) in finals.items()})
    seeds = sorted({n for _, n in finals.values()})
    seeds_text = (f'{seeds[0]}' if len(seeds) == 1 else f'{seeds[0]} to {seeds[-1]}')
    what = (f'{scores_lib.describe(path)}, method {args.method or "all"}, {len(games)} games '
            f'x {seeds_text} seeds; final score per game = mean over seeds of each seed\'s '
            'last point')
  if args.json:
    out = agg.to_dict()
    out.update(scores=scores_lib.describe(path), method=args.method, agent=args.agent,
               baselines=scores_lib.describe(baselines_path))
    print(json.dumps(out, indent=1))
    return 0
  print(f'Aggregates of {what}.')
  if args.per_game:
    print(f'{"game":<28} {"score":>12} {"gamer":>9} {"record":>9}')
    for task, g in agg.games.items():
      print(f'{task:<28} {g.score:>12.2f} {g.gamer:>9.3f} {g.record:>9.4f}')
  for key in scores_lib.AGGREGATE_KEYS:
    print(f'{scores_lib.AGGREGATE_NAMES[key]:<20} {getattr(agg, key):>8.2f}')
  return 0


# ----------------------------------------------------------------------------- compare

def add_compare(subparsers) -> None:
  """Registers `compare`."""
  p = subparsers.add_parser(
      'compare', help='runs\' learning curves against the published seeds',
      description='Bins each run\'s eval_return (train_return as a fallback) the way the '
      'published points were made and sets every bin against the published seeds\' min, '
      'median and max at the same frame count (docs/reference.md §7).')
  p.add_argument('logdirs', nargs='+', metavar='LOGDIR',
                 help='run folders holding config.yaml and metrics.jsonl')
  p.add_argument('--scores', metavar='FILE', default=None,
                 help='curve file: a path or a packaged name (default: the packaged file that '
                 f'holds the task, searched in order {list(scores_lib.CURVE_FILES)})')
  p.add_argument('--method', metavar='NAME', default=None,
                 help='only published records of this method (e.g. dreamerv2); default: all')
  p.add_argument('--baselines', metavar='FILE', default=None,
                 help=f'baselines file (default: packaged {scores_lib.BASELINES})')
  p.add_argument('--task', default=None,
                 help='task of every LOGDIR (default: the `task` in each config.yaml)')
  p.add_argument('--out', metavar='DIR', default=None,
                 help='write TASK.png and TASK.csv per task into DIR')
  p.add_argument('--min_episodes', type=int, default=5,
                 help='note bins with fewer evaluation episodes than this (default 5)')
  p.add_argument('--json', action='store_true', help='print one JSON object')
  p.set_defaults(run=run_compare)


class _CurveFiles:
  """Loads curve files once; finds the one holding a task."""

  def __init__(self, scores: str | None, method: str | None):
    self.explicit = None if scores is None else scores_lib.resolve(scores, '')
    self.method = method
    self.cache: dict[pathlib.Path, dict] = {}

  def load(self, path: pathlib.Path) -> dict:
    if path not in self.cache:
      self.cache[path] = scores_lib.load_curves(path, self.method)
    return self.cache[path]

  def find(self, task: str) -> tuple[str, list, str]:
    """(task as spelled in the file, its seeds, file description)."""
    if self.explicit is not None:
      curves = self.load(self.explicit)
      name = scores_lib.find_task(task, curves, scores_lib.describe(self.explicit))
      return name, curves[name], scores_lib.describe(self.explicit)
    name = scores_lib.canonical_task(task)
    known = set()
    for file in scores_lib.CURVE_FILES:
      path = scores_lib.resolve(file, file)
      try:
        curves = self.load(path)
      except ParityError:
        if self.method is None:
          raise
        continue  # This file lacks --method; look in the next one.
      if name in curves:
        return name, curves[name], scores_lib.describe(path)
      known |= set(curves)
    return name, [], scores_lib.find_task(
        task, known, 'any packaged score file ' + str(list(scores_lib.CURVE_FILES)))


def run_compare(args: argparse.Namespace) -> int:
  """`compare`: prints each run's table, notes and aggregates; writes PNG/CSV with --out."""
  if args.min_episodes < 1:
    raise ParityError(f'--min_episodes must be at least 1, got {args.min_episodes}.')
  files = _CurveFiles(args.scores, args.method)
  baselines = scores_lib.load_baselines(args.baselines)
  reports, seeds_of = [], {}
  for logdir in args.logdirs:
    run = compare_lib.read_run(logdir, args.task)
    task, seeds, source = files.find(run.task)
    seeds_of[task] = (seeds, source)
    reports.append(compare_lib.compare_run(
        run, seeds, task, source, baselines, args.min_episodes))
  curves = {task: seeds for task, (seeds, _) in seeds_of.items()}
  agg = compare_lib.run_aggregates(reports, curves, baselines)
  total_games = len(scores_lib.atari_games(files.load(
      files.explicit or scores_lib.resolve(scores_lib.ATARI_CURVES, '')))) if agg else 0
  written = []
  if args.out:
    out = pathlib.Path(args.out)
    for task, (seeds, source) in seeds_of.items():
      task_reports = [r for r in reports if r.task == task]
      compare_lib.write_plot(task, task_reports, seeds, out / f'{task}.png', source)
      compare_lib.write_csv(task_reports, out / f'{task}.csv')
      written += [str(out / f'{task}.png'), str(out / f'{task}.csv')]
  if args.json:
    result = {'runs': [r.to_dict() for r in reports], 'aggregates': None, 'files': written}
    if agg:
      result['aggregates'] = {
          'games': agg['games'], 'runs': agg['runs'], 'total_games': total_games,
          'run': {k: getattr(agg['run'], k) for k in scores_lib.AGGREGATE_KEYS},
          'published': {k: getattr(agg['published'], k) for k in scores_lib.AGGREGATE_KEYS}}
    print(json.dumps(result, indent=1))
    return 0
  for report in reports:
    print(compare_lib.format_report(report))
    print()
  if agg:
    print(compare_lib.format_aggregates(agg, total_games))
  for path in written:
    print(f'Wrote {path}')
  return 0


# ----------------------------------------------------------------------------- main

SUBCOMMANDS: list[Callable] = [add_aggregate, add_compare, add_authors]
"""Functions that register one subcommand each on the subparsers object."""


def build_parser() -> argparse.ArgumentParser:
  """The argument parser with every subcommand of SUBCOMMANDS."""
  parser = cli.ArgumentParser(
      prog='python -m dreamerv2_tf.parity',
      description='Check a DreamerV2 port against the authors\' published results.')
  subparsers = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
  for add in SUBCOMMANDS:
    add(subparsers)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status (1 and a message on ParityError)."""
  args = build_parser().parse_args(argv)
  try:
    return args.run(args)
  except ParityError as e:
    print(f'parity: error: {e}', file=sys.stderr)
    return 1
  except BrokenPipeError:  # Output piped into e.g. `head`, which closed early.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


if __name__ == '__main__':
  sys.exit(main())
