"""Compares a run's learning curve with the published seeds (docs/reference.md §7).

A run's logdir holds `config.yaml` (keys `task`, `action_repeat`) and `metrics.jsonl`: one JSON
object per line with `step` in FRAMES (agent steps × action_repeat) and any of `eval_return`,
`train_return`, ... ; each evaluation episode is one line with `eval_return`. The run's returns
are binned the way the published points were made: the mean over the bin of frames ending at
each published point ((x − width, x], width 1M frames for Atari, 30k for DMC vision). Each bin
mean is set against the published seeds interpolated at the same frame count.

Nothing here imports TensorFlow; matplotlib is imported only to draw.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import pathlib
import tempfile
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dreamerv2_tf.parity import scores as scores_lib
from dreamerv2_tf.parity.scores import ParityError, SeedCurve

VERDICTS = ('inside', 'above', 'below', 'before', 'beyond')
"""inside/above/below the published min–max band; before/beyond the published frame range."""

# Action repeat of the published runs (docs/reference.md §2), to flag runs that differ.
PUBLISHED_ACTION_REPEAT = {'atari': 4, 'dmc': 2}
# About how many evaluation episodes each published Atari point averages (docs/reference.md §6, §7).
PUBLISHED_EPISODES_PER_BIN = {'atari': 10}

CSV_COLUMNS = ('run', 'task', 'source', 'frames', 'episodes', 'return', 'published_min',
               'published_median', 'published_max', 'seeds', 'total_seeds', 'percentile',
               'verdict', 'gamer_normalized', 'record_normalized')


@dataclasses.dataclass
class Run:
  """A run's returns read from its logdir.

  Attributes:
    logdir: the run's folder. task: the task as the run names it (`config.yaml` or --task).
    action_repeat: from config.yaml, None if unknown. source: 'eval_return' or, when the run
    logged no evaluation, 'train_return'. frames: float64 (N,) the `step` of each episode, in
    frames. returns: float64 (N,). last_frame: the largest `step` on any line (how far the run
    got). notes: what was tolerated or assumed while reading.
  """
  logdir: pathlib.Path
  task: str
  action_repeat: int | None
  source: str
  frames: np.ndarray
  returns: np.ndarray
  last_frame: float
  notes: list


@dataclasses.dataclass(frozen=True)
class Bin:
  """Mean return of the `episodes` episodes whose frames lie in (end − width, end]."""
  end: float
  mean: float
  episodes: int


@dataclasses.dataclass(frozen=True)
class Row:
  """One point of the comparison. Published fields are None when verdict is before/beyond.

  `percentile`: percent of published seeds below the run (ties half). `gamer`/`record`: the
  run's human-normalised return (Atari only).
  """
  frames: float
  episodes: int
  ret: float
  low: float | None
  median: float | None
  high: float | None
  seeds: int
  total_seeds: int
  percentile: float | None
  verdict: str
  gamer: float | None
  record: float | None


@dataclasses.dataclass
class Report:
  """The comparison of one run: `rows` in frame order, `notes` (warnings), `scores` (source)."""
  run: Run
  task: str
  scores: str
  bin_width: float
  rows: list
  notes: list

  @property
  def compared(self) -> list:
    """Rows inside the published frame range."""
    return [r for r in self.rows if r.verdict in ('inside', 'above', 'below')]

  @property
  def final(self) -> Row:
    """The last row inside the published range: the run's final score for aggregates."""
    return self.compared[-1]

  def to_dict(self) -> dict:
    """JSON-ready summary."""
    counts = {v: sum(r.verdict == v for r in self.rows) for v in VERDICTS}
    return {
        'logdir': str(self.run.logdir), 'task': self.task, 'source': self.run.source,
        'scores': self.scores, 'bin_width': self.bin_width, 'notes': list(self.notes),
        'verdicts': counts, 'rows': [dataclasses.asdict(r) for r in self.rows]}


# ----------------------------------------------------------------------------- reading runs

