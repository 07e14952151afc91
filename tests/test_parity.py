"""Tests of dreamerv2_tf.parity against the published score files (docs/reference.md §7, issue 6).

The score files are the package's own gzip copies (dreamerv2_tf/data/published_scores/), checked
against the SHA-256 sums its README records. When the environment variable DREAMERV2_SHARED names
the project's shared folder (with published_scores/ inside), the uncompressed originals there are
compared byte for byte as an extra check; nothing outside the repository is required.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pathlib
import re
import stat
import subprocess
import sys

import numpy as np
import pytest

from dreamerv2_tf.parity import compare as compare_lib
from dreamerv2_tf.parity import scores as scores_lib
from dreamerv2_tf.parity.__main__ import SUBCOMMANDS, build_parser, main
from dreamerv2_tf.parity.scores import OutOfRangeError, ParityError

REPO = pathlib.Path(__file__).resolve().parent.parent
FILES = ('atari-dreamerv2.json', 'atari-dreamerv2-schedules.json', 'baselines.json',
         'dmc-vision-dreamerv2.json', 'humanoid-dreamerv2.json', 'montezuma-dreamerv2.json')
_UNPACKED = {}


def original(name: str) -> pathlib.Path:
  """The uncompressed JSON of a published score file: the package's gzip copy, unpacked once
  into a temporary folder (the code under test reads both plain and gzip files)."""
  if name not in _UNPACKED:
    import tempfile
    folder = pathlib.Path(tempfile.mkdtemp(prefix='published_scores-'))
    path = folder / name
    path.write_bytes(gzip.decompress(scores_lib.resolve(name, '').read_bytes()))
    _UNPACKED[name] = path
  return _UNPACKED[name]


def recorded_sha256() -> dict[str, str]:
  """{file: sha256} from the table in the package data's README."""
  text = (scores_lib.PACKAGE_DIR / 'README.md').read_text()
  return {m[0]: m[1] for m in re.findall(r'^\| (\S+\.json) \| ([0-9a-f]{64}) \|$', text, re.M)}


@pytest.fixture(scope='module')
def pong():
  return scores_lib.load_curves(original('atari-dreamerv2.json'))['atari_pong']


@pytest.fixture(scope='module')
def baselines():
  return scores_lib.load_baselines(original('baselines.json'))


def write_logdir(path: pathlib.Path, task: str | None, points, action_repeat: int = 4,
                 key: str = 'eval_return', tail: str = '') -> pathlib.Path:
  """A run folder: config.yaml (unless task is None) and metrics.jsonl with one line per
  (frames, return), interleaved with training-metric lines, plus `tail` appended raw."""
  path.mkdir(parents=True, exist_ok=True)
  if task is not None:
    (path / 'config.yaml').write_text(f'task: {task}\naction_repeat: {action_repeat}\n')
  lines = []
  for step, ret in points:
    lines.append(json.dumps({'step': step, key: ret, 'eval_length': 800}))
    lines.append(json.dumps({'step': step, 'image_loss': 3900.0, 'fps': 12.0}))
  (path / 'metrics.jsonl').write_text('\n'.join(lines) + '\n' + tail)
  return path


def episodes_per_bin(value_at, ends, per_bin: int = 10, width: float = 1e6):
  """`per_bin` episodes spread over each bin (end − width, end], all with return value_at(end)."""
  return [(int(end - width + (k + 1) * width / per_bin), value_at(end))
          for end in ends for k in range(per_bin)]


# ----------------------------------------------------------------------------- aggregates

