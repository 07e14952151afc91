"""scripts/gpu_parity.sh (issue 17): its arguments, and a `--dry-run` on the CPU that trains
`--configs atari debug` on Boxing, writes the parity report, and resumes on a second call.

The dry run reuses this interpreter's environment (`--no-install --venv sys.prefix`); it takes
one debug run (about 1-3 minutes on 2 cores) plus a resumed one.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from conftest import REPO, tool_env

SCRIPT = REPO / 'scripts' / 'gpu_parity.sh'


def run_script(*args, timeout=60) -> subprocess.CompletedProcess:
  return subprocess.run(['bash', str(SCRIPT), *args], cwd=REPO, env=tool_env(),
                        capture_output=True, text=True, timeout=timeout)


def test_help_lists_the_options():
  result = run_script('--help')
  assert result.returncode == 0
  for option in ('--game', '--budget-min', '--logdir', '--frames', '--venv', '--no-install',
                 '--wheelhouse', '--dry-run', 'precision: 16'):
    assert option in result.stdout, option


@pytest.mark.parametrize('args, message', [
    (['--game', 'pong'], "--game must be boxing or freeway (early learners in the published "
     "curves), got 'pong'."),
    (['--budget-min', '0'], "--budget-min must be a positive number of minutes, got '0'."),
    (['--budget-min', 'ten'], "--budget-min must be a positive number of minutes, got 'ten'."),
    (['--frames', '1e6'], "--frames must be a whole number of frames >= 4, got '1e6'."),
    (['--budget-min'], '--budget-min needs a value'),
    (['--gpu'], "unknown argument '--gpu'"),
])
def test_bad_arguments_are_one_line_and_status_2(tmp_path, args, message):
  result = run_script(*args, '--logdir', str(tmp_path / 'run'))
  assert result.returncode == 2, result.stderr
  line, = result.stderr.strip().splitlines()
  assert line.startswith(f'gpu_parity.sh: error: {message}'), line
  assert not (tmp_path / 'run').exists()


def test_no_install_without_a_venv_says_so(tmp_path):
  result = run_script('--no-install', '--venv', str(tmp_path / 'none'), '--dry-run')
  assert result.returncode == 2
  assert f'no Python at {tmp_path / "none"}/bin/python' in result.stderr


@pytest.fixture(scope='module')
def dry_run(tmp_path_factory):
  logdir = tmp_path_factory.mktemp('gpu_parity') / 'run'
  result = run_script('--dry-run', '--no-install', '--venv', sys.prefix, '--logdir',
                      str(logdir), timeout=900)
  return logdir, result


@pytest.mark.slow
def test_dry_run_trains_and_writes_a_parity_report(dry_run):
  logdir, result = dry_run
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert 'precision: float32 (precision: 16 needs a GPU)' in result.stdout
  report = json.loads((logdir / 'parity' / 'report.json').read_text())
  run, = report['runs']
  assert run['task'] == 'atari_boxing' and run['source'] == 'eval_return'
  assert run['bin_width'] == 4000.0  # the published 1M-frame bins scaled 250x down
  row, = run['rows']
  assert row['frames'] == 4000.0 and row['episodes'] == 2 and row['seeds'] == 11
  # The published Boxing seeds at 1M frames (median 38, the number), scaled.
  assert row['median'] == pytest.approx(38.0)
  assert row['verdict'] in ('inside', 'above', 'below')
  assert (logdir / 'parity' / 'atari_boxing.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert 'published median 38.00' in (logdir / 'parity' / 'report.txt').read_text()
  summary = json.loads((logdir / 'parity' / 'summary.json').read_text())
  assert summary['dry_run'] is True and summary['agent_steps'] == 1200
  assert summary['updates'] == 10 and summary['updates_per_sec'] > 0
  assert summary['checkpoint'].endswith('ckpt-1200')


@pytest.mark.slow
def test_dry_run_again_resumes_the_run(dry_run):
  logdir, first = dry_run
  assert first.returncode == 0
  result = run_script('--dry-run', '--no-install', '--venv', sys.prefix, '--logdir',
                      str(logdir), '--frames', '5600', timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert 'Resumed from' in result.stdout and 'ckpt-1200' in result.stdout
  summary = json.loads((logdir / 'parity' / 'summary.json').read_text())
  assert summary['agent_steps'] == 1400 and summary['checkpoint'].endswith('ckpt-1400')
  assert summary['updates'] > 10
