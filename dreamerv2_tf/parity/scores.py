"""Published DreamerV2 score files: loading, validation, final-score aggregates, bands.

Implements docs/reference.md §7. A score file is a JSON list of records
`{task, method, seed (str), xs: [frames], ys: [returns]}`; `ys[i]` is the mean evaluation return
over the bin of frames ending at `xs[i]` (1M frames for Atari). `baselines.json` maps each
`atari_<game>` to `{random, human_gamer, human_record, <agent>: final score, ...}`.

Every frame count here is in FRAMES (agent steps × action repeat), like the published `xs`.
Nothing in this module imports TensorFlow.

Normalised score of a game: (score − random) / (reference − random), reference = `human_gamer`
or `human_record`. The four aggregates over games: Gamer Median, Gamer Mean, Record Mean,
Clipped Record Mean (record-normalised scores clipped at 1 before the mean).
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import json
import math
import os
import pathlib
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent.parent / 'data' / 'published_scores'
"""Folder of the gzip-compressed copies of the published files shipped with the package."""

ATARI_CURVES = 'atari-dreamerv2.json'
ATARI_SCHEDULES = 'atari-dreamerv2-schedules.json'
BASELINES = 'baselines.json'
DMC_CURVES = 'dmc-vision-dreamerv2.json'
# Files searched, in order, for a run's task when `compare` is given no `--scores`.
CURVE_FILES = (ATARI_CURVES, DMC_CURVES, 'humanoid-dreamerv2.json', 'montezuma-dreamerv2.json')

AGGREGATE_KEYS = ('gamer_median', 'gamer_mean', 'record_mean', 'clipped_record_mean')
AGGREGATE_NAMES = {
    'gamer_median': 'Gamer Median', 'gamer_mean': 'Gamer Mean',
    'record_mean': 'Record Mean', 'clipped_record_mean': 'Clipped Record Mean'}
REFERENCES = ('human_gamer', 'human_record')


class ParityError(ValueError):
  """Bad input to the parity tools; the message names the bad value and what is allowed."""


class OutOfRangeError(ParityError):
  """A frame count outside the published curves' range (nothing is extrapolated)."""


@dataclasses.dataclass(frozen=True)
class SeedCurve:
  """One published run.

  Attributes:
    task: e.g. 'atari_pong'. method: e.g. 'dreamerv2', 'nosched'. seed: the file's seed string.
    xs: float64 (N,) frames, strictly increasing. ys: float64 (N,) mean evaluation return of
      the bin ending at each xs.
  """
  task: str
  method: str
  seed: str
  xs: np.ndarray
  ys: np.ndarray


@dataclasses.dataclass(frozen=True)
class Band:
  """The published seeds at one frame count (each seed linearly interpolated to `frames`).

  Attributes:
    frames: float frame count. values: float64 (n,) one value per seed that covers `frames`.
    low / median / high: min, median and max of `values`. seeds: n. total_seeds: seeds of the
    task, including those that ended before `frames`.
  """
  frames: float
  values: np.ndarray
  low: float
  median: float
  high: float
  seeds: int
  total_seeds: int


@dataclasses.dataclass(frozen=True)
class GameScore:
  """A game's final score and its normalised scores (gamer: vs human gamer, record: vs record)."""
  score: float
  gamer: float
  record: float
  seeds: int | None = None


@dataclasses.dataclass(frozen=True)
class Aggregates:
  """The paper's four aggregates over `games` (task -> GameScore), docs/reference.md §7."""
  gamer_median: float
  gamer_mean: float
  record_mean: float
  clipped_record_mean: float
  games: dict

  def to_dict(self) -> dict:
    """JSON-ready: the four aggregates, `games` (task -> dict) and `num_games`."""
    out = {key: getattr(self, key) for key in AGGREGATE_KEYS}
    out['games'] = {task: dataclasses.asdict(g) for task, g in self.games.items()}
    out['num_games'] = len(self.games)
    return out


# ----------------------------------------------------------------------------- files


def packaged_names() -> list[str]:
  """Names (e.g. 'atari-dreamerv2.json') of the score files shipped as package data."""
  return sorted(p.name[:-3] for p in PACKAGE_DIR.glob('*.json.gz'))