@pytest.mark.parametrize('where', ['original', 'package'])
def test_schedules_aggregates_match_the_paper(where):
  path = (original('atari-dreamerv2-schedules.json') if where == 'original'
          else scores_lib.resolve('atari-dreamerv2-schedules.json', ''))
  base = scores_lib.load_baselines(
      original('baselines.json') if where == 'original' else None)
  curves = scores_lib.load_curves(path)
  assert len(curves) == 55 and {len(s) for s in curves.values()} == {4}
  finals = scores_lib.final_scores(curves)
  agg = scores_lib.aggregate({t: s for t, (s, _) in finals.items()}, base)
  assert round(agg.gamer_median, 2) == 2.64
  assert round(agg.gamer_mean, 2) == 31.71
  assert round(agg.record_mean, 2) == 0.43
  assert round(agg.clipped_record_mean, 2) == 0.28
  # James Bond dominates the Gamer Mean: without it the mean falls below 10.
  bond = agg.games['atari_james_bond'].gamer
  assert bond > 1000 and (55 * agg.gamer_mean - bond) / 54 < 10
  # Hand check of one game: Pong's final score is the mean of the 4 seeds' last points.
  seeds = curves['atari_pong']
  assert finals['atari_pong'] == (np.mean([s.ys[-1] for s in seeds]), 4)
  expected = (finals['atari_pong'][0] - base['atari_pong']['random']) / (
      base['atari_pong']['human_gamer'] - base['atari_pong']['random'])
  assert agg.games['atari_pong'].gamer == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize('agent, triple', [
    ('rainbow_sticky_2e8', (1.47, 0.17, 0.17)),
    ('iqn_sticky_2e8', (1.29, 0.21, 0.21)),
    ('dqn_sticky_2e8', (0.65, 0.12, 0.12)),
])
def test_baseline_agents_aggregates(agent, triple, baselines):
  games = scores_lib.atari_games(scores_lib.load_curves(original('atari-dreamerv2.json')))
  agg = scores_lib.aggregate(scores_lib.agent_scores(baselines, agent, games), baselines)
  assert len(agg.games) == 55
  got = (agg.gamer_median, agg.record_mean, agg.clipped_record_mean)
  assert tuple(round(v, 2) for v in got) == triple


def test_aggregate_cli_json_and_text(capsys):
  assert main(['aggregate', '--json']) == 0
  out = json.loads(capsys.readouterr().out)
  assert {'gamer_median', 'gamer_mean', 'record_mean', 'clipped_record_mean', 'games'} <= set(out)
  assert round(out['gamer_median'], 2) == 2.64 and len(out['games']) == 55
  assert out['games']['atari_pong']['seeds'] == 4
  assert main(['aggregate', '--agent', 'rainbow_sticky_2e8']) == 0
  text = capsys.readouterr().out
  assert 'Gamer Median             1.47' in text and 'Clipped Record Mean      0.17' in text
  # --method keeps the 3 `nosched` seeds of the 11-seed file.
  assert main(['aggregate', '--scores', str(original('atari-dreamerv2.json')),
               '--method', 'nosched', '--json']) == 0
  out = json.loads(capsys.readouterr().out)
  assert {g['seeds'] for g in out['games'].values()} == {3}


def test_package_copy_matches_the_recorded_checksums():
  sums = recorded_sha256()
  assert sorted(sums) == sorted(FILES)
  for name in FILES:
    packaged = scores_lib.resolve(name, '')
    assert packaged.name == name + '.gz' and packaged.parent == scores_lib.PACKAGE_DIR
    assert hashlib.sha256(gzip.decompress(packaged.read_bytes())).hexdigest() == sums[name]


def test_package_copy_is_identical_to_the_shared_originals():
  """Extra check, only where DREAMERV2_SHARED names the project's shared folder."""
  shared = os.environ.get('DREAMERV2_SHARED')
  if not shared:
    pytest.skip('DREAMERV2_SHARED is not set: no uncompressed originals to compare with (the '
                'checksum test covers the package copies)')
  folder = pathlib.Path(shared) / 'published_scores'
  for name in FILES:
    assert gzip.decompress(scores_lib.resolve(name, '').read_bytes()) == \
        (folder / name).read_bytes(), name