def read_config_task(logdir: pathlib.Path) -> tuple[str, int | None]:
  """(task, action_repeat) from `<logdir>/config.yaml`. ParityError if missing or unusable."""
  # pylint: disable-next=import-outside-toplevel  (only needed when no --task is given)
  from dreamerv2_tf.config import ConfigError, read_blocks
  path = logdir / 'config.yaml'
  if not path.is_file():
    raise ParityError(
        f'No config.yaml in {str(logdir)!r}, so its task is unknown: pass --task (e.g. '
        '--task atari_pong).')
  try:
    config = read_blocks(path)  # one-line ConfigError for YAML that does not parse
  except ConfigError as e:
    raise ParityError(f'{e}; pass --task to compare without it.') from None
  if not isinstance(config, dict) or not isinstance(config.get('task'), str):
    raise ParityError(f'{str(path)!r} has no string key "task"; pass --task.')
  repeat = config.get('action_repeat')
  return config['task'], int(repeat) if isinstance(repeat, (int, float)) else None


def read_run(logdir: str | os.PathLike, task: str | None = None) -> Run:
  """Reads `<logdir>/metrics.jsonl` (and config.yaml unless `task` is given).

  Unreadable lines (a truncated last line after a kill, or one left mid-file by a resumed
  run) are skipped and noted. Uses `eval_return`; if no line has it, falls back to
  `train_return` and notes so. Raises ParityError for a missing logdir or metrics file, or a
  file with no returns at all.
  """
  logdir = pathlib.Path(logdir)
  if not logdir.is_dir():
    raise ParityError(f'Logdir {str(logdir)!r} does not exist or is not a folder.')
  path = logdir / 'metrics.jsonl'
  if not path.is_file():
    raise ParityError(
        f'No metrics.jsonl in {str(logdir)!r}: give the folder a training run logs to '
        '(it holds config.yaml and metrics.jsonl).')
  repeat = None
  if task is None:
    task, repeat = read_config_task(logdir)
  elif (logdir / 'config.yaml').is_file():
    try:
      _, repeat = read_config_task(logdir)
    except ParityError:
      repeat = None
  notes = []
  lines = path.read_text(errors='replace').splitlines()
  bad, no_step = [], 0
  points: dict[str, list] = {'eval_return': [], 'train_return': []}
  last = -math.inf
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      item = json.loads(line)
    except ValueError:
      bad.append(number)
      continue
    if not isinstance(item, dict):
      bad.append(number)
      continue
    step = item.get('step')
    if not _finite(step):
      no_step += 1
      continue
    last = max(last, float(step))
    for key, values in points.items():
      if _finite(item.get(key)):
        values.append((float(step), float(item[key])))
  if bad:
    where = 'the truncated last line' if bad == [len(lines)] else f'line(s) {bad[:10]}'
    notes.append(f'Skipped {len(bad)} unreadable line(s) of metrics.jsonl: {where}.')
  if no_step:
    notes.append(f'Skipped {no_step} line(s) without a numeric "step".')
  source = 'eval_return'
  if not points[source]:
    source = 'train_return'
    if not points[source]:
      raise ParityError(
          f'{str(path)!r} has no "eval_return" or "train_return" values '
          f'({len(lines)} line(s)); nothing to compare.')
    notes.append(
        'No eval_return in metrics.jsonl: using train_return instead (training episodes act '
        'with exploration; the published curves are evaluation returns).')
  data = np.array(sorted(points[source]), np.float64).reshape(-1, 2)
  return Run(logdir, task, repeat, source, data[:, 0], data[:, 1], last, notes)


def _finite(value: Any) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


# ----------------------------------------------------------------------------- comparing

def bin_returns(frames: np.ndarray, returns: np.ndarray, width: float,
                last_frame: float) -> tuple[list, Bin | None]:
  """Means of `returns` over the bins (end − width, end], ends on multiples of `width` frames.

  Args:
    frames: float (N,) frames of each episode. returns: float (N,). width: bin size in frames.
    last_frame: how far the run got; a bin whose end lies beyond it is incomplete.
  Returns:
    (complete bins in frame order, the incomplete last bin or None).
  """
  if width <= 0:
    raise ParityError(f'Bin width must be positive, got {width}.')
  ends = np.ceil(np.asarray(frames, np.float64) / width) * width
  bins = []
  for end in np.unique(ends):
    mask = ends == end
    bins.append(Bin(float(end), float(np.mean(returns[mask])), int(mask.sum())))
  partial = None
  if bins and bins[-1].end > last_frame:
    partial = bins.pop()
  return bins, partial


