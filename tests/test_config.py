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


# ----------------------------------------------------------------------------- validate

@pytest.mark.parametrize('override, expected', [
    ({'task': 'dmc_walker_wlk'}, ["'dmc_walker_wlk'", 'dmc_walker_walk']),
    ({'dataset.batch': '0'}, ["'dataset.batch'", '0', '>= 1']),
    ({'dataset.length': '-3'}, ["'dataset.length'", '-3', '>= 1']),
    ({'envs': '0'}, ["'envs'", '>= 1']),
    ({'actor_ent': 'foo'}, ["'actor_ent'", "'foo'", 'linear(initial,final,duration)']),
    ({'actor.dist': 'gauss'}, ["'actor.dist'", "'gauss'", 'auto, onehot, trunc_normal']),
    ({'actor_grad': 'dyn'}, ["'actor_grad'", "'dyn'", 'auto, reinforce, dynamics, both']),
    ({'clip_rewards': 'clip'}, ["'clip_rewards'", "'clip'", 'tanh, identity']),
    ({'render_size': '64'}, ["'render_size'", '[64]', 'two positive integers']),
    ({'seed': '-1'}, ["'seed'", '-1', '>= 0']),
    ({'time_limit': '-1'}, ["'time_limit'", '-1', '0 disables']),
    ({'precision': '8'}, ["'precision'", '8', '16, 32']),
    ({'discount': '1.5'}, ["'discount'", '1.5', '(0.0, 1.0]']),
    ({'model_opt.lr': 'nan'}, ["'model_opt.lr'", 'nan', 'finite']),
    ({'grad_heads': 'decoder,rewrd'}, ["'grad_heads'", 'rewrd', 'decoder, reward, discount']),
    # time_limit 200 (debug): episodes hold at most 201 transitions.
    ({'replay.minlen': '500'}, ["'replay.minlen'", '500', 'at most 201', 'prefill would never']),
    ({'dataset.length': '300'}, ["'dataset.length'", '300', 'at most 201']),
    ({'replay.capacity': '5'}, ["'replay.capacity'", '5', 'replay.minlen 10']),
])
def test_validate_names_key_value_and_what_is_allowed(override, expected):
  from dreamerv2_tf.validate import validate
  config = load_config(['atari', 'debug'], override)
  with pytest.raises(ConfigError) as error:
    validate(config)
  for text in expected:
    assert text in str(error.value), str(error.value)
  assert '\n' not in str(error.value)


def test_validate_accepts_the_overlays_and_edge_values():
  from dreamerv2_tf.validate import validate
  for names in (['atari'], ['dmc_vision'], ['atari', 'debug'], ['dmc_vision', 'debug']):
    validate(load_config(names))
  # 0 where it means none/never; minlen and length exactly one episode; no time limit.
  validate(load_config(['atari', 'debug'], {
      'prefill': 0, 'pretrain': 0, 'log_every': 0, 'seed': 0, 'replay.minlen': 201,
      'dataset.length': 201, 'actor_ent': 'linear(3e-3,1e-3,1e6)', 'discount': 1.0}))
  validate(load_config(['atari', 'debug'], {'time_limit': 0, 'replay.minlen': 5000,
                                            'dataset.length': 5000}))


@pytest.mark.parametrize('value', ['inf', '-inf', 'nan', '1e400'])
def test_int_keys_reject_non_finite_values(value):
  with pytest.raises(ConfigError, match=rf"'steps' expects a finite whole number .* got '{value}'"):
    load_config([], {'steps': value})


def test_dmc_task_list_matches_dm_control_suite():
  """dmc.TASKS (checked without importing dm_control) is the installed suite's task list."""
  import json
  import subprocess
  import sys
  from conftest import tool_env
  from dreamerv2_tf.envs import dmc
  env = dict(tool_env(), MUJOCO_GL='egl')
  result = subprocess.run(
      [sys.executable, '-c', 'import json; from dm_control import suite; '
       'print(json.dumps(sorted(suite.ALL_TASKS)))'],
      capture_output=True, text=True, env=env, timeout=120, check=True)
  suite_tasks = sorted(tuple(t) for t in json.loads(result.stdout.splitlines()[-1]))
  assert sorted((d, t) for d, ts in dmc.TASKS.items() for t in ts) == suite_tasks
  assert set(dmc.DOMAINS) == set(dmc.TASKS)


def test_bad_values_fail_before_the_logdir_exists(tmp_path):
  _fails_fast(['--task=dmc_walker_wlk'], tmp_path, "'dmc_walker_wlk'", 'dmc_walker_walk')
  _fails_fast(['--steps=inf'], tmp_path, "'steps'", "'inf'")
  _fails_fast(['--dataset.batch=0'], tmp_path, "'dataset.batch'", '>= 1')
  _fails_fast(['--replay.minlen=500'], tmp_path, "'replay.minlen'", 'time_limit 200')


def test_unparsable_yaml_is_a_one_line_config_error(tmp_path):
  path = tmp_path / 'config.yaml'
  path.write_text('task: atari_pong\nrssm: {deter: 32\n')
  with pytest.raises(ConfigError, match=rf'cannot parse {path}: .*\(line 3, column 1\)$'):
    read_blocks(path)
  path.write_text('- a list\n')
  with pytest.raises(ConfigError, match='expected a mapping'):
    read_blocks(path)


def test_parity_compare_corrupt_config_is_one_line(tmp_path, capsys):
  from dreamerv2_tf.parity.__main__ import main as parity_main
  (tmp_path / 'config.yaml').write_text('task: [atari_pong\n')
  (tmp_path / 'metrics.jsonl').write_text('{"step": 4, "train_return": 1.0}\n')
  assert parity_main(['compare', str(tmp_path)]) == 1
  err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert len(err) == 1 and f'cannot parse {tmp_path / "config.yaml"}' in err[0], err