def test_package_copy_gives_the_same_numbers_as_plain_json():
  assert (scores_lib.PACKAGE_DIR / 'LICENSE').read_text().count('MIT License') == 1
  assert 'Danijar Hafner' in (scores_lib.PACKAGE_DIR / 'LICENSE').read_text()
  assert (scores_lib.PACKAGE_DIR / 'README.md').is_file()
  base_o = scores_lib.load_baselines(original('baselines.json'))
  base_p = scores_lib.load_baselines()
  assert base_o == base_p
  for name in ('atari-dreamerv2.json', 'atari-dreamerv2-schedules.json'):
    aggs = []
    for path, base in ((original(name), base_o), (scores_lib.resolve(name, ''), base_p)):
      finals = scores_lib.final_scores(scores_lib.load_curves(path))
      aggs.append(scores_lib.aggregate({t: s for t, (s, _) in finals.items()}, base).to_dict())
    assert aggs[0] == aggs[1]
  band_o = scores_lib.band_at(scores_lib.load_curves(original(FILES[0]))['atari_pong'], 5e6)
  band_p = scores_lib.band_at(
      scores_lib.load_curves(scores_lib.resolve(FILES[0], ''))['atari_pong'], 5e6)
  assert np.array_equal(band_o.values, band_p.values)


# ----------------------------------------------------------------------------- bands

def test_pong_band_matches_spec(pong):
  assert len(pong) == 11
  band = scores_lib.band_at(pong, 5e6)
  assert (band.seeds, band.total_seeds) == (11, 11)
  assert band.median == pytest.approx(11.1) and band.low == 7.0 and band.high == 16.3
  first = scores_lib.band_at(pong, 1e6)
  assert (first.low, first.high) == (-20.4, -15.7)
  assert np.mean(first.values) == pytest.approx(-18.79, abs=0.005)
  ten = scores_lib.band_at(pong, 10e6)
  assert (ten.low, ten.high) == (13.7, 19.7)


def test_band_interpolates_between_points_and_never_extrapolates(pong):
  band = scores_lib.band_at(pong, 5.5e6)
  expected = [(s.ys[4] + s.ys[5]) / 2 for s in pong]  # xs[4] = 5M, xs[5] = 6M.
  assert all(s.xs[4] == 5e6 and s.xs[5] == 6e6 for s in pong)
  np.testing.assert_allclose(band.values, expected, rtol=1e-12)
  with pytest.raises(OutOfRangeError, match='outside the published range.*not extrapolated'):
    scores_lib.band_at(pong, 201e6)
  with pytest.raises(OutOfRangeError):
    scores_lib.band_at(pong, 0.5e6)


def test_band_uses_only_seeds_that_reach_the_frames():
  seeds = [scores_lib.SeedCurve('atari_x', 'm', str(i), np.array([1e6, 2e6, 3e6][:n]),
                                np.array([1.0, 2.0, 3.0][:n]) * (i + 1))
           for i, n in enumerate((3, 2, 3))]
  band = scores_lib.band_at(seeds, 3e6)
  assert (band.seeds, band.total_seeds) == (2, 3)
  np.testing.assert_array_equal(band.values, [3.0, 9.0])


def test_percentile_and_judge():
  values = np.array([1.0, 2.0, 3.0, 4.0])
  assert scores_lib.percentile(values, 0.0) == 0.0
  assert scores_lib.percentile(values, 2.5) == 50.0
  assert scores_lib.percentile(values, 3.0) == 62.5  # 2 below, 1 tie counted half.
  assert scores_lib.percentile(values, 9.0) == 100.0
  band = scores_lib.Band(1.0, values, 1.0, 2.5, 4.0, 4, 4)
  assert [compare_lib.judge(v, band) for v in (0.99, 1.0, 4.0, 4.01)] == [
      'below', 'inside', 'inside', 'above']


# ----------------------------------------------------------------------------- runs

def test_bin_returns_by_hand():
  frames = np.array([0.0, 0.2e6, 0.9e6, 1.0e6, 1.1e6, 2.5e6])
  returns = np.array([7.0, 1.0, 2.0, 3.0, 10.0, 5.0])
  bins, partial = compare_lib.bin_returns(frames, returns, 1e6, last_frame=2.6e6)
  assert bins == [compare_lib.Bin(0.0, 7.0, 1), compare_lib.Bin(1e6, 2.0, 3),
                  compare_lib.Bin(2e6, 10.0, 1)]
  assert partial == compare_lib.Bin(3e6, 5.0, 1)  # The run stopped at 2.6M: incomplete.