def judge(value: float, band: scores_lib.Band) -> str:
  """'inside' when band.low <= value <= band.high (with a 1e-9 relative tolerance for rounding
  of bin means), else 'above' or 'below'."""
  tol = 1e-9 * max(1.0, abs(band.low), abs(band.high))
  if value < band.low - tol:
    return 'below'
  if value > band.high + tol:
    return 'above'
  return 'inside'


def compare_run(run: Run, seeds: Sequence[SeedCurve], task: str, scores_name: str,
                baselines: Mapping[str, Mapping[str, float]] | None = None,
                min_episodes: int = 5) -> Report:
  """Sets each bin of `run` against the published `seeds` of `task` at the same frame count.

  Args:
    run: from read_run. seeds: the task's published curves. task: the score files' spelling.
    scores_name: where the curves come from (for messages). baselines: for the human-normalised
      columns (Atari); None to skip them. min_episodes: bins with fewer episodes are noted.
  Raises:
    OutOfRangeError if no bin of the run lies inside the published frame range.
  """
  width = scores_lib.bin_width(seeds)
  lo, hi = scores_lib.frame_range(seeds)
  bins, partial = bin_returns(run.frames, run.returns, width, run.last_frame)
  notes = list(run.notes)
  dom = scores_lib.domain(task)
  expected = PUBLISHED_ACTION_REPEAT.get(dom)
  if run.action_repeat is not None and expected and run.action_repeat != expected:
    notes.append(
        f'The run used action_repeat {run.action_repeat}; the published {dom} runs used '
        f'{expected}. Frames are comparable, the agent is not the published one.')
  if partial is not None:
    notes.append(
        f'The last bin (ending at {fmt_frames(partial.end)}, {partial.episodes} episode(s)) is '
        f'incomplete: the run stopped at {run.last_frame:,.0f} frames; not compared.')
  if not bins:
    raise ParityError(
        f'{str(run.logdir)!r}: no complete {fmt_frames(width)}-frame bin of {run.source} '
        f'(the run stopped at {run.last_frame:,.0f} frames); nothing to compare.')
  rows = []
  can_normalize = baselines is not None and dom == 'atari' and task in baselines
  for b in bins:
    gamer = record = None
    if can_normalize:
      gamer = scores_lib.normalized(b.mean, task, baselines, 'human_gamer')
      record = scores_lib.normalized(b.mean, task, baselines, 'human_record')
    if b.end < lo or b.end > hi:
      verdict = 'before' if b.end < lo else 'beyond'
      rows.append(Row(b.end, b.episodes, b.mean, None, None, None, 0, len(seeds), None,
                      verdict, gamer, record))
      continue
    band = scores_lib.band_at(seeds, b.end)
    rows.append(Row(b.end, b.episodes, b.mean, band.low, band.median, band.high, band.seeds,
                    band.total_seeds, scores_lib.percentile(band.values, b.mean),
                    judge(b.mean, band), gamer, record))
  beyond = [r for r in rows if r.verdict == 'beyond']
  if beyond:
    notes.append(
        f'{len(beyond)} point(s) from {fmt_frames(beyond[0].frames)} on lie beyond the '
        f'published range of {task} ({fmt_frames(lo)} to {fmt_frames(hi)} frames): not '
        'compared, not extrapolated.')
  before = [r for r in rows if r.verdict == 'before']
  if before:
    notes.append(
        f'{len(before)} point(s) lie before the first published point ({fmt_frames(lo)}); not '
        'compared.')
  if not any(r.verdict in ('inside', 'above', 'below') for r in rows):
    raise scores_lib.OutOfRangeError(
        f'{str(run.logdir)!r}: none of its {len(rows)} point(s) ({fmt_frames(rows[0].frames)} to '
        f'{fmt_frames(rows[-1].frames)} frames) lies within the published range of {task} '
        f'({fmt_frames(lo)} to {fmt_frames(hi)} frames); nothing is extrapolated.')
  few = [r for r in rows if r.episodes < min_episodes]
  if few:
    per_bin = PUBLISHED_EPISODES_PER_BIN.get(dom)
    published = (f'; the published points average about {per_bin} evaluation episodes per bin'
                 if per_bin else '')
    notes.append(
        f'{len(few)} of {len(rows)} bin(s) hold fewer than {min_episodes} episodes (fewest: '
        f'{min(r.episodes for r in few)}){published}. Their means are noisy: evaluate more '
        f'episodes per evaluation (e.g. --eval_eps {per_bin or 10}) for a fair comparison.')
  if any(0 < r.seeds < r.total_seeds for r in rows):
    notes.append('Some published seeds end early; the band at later points uses fewer seeds '
                 '(column "seeds").')
  return Report(run, task, scores_name, width, rows, notes)