def resolve(name_or_path: str | os.PathLike | None, default: str) -> pathlib.Path:
  """Finds a score file: an existing path, else a packaged name (with or without '.json').

  `None` gives the packaged `default`. Raises ParityError naming the value and listing the
  packaged names when neither matches.
  """
  if name_or_path is None:
    name_or_path = default
  path = pathlib.Path(name_or_path).expanduser()
  if path.is_file():
    return path
  if path.exists():
    raise ParityError(f'Score file {str(name_or_path)!r} is not a regular file.')
  name = str(name_or_path)
  if not name.endswith('.json'):
    name += '.json'
  packaged = PACKAGE_DIR / (name + '.gz')
  if os.sep not in str(name_or_path) and packaged.is_file():
    return packaged
  raise ParityError(
      f'Score file {str(name_or_path)!r} not found: give a path to a JSON file (optionally '
      f'.gz) or one of the packaged names {packaged_names()}.')


def describe(path: pathlib.Path) -> str:
  """'atari-dreamerv2.json (packaged copy)' for package data, else the path."""
  path = pathlib.Path(path)
  if path.parent.resolve() == PACKAGE_DIR and path.name.endswith('.gz'):
    return f'{path.name[:-3]} (packaged copy)'
  return str(path)


def read_json(path: str | os.PathLike) -> Any:
  """Parses a JSON file, gzip-compressed or not (detected from its first bytes).

  Raises ParityError for an unreadable, non-gzip-but-corrupt or non-JSON file.
  """
  path = pathlib.Path(path)
  try:
    raw = path.read_bytes()
    if raw[:2] == b'\x1f\x8b':
      raw = gzip.decompress(raw)
    return json.loads(raw.decode('utf-8'))
  except OSError as e:
    raise ParityError(f'Cannot read score file {str(path)!r}: {e}') from None
  except (ValueError, EOFError) as e:  # JSONDecodeError, UnicodeDecodeError, BadGzipFile.
    raise ParityError(
        f'Malformed score file {str(path)!r}: not valid (optionally gzip-compressed) JSON '
        f'({e}).') from None


def _number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_curves(data: Any, source: str = '<data>') -> list[SeedCurve]:
  """Validates the records of a curve file. Raises ParityError saying what is wrong where.

  Tasks named `stats_*` (the DMC file's normalised summary curves, whose xs are not frames)
  are skipped.
  """
  def fail(i, why):
    raise ParityError(
        f'Malformed score file {source}: record {i} {why}; each record must be '
        '{"task": str, "method": str, "seed": str, "xs": [frames], "ys": [returns]} with '
        'xs strictly increasing and as many ys as xs.')
  if not isinstance(data, list) or not data:
    raise ParityError(
        f'Malformed score file {source}: expected a non-empty JSON list of curve records, got '
        f'{type(data).__name__}{" (empty)" if data == [] else ""}. (Is this baselines.json? '
        'Pass it as --baselines.)')
  curves = []
  for i, rec in enumerate(data):
    if not isinstance(rec, dict):
      fail(i, f'is a {type(rec).__name__}, not an object')
    missing = [k for k in ('task', 'method', 'seed', 'xs', 'ys') if k not in rec]
    if missing:
      fail(i, f'lacks {missing}')
    if not isinstance(rec['task'], str) or not rec['task']:
      fail(i, f'has task {rec["task"]!r}')
    if str(rec['task']).startswith('stats_'):
      continue
    xs, ys = rec['xs'], rec['ys']
    if not isinstance(xs, list) or not isinstance(ys, list) or not xs or len(xs) != len(ys):
      fail(i, f'({rec["task"]}) has xs/ys that are not two non-empty lists of equal length')
    if not all(_number(v) for v in xs) or not all(_number(v) for v in ys):
      fail(i, f'({rec["task"]}) has non-numeric or non-finite values in xs or ys')
    xs = np.asarray(xs, np.float64)
    if np.any(np.diff(xs) <= 0):
      fail(i, f'({rec["task"]}) has xs that are not strictly increasing')
    curves.append(SeedCurve(
        rec['task'], str(rec['method']), str(rec['seed']), xs, np.asarray(ys, np.float64)))
  if not curves:
    raise ParityError(f'Malformed score file {source}: it holds no curves with frame counts.')
  return curves