def test_run_on_published_median_is_inside_everywhere(tmp_path, pong, baselines):
  ends = [k * 1e6 for k in range(1, 13)]
  median = lambda x: scores_lib.band_at(pong, x).median
  logdir = write_logdir(tmp_path / 'median', 'atari_pong', episodes_per_bin(median, ends),
                        tail='{"step": 12100000, "eval_ret')  # Killed mid-line.
  run = compare_lib.read_run(logdir)
  assert run.source == 'eval_return' and run.last_frame == 12e6 and len(run.returns) == 120
  assert any('truncated last line' in n for n in run.notes)
  report = compare_lib.compare_run(run, pong, 'atari_pong', 'test', baselines)
  assert [r.frames for r in report.rows] == ends
  assert [r.verdict for r in report.rows] == ['inside'] * 12
  five = report.rows[4]
  assert five.ret == pytest.approx(11.1) and five.median == pytest.approx(11.1)
  assert (five.episodes, five.seeds) == (10, 11)
  assert five.gamer == pytest.approx(scores_lib.normalized(11.1, 'atari_pong', baselines))
  assert not any('fewer than' in n for n in report.notes)


def test_run_below_the_minimum_is_below_everywhere(tmp_path, pong, baselines):
  ends = [k * 1e6 for k in range(1, 8)]
  low = lambda x: scores_lib.band_at(pong, x).low - 10
  logdir = write_logdir(tmp_path / 'low', 'atari_pong', episodes_per_bin(low, ends, per_bin=2))
  report = compare_lib.compare_run(compare_lib.read_run(logdir), pong, 'atari_pong', 'test',
                                   baselines)
  assert [r.verdict for r in report.rows] == ['below'] * 7
  assert all(r.percentile == 0.0 for r in report.rows)
  assert report.rows[4].ret == pytest.approx(7.0 - 10)
  few = [n for n in report.notes if 'fewer than 5 episodes' in n]
  assert few and '--eval_eps' in few[0] and 'about 10' in few[0]


def test_compare_cli_writes_png_csv_and_json(tmp_path, capsys, pong):
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import image
  ends = [k * 1e6 for k in range(1, 6)]
  median = lambda x: scores_lib.band_at(pong, x).median
  high = lambda x: scores_lib.band_at(pong, x).high + 1
  a = write_logdir(tmp_path / 'a', 'atari_pong', episodes_per_bin(median, ends))
  b = write_logdir(tmp_path / 'b', 'atari_pong', episodes_per_bin(high, ends))
  out = tmp_path / 'report'
  assert main(['compare', str(a), str(b), '--out', str(out), '--json']) == 0
  result = json.loads(capsys.readouterr().out)
  assert [r['verdicts']['inside'] for r in result['runs']] == [5, 0]
  assert result['runs'][1]['verdicts']['above'] == 5
  assert result['runs'][0]['scores'] == 'atari-dreamerv2.json (packaged copy)'
  assert result['aggregates']['games'] == ['atari_pong']
  assert result['aggregates']['runs'] == {'atari_pong': 2}
  pixels = image.imread(out / 'atari_pong.png')
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE((out / 'atari_pong.png').stat().st_mode) == 0o666 & ~umask
  assert pixels.shape == (compare_lib.PLOT_SIZE[1], compare_lib.PLOT_SIZE[0], 4)
  assert pixels[..., :3].std() > 0.05  # Not a blank canvas.
  rows = (out / 'atari_pong.csv').read_text().splitlines()
  assert rows[0].split(',') == list(compare_lib.CSV_COLUMNS) and len(rows) == 1 + 2 * 5
  fifth = rows[5].split(',')  # Run a at 5M: on the median, inside.
  assert fifth[3:5] == ['5000000', '10'] and fifth[6:10] == ['7.0', '11.1', '16.3', '11']
  assert fifth[12] == 'inside'
  # Text output: the table, the aggregates and the files written.
  assert main(['compare', str(a), '--out', str(out)]) == 0
  text = capsys.readouterr().out
  assert '5M   10      11.10       7.00      11.10      16.30    11' in text
  assert 'Gamer Median' in text and f'Wrote {out / "atari_pong.png"}' in text