def run_aggregates(reports: Sequence[Report], curves: Mapping[str, Sequence[SeedCurve]],
                   baselines: Mapping[str, Mapping[str, float]]) -> dict | None:
  """Aggregates of the Atari runs' final scores and of the published seeds at the same frames.

  Per game: the mean over its runs of each run's final compared point, and the mean over the
  published seeds (interpolated at each run's final frames), averaged over the runs. Returns
  None without Atari reports, else {'games', 'run': Aggregates, 'published': Aggregates}.
  """
  finals: dict[str, list] = {}
  published: dict[str, list] = {}
  for report in reports:
    if scores_lib.domain(report.task) != 'atari' or report.task not in baselines:
      continue
    final = report.final
    band = scores_lib.band_at(curves[report.task], final.frames)
    finals.setdefault(report.task, []).append(final.ret)
    published.setdefault(report.task, []).append(float(np.mean(band.values)))
  if not finals:
    return None
  run_scores = {t: float(np.mean(v)) for t, v in finals.items()}
  pub_scores = {t: float(np.mean(v)) for t, v in published.items()}
  return {'games': sorted(finals),
          'runs': {t: len(v) for t, v in finals.items()},
          'run': scores_lib.aggregate(run_scores, baselines),
          'published': scores_lib.aggregate(pub_scores, baselines)}


# ----------------------------------------------------------------------------- formatting

def fmt_frames(frames: float) -> str:
  """Frames in millions: 5000000 -> '5M', 30000 -> '0.03M'."""
  return f'{frames / 1e6:g}M'


def _fmt(value: float | None, spec: str = '.2f') -> str:
  return '-' if value is None else format(value, spec)


def format_report(report: Report) -> str:
  """The table of one run as text: one line per bin, then the notes."""
  seeds = report.rows[0].total_seeds if report.rows else 0
  head = (f'{report.task}: {report.run.logdir} ({report.run.source}) vs {report.scores}, '
          f'{seeds} published seeds, bins of {fmt_frames(report.bin_width)} frames')
  cols = (f'{"frames":>8} {"eps":>4} {"return":>10} {"pub min":>10} {"pub median":>10} '
          f'{"pub max":>10} {"seeds":>5} {"pctl":>5}  {"verdict":<7} {"gamer":>7} {"record":>7}')
  lines = [head, cols]
  for r in report.rows:
    lines.append(
        f'{fmt_frames(r.frames):>8} {r.episodes:>4} {r.ret:>10.2f} {_fmt(r.low):>10} '
        f'{_fmt(r.median):>10} {_fmt(r.high):>10} {r.seeds:>5} {_fmt(r.percentile, ".0f"):>5}  '
        f'{r.verdict:<7} {_fmt(r.gamer):>7} {_fmt(r.record, ".3f"):>7}')
  counts = {v: sum(r.verdict == v for r in report.rows) for v in VERDICTS}
  summary = ', '.join(f'{n} {v}' for v, n in counts.items() if n)
  final = report.final
  lines.append(
      f'Summary: {summary}. Final point {fmt_frames(final.frames)}: {final.ret:.2f} '
      f'(published median {final.median:.2f}, range {final.low:.2f} to {final.high:.2f}, '
      f'percentile {final.percentile:.0f})' + (
          f'; human-normalised: gamer {final.gamer:.3f}, record {final.record:.4f}.'
          if final.gamer is not None else '; no human baselines for this task.'))
  lines += [f'Note: {n}' for n in report.notes]
  return '\n'.join(lines)


def format_aggregates(agg: dict, total_games: int) -> str:
  """The run-vs-published aggregate table from run_aggregates()."""
  games = agg['games']
  lines = [
      f'Aggregates over the {len(games)} Atari game(s) run (of {total_games}): final score per '
      'game = mean over its runs; published = mean over the seeds at the same frames.',
      f'{"":<20} {"runs":>10} {"published":>10}']
  for key in scores_lib.AGGREGATE_KEYS:
    lines.append(f'{scores_lib.AGGREGATE_NAMES[key]:<20} {getattr(agg["run"], key):>10.2f} '
                 f'{getattr(agg["published"], key):>10.2f}')
  if len(games) < total_games:
    lines.append(f'(Over {len(games)} game(s), not comparable with the paper\'s '
                 f'{total_games}-game aggregates.)')
  return '\n'.join(lines)