def load_curves(path: str | os.PathLike, method: str | None = None) -> dict[str, list[SeedCurve]]:
  """Reads a curve file into {task: [SeedCurve, ...]} (tasks sorted, seeds in file order).

  `method` keeps only records of that method (e.g. 'dreamerv2'); an unknown method raises
  ParityError listing the file's methods.
  """
  curves = parse_curves(read_json(path), describe(pathlib.Path(path)))
  if method is not None:
    methods = sorted({c.method for c in curves})
    if method not in methods:
      raise ParityError(
          f'Method {method!r} is not in {describe(pathlib.Path(path))}; its methods: {methods}.')
    curves = [c for c in curves if c.method == method]
  by_task: dict[str, list[SeedCurve]] = {}
  for c in curves:
    by_task.setdefault(c.task, []).append(c)
  return dict(sorted(by_task.items()))


def load_baselines(path: str | os.PathLike | None = None) -> dict[str, dict[str, float]]:
  """Reads baselines.json (packaged copy when `path` is None): {task: {key: score}}.

  Raises ParityError if it is not an object of objects of finite numbers.
  """
  path = resolve(path, BASELINES)
  data = read_json(path)
  source = describe(path)
  if not isinstance(data, dict) or not data:
    raise ParityError(
        f'Malformed baselines file {source}: expected a JSON object '
        '{"atari_<game>": {"random": ..., "human_gamer": ..., ...}}, got '
        f'{type(data).__name__}.')
  for task, entry in data.items():
    if not isinstance(entry, dict) or not all(_number(v) for v in entry.values()):
      raise ParityError(
          f'Malformed baselines file {source}: entry {task!r} must map names to finite numbers, '
          f'got {entry!r:.200}.')
  return {task: {k: float(v) for k, v in entry.items()} for task, entry in data.items()}


# ----------------------------------------------------------------------------- tasks

def canonical_task(name: str) -> str:
  """Spells a run's task like the score files: lower snake case ('atari_JamesBond' ->
  'atari_james_bond', 'dmc-walker-walk' -> 'dmc_walker_walk')."""
  name = str(name).strip().replace('-', '_').replace(' ', '_')
  name = re.sub(r'(?<=[a-z0-9])(?=[A-Z])', '_', name)
  return re.sub(r'_+', '_', name.lower())


def find_task(task: str, available: Iterable[str], source: str) -> str:
  """Returns the spelling of `task` found in `available`; ParityError with suggestions if absent."""
  available = sorted(available)
  name = canonical_task(task)
  if name in available:
    return name
  close = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
  hint = f' Closest: {close}.' if close else ''
  raise ParityError(
      f'Task {task!r} is not in {source} ({len(available)} tasks: '
      f'{", ".join(available[:8])}{", ..." if len(available) > 8 else ""}).{hint}')


def domain(task: str) -> str:
  """'atari', 'dmc' or the part before the first underscore."""
  return task.split('_', 1)[0]


# ----------------------------------------------------------------------------- final scores

def final_scores(curves: Mapping[str, Sequence[SeedCurve]]) -> dict[str, tuple[float, int]]:
  """Per task: (mean over seeds of each seed's last point, number of seeds). docs/reference.md §7."""
  return {task: (float(np.mean([c.ys[-1] for c in seeds])), len(seeds))
          for task, seeds in curves.items()}


def agent_scores(baselines: Mapping[str, Mapping[str, float]], agent: str,
                 games: Iterable[str]) -> dict[str, float]:
  """The final score of baseline column `agent` (e.g. 'rainbow_sticky_2e8') for each game.

  Raises ParityError naming the games that lack it, or listing the agents if it is unknown.
  """
  games = list(games)
  columns = sorted({k for entry in baselines.values() for k in entry} - {'random', *REFERENCES})
  if agent not in columns:
    raise ParityError(f'Agent {agent!r} is not a column of the baselines; agents: {columns}.')
  missing = [g for g in games if agent not in baselines.get(g, {})]
  if missing:
    raise ParityError(f'Agent {agent!r} has no score for {len(missing)} game(s): {missing}.')
  return {g: baselines[g][agent] for g in games}