def test_dmc_run_and_train_return_fallback(tmp_path):
  walker = scores_lib.load_curves(original('dmc-vision-dreamerv2.json'))['dmc_walker_walk']
  assert scores_lib.bin_width(walker) == 30000 and len(walker) == 5
  ends = [k * 30000.0 for k in range(1, 11)]
  median = lambda x: scores_lib.band_at(walker, x).median
  logdir = write_logdir(tmp_path / 'w', 'dmc_walker_walk',
                        episodes_per_bin(median, ends, per_bin=3, width=30000),
                        action_repeat=2, key='train_return')
  run = compare_lib.read_run(logdir)
  assert run.source == 'train_return' and any('using train_return' in n for n in run.notes)
  report = compare_lib.compare_run(run, walker, 'dmc_walker_walk', 'test', None)
  assert [r.verdict for r in report.rows] == ['inside'] * 10
  assert report.rows[0].gamer is None
  assert not any('action_repeat' in n for n in report.notes)


# ----------------------------------------------------------------------------- errors

def test_error_logdir_without_metrics(tmp_path, capsys):
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ParityError, match='No metrics.jsonl in'):
    compare_lib.read_run(tmp_path / 'empty')
  assert main(['compare', str(tmp_path / 'empty')]) == 1
  assert 'error: No metrics.jsonl' in capsys.readouterr().err
  with pytest.raises(ParityError, match='does not exist'):
    compare_lib.read_run(tmp_path / 'missing')
  logdir = write_logdir(tmp_path / 'noconfig', None, [(1e6, 1.0)])
  with pytest.raises(ParityError, match='No config.yaml.*--task'):
    compare_lib.read_run(logdir)
  assert compare_lib.read_run(logdir, task='atari_pong').task == 'atari_pong'
  only_losses = tmp_path / 'losses'
  only_losses.mkdir()
  (only_losses / 'metrics.jsonl').write_text('{"step": 10, "image_loss": 1.0}\n')
  with pytest.raises(ParityError, match='no "eval_return" or "train_return"'):
    compare_lib.read_run(only_losses, task='atari_pong')


def test_error_task_absent(tmp_path, capsys):
  logdir = write_logdir(tmp_path / 'x', 'atari_pongg', [(1e6, 1.0)])
  assert main(['compare', str(logdir)]) == 1
  err = capsys.readouterr().err
  assert "Task 'atari_pongg' is not in" in err and "'atari_pong'" in err
  assert main(['compare', str(logdir), '--scores', 'dmc-vision-dreamerv2.json',
               '--task', 'atari_pong']) == 1
  assert "Task 'atari_pong' is not in dmc-vision-dreamerv2.json" in capsys.readouterr().err


def test_task_spellings_map_to_score_file_names():
  assert scores_lib.canonical_task('atari_JamesBond') == 'atari_james_bond'
  assert scores_lib.canonical_task('dmc-walker-walk') == 'dmc_walker_walk'
  assert scores_lib.find_task('atari_Pong', ['atari_pong'], 'f') == 'atari_pong'