# ----------------------------------------------------------------------------- files

def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = 'w') -> None:
  """Calls write(file) on a temporary file beside `path`, then renames it onto `path`."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, mode) as f:
      write(f)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)  # Our own unfinished temporary file, never the user's data.
    raise


def write_csv(reports: Sequence[Report], path: str | os.PathLike) -> None:
  """Writes the rows of `reports` as CSV (columns CSV_COLUMNS), atomically."""
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(CSV_COLUMNS)
  for report in reports:
    for r in report.rows:
      writer.writerow([
          str(report.run.logdir), report.task, report.run.source, f'{r.frames:.0f}',
          r.episodes, repr(r.ret), *('' if v is None else repr(v) for v in (
              r.low, r.median, r.high)), r.seeds, r.total_seeds,
          '' if r.percentile is None else f'{r.percentile:.1f}', r.verdict,
          *('' if v is None else repr(v) for v in (r.gamer, r.record))])
  atomic_write(path, lambda f: f.write(buf.getvalue()))


PLOT_SIZE = (900, 540)
"""Width and height in pixels of the PNGs written by write_plot."""


def write_plot(task: str, reports: Sequence[Report], seeds: Sequence[SeedCurve],
               path: str | os.PathLike, scores_name: str) -> None:
  """PNG of PLOT_SIZE pixels: the runs' bin means over the published min–max band (shaded)
  and median line, on the published points up to the runs' last frame. Written atomically."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # No pyplot, no global backend.
  from matplotlib.figure import Figure
  dpi = 100
  fig = Figure(figsize=(PLOT_SIZE[0] / dpi, PLOT_SIZE[1] / dpi), dpi=dpi)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  lo, hi = scores_lib.frame_range(seeds)
  width = scores_lib.bin_width(seeds)
  last = max(r.rows[-1].frames for r in reports)
  upto = min(hi, max(last + width, lo + 4 * width))
  grid = np.unique(np.concatenate([c.xs for c in seeds]))
  grid = grid[(grid >= lo) & (grid <= upto)]
  bands = [scores_lib.band_at(seeds, x) for x in grid]
  xm = grid / 1e6
  ax.fill_between(xm, [b.low for b in bands], [b.high for b in bands], color='tab:gray',
                  alpha=0.3, linewidth=0, label=f'published min–max ({len(seeds)} seeds)')
  ax.plot(xm, [b.median for b in bands], color='black', linewidth=1.2, linestyle='--',
          zorder=3, label='published median')
  used = set()
  colors = ('tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:purple', 'tab:brown')
  for i, report in enumerate(reports):
    frames = np.array([r.frames for r in report.rows]) / 1e6
    rets = np.array([r.ret for r in report.rows])
    label = report.run.logdir.name or str(report.run.logdir)
    if report.run.source != 'eval_return':
      label += f' ({report.run.source})'
    ax.plot(frames, rets, color=colors[i % len(colors)], marker='o', markersize=3,
            linewidth=1.2, zorder=2, label=label)
    for verdict, marker in (('below', 'v'), ('above', '^')):
      idx = [j for j, r in enumerate(report.rows) if r.verdict == verdict]
      if idx:
        ax.plot(frames[idx], rets[idx], linestyle='none', marker=marker, markersize=7,
                markerfacecolor='none', markeredgecolor='tab:red', zorder=4,
                label=None if verdict in used else f'{verdict} the band')
        used.add(verdict)
  if last > hi:
    ax.axvline(hi / 1e6, color='tab:red', linestyle=':', linewidth=1,
               label='end of published range')
  ax.set_xlabel('frames (millions)')
  ax.set_ylabel('evaluation return (bin mean)')
  ax.set_title(f'{task}: runs vs {scores_name}')
  ax.grid(alpha=0.3)
  ax.legend(loc='best', fontsize=8)
  fig.tight_layout()
  atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=dpi), mode='wb')