def normalized(score: float, task: str, baselines: Mapping[str, Mapping[str, float]],
               reference: str = 'human_gamer') -> float:
  """(score − random) / (reference − random) for `task`. ParityError if a baseline is missing."""
  if reference not in REFERENCES:
    raise ParityError(f'Reference {reference!r} is not one of {REFERENCES}.')
  entry = baselines.get(task)
  if entry is None:
    raise ParityError(f'Task {task!r} has no entry in the baselines.')
  for key in ('random', reference):
    if key not in entry:
      raise ParityError(f'Baselines of {task!r} lack {key!r} (it has {sorted(entry)}).')
  span = entry[reference] - entry['random']
  if span == 0:
    raise ParityError(f'Baselines of {task!r}: {reference} equals random; cannot normalise.')
  return (score - entry['random']) / span


def aggregate(scores: Mapping[str, float], baselines: Mapping[str, Mapping[str, float]],
              seeds: Mapping[str, int] | None = None) -> Aggregates:
  """The four aggregates over the games of `scores` (task -> final score). docs/reference.md §7.

  Raises ParityError for an empty `scores` or a game lacking random/human baselines.
  """
  if not scores:
    raise ParityError('No games to aggregate.')
  games = {}
  for task, score in sorted(scores.items()):
    games[task] = GameScore(
        float(score), normalized(score, task, baselines, 'human_gamer'),
        normalized(score, task, baselines, 'human_record'),
        None if seeds is None else seeds.get(task))
  gamer = np.array([g.gamer for g in games.values()])
  record = np.array([g.record for g in games.values()])
  return Aggregates(
      float(np.median(gamer)), float(np.mean(gamer)), float(np.mean(record)),
      float(np.mean(np.minimum(record, 1.0))), games)


def atari_games(curves: Mapping[str, Sequence[SeedCurve]]) -> list[str]:
  """The `atari_*` tasks of a curve file; ParityError if there are none."""
  games = [t for t in curves if domain(t) == 'atari']
  if not games:
    raise ParityError(
        f'The score file holds no atari_* tasks (it has {sorted(curves)[:5]}...); the human-'
        'normalised aggregates exist only for Atari.')
  return games


# ----------------------------------------------------------------------------- bands

def frame_range(seeds: Sequence[SeedCurve]) -> tuple[float, float]:
  """(first, last) published frame count over the seeds of one task."""
  return min(float(c.xs[0]) for c in seeds), max(float(c.xs[-1]) for c in seeds)


def bin_width(seeds: Sequence[SeedCurve]) -> float:
  """Frames between consecutive published points (1M Atari, 30k DMC vision), the bin size."""
  diffs = np.concatenate([np.diff(c.xs) for c in seeds if len(c.xs) > 1] or [np.zeros(0)])
  if diffs.size:
    return float(np.median(diffs))
  return float(min(c.xs[0] for c in seeds))


def band_at(seeds: Sequence[SeedCurve], frames: float) -> Band:
  """The published seeds' values at `frames`, each linearly interpolated between its points.

  Only seeds whose curve covers `frames` count (some Atari runs end early). Raises
  OutOfRangeError when no seed covers it: before the first or after the last published point
  (nothing is extrapolated).
  """
  if not seeds:
    raise ParityError('No published seeds given.')
  frames = float(frames)
  values = [float(np.interp(frames, c.xs, c.ys)) for c in seeds
            if c.xs[0] <= frames <= c.xs[-1]]
  if not values:
    lo, hi = frame_range(seeds)
    raise OutOfRangeError(
        f'{frames:,.0f} frames is outside the published range of {seeds[0].task} '
        f'({lo:,.0f} to {hi:,.0f} frames); not extrapolated.')
  arr = np.array(values)
  return Band(frames, arr, float(arr.min()), float(np.median(arr)), float(arr.max()),
              len(values), len(seeds))


def percentile(values: np.ndarray, x: float) -> float:
  """Percent of `values` below `x`, ties counting half (0 below all, 100 above all)."""
  values = np.asarray(values, np.float64)
  below = np.sum(values < x)
  equal = np.sum(values == x)
  return float(100.0 * (below + 0.5 * equal) / len(values))
