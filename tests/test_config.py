"""Command-line config handling of train.py (issues 5, 11): overlays, typed overrides, the suite's
overlay by default, resuming from a logdir, --help, one-line errors with exit status 2."""

from __future__ import annotations

import pathlib
import re

import pytest

from conftest import run_tool  # also puts the repo root on sys.path
from dreamerv2_tf import train_cli as train
from dreamerv2_tf.config import ConfigError, load_config, parse_overrides, read_blocks


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

def test_rssm_latent_keys_default_to_the_authors_and_crafter_norms_the_rssm():
  from dreamerv2_tf.validate import validate
  rssm = load_config(['atari']).rssm
  assert (rssm.discrete, rssm.std_act, rssm.min_std, rssm.norm) == (32, 'sigmoid2', 0.1, 'none')
  assert load_config(['crafter']).rssm.norm == 'layer'  # the authors' `.*\.norm: layer`
  validate(load_config(['atari', 'debug'], {'rssm.discrete': 0}))  # Gaussian latents


@pytest.mark.parametrize('override, expected', [
    ({'task': 'dmc_walker_wlk'}, ["'dmc_walker_wlk'", 'dmc_walker_walk']),
    ({'dataset.batch': '0'}, ["'dataset.batch'", '0', '>= 1']),
    ({'dataset.length': '-3'}, ["'dataset.length'", '-3', '>= 1']),
    ({'envs': '0'}, ["'envs'", '>= 1']),
    ({'actor_ent': 'foo'}, ["'actor_ent'", "'foo'", 'linear(initial,final,duration)']),
    ({'actor.dist': 'gauss'}, ["'actor.dist'", "'gauss'", 'auto, onehot, trunc_normal']),
    ({'actor_grad': 'dyn'}, ["'actor_grad'", "'dyn'", 'auto, reinforce, dynamics, both']),
    ({'clip_rewards': 'clip'}, ["'clip_rewards'", "'clip'", 'tanh, identity']),
    ({'render_size': '[64]'}, ["'render_size'", '[64]', 'two positive integers']),
    ({'dataset.length': '1'}, ["'dataset.length'", 'at least 2']),
    ({'encoder.cnn_kernels': '[30,30]'}, ["'encoder.cnn_kernels'", '64 -> 18', 'kernel 30',
                                          'cannot be built']),
    ({'encoder.cnn_kernels': '[4,4,4,4,4]'}, ['64 -> 31 -> 14 -> 6 -> 2', 'layer 5']),
    ({'decoder.cnn_kernels': '5,5,6'}, ["'decoder.cnn_kernels'", '30x30', '64x64']),
    ({'render_size': '32,32'}, ["'encoder.cnn_kernels'", '32 -> 15 -> 6 -> 2']),
    ({'seed': '-1'}, ["'seed'", '-1', '>= 0']),
    ({'time_limit': '-1'}, ["'time_limit'", '-1', '0 disables']),
    ({'precision': '8'}, ["'precision'", '8', '16, 32']),
    ({'discount': '1.5'}, ["'discount'", '1.5', '(0.0, 1.0]']),
    ({'model_opt.lr': 'nan'}, ["'model_opt.lr'", 'nan', 'finite']),
    ({'grad_heads': 'decoder,rewrd'}, ["'grad_heads'", 'rewrd', 'decoder, reward, discount']),
    ({'rssm.discrete': '-1'}, ["'rssm.discrete'", '-1', '>= 0', '0 for Gaussian latents']),
    ({'rssm.std_act': 'tanh'}, ["'rssm.std_act'", "'tanh'", 'softplus, sigmoid, sigmoid2']),
    ({'rssm.min_std': '-0.1'}, ["'rssm.min_std'", '-0.1', '[0.0, inf)']),
    ({'rssm.norm': 'batch'}, ["'rssm.norm'", "'batch'", 'none, layer']),
    # time_limit 200 (debug): episodes hold at most 200 agent steps, 201 transitions.
    ({'replay.minlen': '201'}, ["'replay.minlen'", '201 agent steps', 'at most 200 agent steps',
                                'prefill would never']),
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
      'prefill': 0, 'pretrain': 0, 'log_every': 0, 'seed': 0, 'replay.minlen': 200,
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


# ----------------------------------------------------------------------------- issue 11

@pytest.mark.parametrize('value, expected', [
    ('3', ["'encoder.cnn_kernels'", 'list of 4 numbers', "'3'", '--encoder.cnn_kernels=3,3,3,3']),
    ('[3]', None),
])
def test_a_single_number_for_a_list_of_numbers_is_refused(value, expected):
  if expected is None:
    assert load_config([], {'encoder.cnn_kernels': value})['encoder.cnn_kernels'] == [3]
    return
  with pytest.raises(ConfigError) as error:
    load_config([], {'encoder.cnn_kernels': value})
  for text in expected:
    assert text in str(error.value)
  assert load_config([], {'grad_heads': 'decoder'}).grad_heads == ['decoder']  # strings: fine


def test_a_value_for_a_group_of_keys_is_refused():
  with pytest.raises(ConfigError, match=r"'rssm' is a group of keys \(rssm.hidden, rssm.deter"):
    load_config([], {'rssm': '5'})


@pytest.mark.parametrize('task, overlay, action_repeat', [
    ('atari_pong', 'atari', 4), ('dmc_walker_walk', 'dmc_vision', 2),
    ('crafter_reward', 'crafter', 1)])
def test_the_task_suite_picks_its_overlay_unless_configs_are_given(task, overlay, action_repeat,
                                                                   tmp_path):
  notes = []
  config = train.build_config([], {}, task, str(tmp_path / 'run'), notes)
  assert config == load_config([overlay], {'task': task, 'logdir': str(tmp_path / 'run')})
  assert config.action_repeat == action_repeat
  assert notes == [f"Task {task}: using the '{overlay}' overlay of configs.yaml (give "
                   '--configs to choose others).']
  notes = []
  explicit = train.build_config(['debug'], {}, task, str(tmp_path / 'run'), notes)
  assert explicit.action_repeat == 1 and explicit.rssm.deter == 32 and not notes


def test_a_logdir_alone_resumes_with_its_config_and_prints_changes(tmp_path):
  logdir = tmp_path / 'run'
  saved = load_config(['atari', 'debug'], {'rssm.deter': 16, 'logdir': str(logdir)})
  saved.save(logdir / 'config.yaml')
  notes = []
  config = train.build_config([], {}, None, str(logdir), notes)
  assert config == saved  # no dmc_vision overlay although defaults name a DMC task
  assert notes == [f'Resuming {logdir} with its config.yaml (no key changed).']
  notes = []
  config = train.build_config([], {'steps': '2e3', 'rssm.deter': '16'}, None, str(logdir), notes)
  assert config.steps == 2000 and config.rssm.deter == 16 and config.action_repeat == 4
  assert notes == [f'Resuming {logdir} with its config.yaml; changed by the command line: ',
                   '  steps: 1200 -> 2000']
  # The same command as the first run resumes unchanged.
  notes = []
  again = train.build_config(['atari', 'debug'], {'rssm.deter': '16'}, None, str(logdir), notes)
  assert again == saved and notes[-1].endswith('(no key changed).')


def test_a_logdir_with_an_unparsable_config_is_refused(tmp_path):
  """A corrupt <logdir>/config.yaml stops train.py in one line (exit 2) instead of resuming the
  run with the defaults (another task: dmc_walker_walk), and leaves the logdir as it was."""
  logdir = tmp_path / 'run'
  logdir.mkdir()
  (logdir / 'config.yaml').write_text('task: [atari_pong\n')
  with pytest.raises(ConfigError, match=rf'cannot parse {logdir / "config.yaml"}: .*cannot resume'):
    train.build_config([], {}, None, str(logdir), [])
  result = run_tool(['train.py', '--logdir', str(logdir)], timeout=120)
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('train.py: error: cannot parse'), result.stderr
  assert sorted(p.name for p in logdir.iterdir()) == ['config.yaml']


def test_help_lists_usage_overlays_and_main_keys():
  for flag in ('-h', '--help'):
    result = run_tool(['train.py', flag], timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.splitlines()[0] == 'train.py: trains DreamerV2 (Hafner et al., ICLR 2021).'
    assert 'Usage:' in out and '--configs' in out and '--logdir DIR' in out
    for name in (k for k in read_blocks() if k != 'defaults'):
      assert re.search(rf'^  {name} +\S', out, re.M), name  # every overlay, with a description
    assert re.search(r'^  atari +Atari 2600 games from 64x64 grayscale frames', out, re.M)
    assert re.search(r'^  --replay.capacity=2000000 +agent steps held in memory', out, re.M)
    assert re.search(r'^  --steps=100000000 +agent steps, prefill included', out, re.M)


def _one_line_exit_2(result) -> str:
  assert result.returncode == 2, (result.returncode, result.stderr)
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('train.py: error: '), result.stderr
  assert 'Traceback' not in result.stderr + result.stdout
  return lines[0]


@pytest.mark.parametrize('args, expected', [
    (['--rssm=5'], ["'rssm' is a group of keys", 'rssm.deter']),
    (['--dataset.length=1'], ["'dataset.length' is 1", 'at least 2']),
    (['--encoder.cnn_kernels=3'], ["'encoder.cnn_kernels'", 'single value']),
    (['--encoder.cnn_kernels=[9,9,9,9]'], ['64 -> 28 -> 10 -> 1', 'cannot be built']),
    (['--decoder.cnn_kernels=4,4,4,4'], ['46x46', '64x64']),
    # A full size beyond any machine's memory: bytes per step x capacity vs memory, one line.
    (['--replay.capacity=1e10', '--steps=1e10'],
     ['replay.capacity 10,000,000,000 agent steps x 4,175 bytes per step', 'GB at full size',
      'GB of memory', 'Use --replay.capacity=']),
])
def test_issue_11_errors_are_one_line_with_exit_status_2(args, expected, tmp_path):
  line = _fails_fast(args, tmp_path, *expected)
  assert line.startswith('train.py: error: ')


def test_a_logdir_that_is_a_file_is_refused(tmp_path):
  target = tmp_path / 'run'
  target.write_text('not a folder')
  for logdir, expected in ((target, 'is a file, not a folder'),
                           (target / 'sub', f'cannot be created: {target} is a file')):
    result = run_tool(['train.py', '--configs', 'atari', 'debug', '--logdir', str(logdir)],
                      timeout=120)
    assert expected in _one_line_exit_2(result)
  assert target.read_text() == 'not a folder' and sorted(tmp_path.iterdir()) == [target]


def test_a_read_only_logdir_is_refused():
  """As root (who may write anywhere) the command runs as the unprivileged user 65534."""
  import os
  import shutil
  import subprocess
  import sys
  import tempfile
  from conftest import tool_env
  parent = pathlib.Path(tempfile.mkdtemp(prefix='dreamerv2_tf-readonly-'))
  try:
    parent.chmod(0o755)
    logdir = parent / 'run'
    logdir.mkdir()
    logdir.chmod(0o555)
    command = [sys.executable, 'train.py', '--configs', 'atari', 'debug', '--logdir', str(logdir)]
    if os.geteuid() == 0:
      if not shutil.which('setpriv'):
        pytest.skip('running as root without setpriv: root may write into a read-only folder')
      command = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', *command]
    elif os.access(logdir, os.W_OK):
      pytest.skip('this user can write into a mode-0555 folder')
    result = subprocess.run(command, cwd=pathlib.Path(__file__).resolve().parent.parent, env=tool_env(), capture_output=True,
                            text=True, timeout=120)
    line = _one_line_exit_2(result)
    assert f'--logdir {logdir} is not writable' in line and 'Permission denied' in line, line
    assert not list(logdir.iterdir())
  finally:
    shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.parametrize('args, prog', [
    (['-m', 'dreamerv2_tf.evaluate', '--logdir', 'x', '--episodes', 'abc'],
     'python -m dreamerv2_tf.evaluate'),
    (['-m', 'dreamerv2_tf.export'], 'python -m dreamerv2_tf.export'),
    (['-m', 'dreamerv2_tf.serving', 'play', '--bogus'], 'python -m dreamerv2_tf.serving play'),
], ids=['evaluate', 'export', 'serving'])
def test_argument_errors_of_the_tools_are_one_line_with_exit_status_2(args, prog):
  """argparse's own errors (a wrong type, a missing or unknown option) come as the project's one
  line `<prog>: error: ...`, not argparse's usage block."""
  result = run_tool(args, timeout=120)
  assert result.returncode == 2, result.stderr
  errors = [l for l in result.stderr.splitlines() if ': error:' in l]
  assert len(errors) == 1 and errors[0].startswith(f'{prog}: error: '), result.stderr
  assert 'usage:' not in result.stderr and 'Traceback' not in result.stderr
