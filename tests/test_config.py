"""Command-line config handling of train.py (issue 5): overlays, typed overrides, errors."""

from __future__ import annotations

import pathlib

import pytest

from conftest import run_tool  # also puts the repo root on sys.path, for `import train`
from dreamerv2_tf.config import ConfigError, load_config, parse_overrides, read_blocks
import train  # pylint: disable=wrong-import-order


def test_parse_overrides_forms():
  args = ['--rssm.deter=200', '--steps', '1e6', '--jit', '--actor_ent=linear(3e-3,1e-3,1e6)',
          '--time_limit', '-1']
  assert parse_overrides(args) == {
      'rssm.deter': '200', 'steps': '1e6', 'jit': 'true',
      'actor_ent': 'linear(3e-3,1e-3,1e6)', 'time_limit': '-1'}


@pytest.mark.parametrize('bad', [['atari'], ['-x=1'], ['--'], ['--=3']])
def test_parse_overrides_rejects_non_overrides(bad):
  with pytest.raises(ConfigError, match='Unexpected argument'):
    parse_overrides(bad)


def test_join_list_flag_space_and_comma_forms():
  argv = ['train.py', '--configs', 'atari', 'debug', '--steps=5', '--task', 'atari_pong']
  assert train.join_list_flag(argv) == [
      'train.py', '--configs=atari,debug', '--steps=5', '--task', 'atari_pong']
  assert train.join_list_flag(['t', '--configs=atari,debug']) == ['t', '--configs=atari,debug']


def test_overlays_apply_in_order_and_overrides_are_typed():
  blocks = read_blocks()
  config = train.build_config(['atari', 'debug'], {'rssm.deter': '200', 'jit': 'false',
                                                   'steps': '1e6'}, None, None)
  assert config.steps == 1_000_000 and isinstance(config.steps, int)  # '1e6' on an int key
  assert config.rssm.deter == 200 and isinstance(config.rssm.deter, int)
  assert config.jit is False
  assert config.prefill == blocks['debug']['prefill']           # debug after atari
  assert config.action_repeat == blocks['atari']['action_repeat']
  assert config.rssm.hidden == blocks['debug']['rssm']['hidden']
  reverse = train.build_config(['debug', 'atari'], {}, None, None)
  assert reverse.prefill == blocks['atari']['prefill']          # atari after debug wins


def test_task_and_logdir_flags():
  config = train.build_config(['atari'], {}, 'atari_breakout', None)
  assert config.task == 'atari_breakout'
  assert config.logdir == str(pathlib.Path('logdir') / 'atari_breakout')
  config = train.build_config(['atari'], {}, None, '/tmp/some/run')
  assert config.logdir == '/tmp/some/run'
  config = train.build_config(['atari'], {'logdir': '/tmp/from/config'}, None, None)
  assert config.logdir == '/tmp/from/config'


def test_every_overlay_loads():
  names = [k for k in read_blocks() if k != 'defaults']
  assert {'atari', 'dmc_vision', 'debug'} <= set(names)
  for name in names:
    load_config([name])


def test_check_task_errors_list_suites_and_games():
  with pytest.raises(ValueError, match='atari.*dmc'):
    train.check_task(load_config([], {'task': 'foo_bar'}))
  with pytest.raises(ValueError, match='atari_pong'):
    train.check_task(load_config([], {'task': 'atari_pongg'}))
  train.check_task(load_config([], {'task': 'atari_pong'}))
  train.check_task(load_config([], {'task': 'dmc_walker_walk'}))


def _fails_fast(args, tmp_path, *expected):
  """train.py exits 2 with one stderr line containing `expected`, no traceback, no logdir."""
  logdir = tmp_path / 'run'
  result = run_tool(['train.py', '--configs', 'atari', 'debug', '--logdir', str(logdir), *args],
                    timeout=120)
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, result.stderr
  assert 'Traceback' not in result.stderr + result.stdout
  for text in expected:
    assert text in lines[0], lines[0]
  assert not logdir.exists()
  return lines[0]


def test_unknown_key_fails_with_closest_keys(tmp_path):
  _fails_fast(['--rssm.detr=3'], tmp_path, "'rssm.detr'", 'rssm.deter')


def test_unknown_top_level_key_fails(tmp_path):
  _fails_fast(['--prefil', '100'], tmp_path, "'prefil'", 'prefill')


def test_wrong_type_names_key_value_and_type(tmp_path):
  _fails_fast(['--rssm.deter=abc'], tmp_path, "'rssm.deter'", "'abc'", 'int')
  _fails_fast(['--replay.prioritize_ends=maybe'], tmp_path, 'replay.prioritize_ends', 'bool')


def test_unknown_task_lists_suites(tmp_path):
  _fails_fast(['--task', 'pong'], tmp_path, "'pong'", 'atari', 'dmc')


def test_unknown_game_names_close_ones(tmp_path):
  _fails_fast(['--task=atari_pongg'], tmp_path, 'atari_pong')


def test_unknown_overlay_lists_valid_ones(tmp_path):
  line = _fails_fast(['--configs', 'atarii'], tmp_path, "'atarii'")
  assert 'debug' in line and 'dmc_vision' in line


def test_stray_argument_fails(tmp_path):
  _fails_fast(['--steps=10', 'oops'], tmp_path, "'oops'")