@pytest.mark.parametrize('content, match', [
    (b'{"task": ', 'not valid'),
    (b'{"atari_pong": {"random": 1}}', 'expected a non-empty JSON list'),
    (b'[{"task": "atari_pong", "method": "m", "seed": "0", "xs": [1, 2]}]', "lacks \\['ys'\\]"),
    (b'[{"task": "atari_pong", "method": "m", "seed": "0", "xs": [1, 2], "ys": [1]}]',
     'equal length'),
    (b'[{"task": "atari_pong", "method": "m", "seed": "0", "xs": [2, 1], "ys": [1, 1]}]',
     'strictly increasing'),
    (b'[{"task": "atari_pong", "method": "m", "seed": "0", "xs": [1, 2], "ys": [1, "a"]}]',
     'non-numeric'),
    (gzip.compress(b'[1, 2'), 'not valid'),
])
def test_error_malformed_score_file(tmp_path, capsys, content, match):
  path = tmp_path / 'bad.json'
  path.write_bytes(content)
  with pytest.raises(ParityError, match='Malformed score file') as info:
    scores_lib.load_curves(path)
  assert info.match(match)
  assert main(['aggregate', '--scores', str(path)]) == 1
  assert 'error: Malformed score file' in capsys.readouterr().err


def test_error_malformed_baselines_and_unknown_names(tmp_path):
  path = tmp_path / 'b.json'
  path.write_text('{"atari_pong": {"random": "low"}}')
  with pytest.raises(ParityError, match="Malformed baselines file.*'atari_pong'"):
    scores_lib.load_baselines(path)
  with pytest.raises(ParityError, match='not found.*packaged names'):
    scores_lib.resolve('no-such-file.json', '')
  with pytest.raises(ParityError, match="Agent 'foo' is not a column"):
    scores_lib.agent_scores(scores_lib.load_baselines(), 'foo', ['atari_pong'])
  with pytest.raises(ParityError, match="Method 'x' is not in.*nosched"):
    scores_lib.load_curves(scores_lib.resolve('atari-dreamerv2.json', ''), method='x')


def test_error_frames_beyond_the_published_range(tmp_path, pong, capsys):
  far = write_logdir(tmp_path / 'far', 'atari_pong',
                     [(201e6, 20.0), (202e6, 20.0), (203e6, 21.0)])
  with pytest.raises(OutOfRangeError, match='none of its 3 point.*nothing is extrapolated'):
    compare_lib.compare_run(compare_lib.read_run(far), pong, 'atari_pong', 'test')
  assert main(['compare', str(far)]) == 1
  assert 'lies within the published range' in capsys.readouterr().err
  # Partly beyond: compared up to 200M, the rest said so and left alone.
  part = write_logdir(tmp_path / 'part', 'atari_pong', [(199.5e6, 20.0), (200.5e6, 20.0), (201e6, 19.0)])
  report = compare_lib.compare_run(compare_lib.read_run(part), pong, 'atari_pong', 'test')
  assert [(r.frames, r.verdict) for r in report.rows] == [(200e6, 'inside'), (201e6, 'beyond')]
  assert report.rows[1].median is None and report.rows[0].seeds == 8  # 3 seeds end at 199M.
  assert any('beyond the published range' in n and 'not extrapolated' in n
             for n in report.notes)
  assert any('seeds end early' in n for n in report.notes)


# ----------------------------------------------------------------------------- command line

def test_subcommands_plug_in():
  parser = build_parser()
  assert parser.parse_args(['aggregate']).run.__name__ == 'run_aggregate'
  assert parser.parse_args(['compare', 'x']).run.__name__ == 'run_compare'

  def add_extra(subparsers):
    p = subparsers.add_parser('extra')
    p.add_argument('fixture_dir')
    p.set_defaults(run=lambda args: 7)
  SUBCOMMANDS.append(add_extra)
  try:
    assert main(['extra', 'somewhere']) == 7
  finally:
    SUBCOMMANDS.remove(add_extra)


def test_command_line_starts_without_tensorflow():
  code = ('import sys; from dreamerv2_tf.parity.__main__ import main; '
          'rc = main(["aggregate"]); '
          'assert "tensorflow" not in sys.modules, "parity imported TensorFlow"; '
          'assert "matplotlib" not in sys.modules; sys.exit(rc)')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert 'Gamer Median             2.64' in result.stdout
  result = subprocess.run([sys.executable, '-m', 'dreamerv2_tf.parity', 'aggregate', '--agent',
                           'iqn_sticky_2e8'], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0 and 'Gamer Median             1.29' in result.stdout
