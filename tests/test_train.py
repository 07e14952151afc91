"""The training driver, loop, logs, checkpoints and evaluation (issue 5; docs/reference.md §6).

Fast tests use small stand-ins (a counting vector env, a tiny tf.Module); the `slow` ones run
`train.py --configs atari debug` on real Pong with the real agent, in subprocesses.
"""

from __future__ import annotations

import json
import math
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, run_tool, tool_env
from dreamerv2_tf import logger as logger_lib
from dreamerv2_tf.config import load_config, read_blocks
from dreamerv2_tf.driver import Driver, RandomPolicy
from dreamerv2_tf.loop import Every, Mean, format_param_table, stored_agent_steps


# ----------------------------------------------------------------------------- stand-ins

class CountingVecEnv:
  """N workers; episode k of a worker lasts `length` agent steps; reward = 1 per step, and the
  transition's `action` is the action received. Auto-resets like envs.VecEnv."""

  def __init__(self, num=2, length=3, size=4):
    self.num, self.length, self.size = num, length, size
    self.t = np.zeros(num, int)
    self.last = np.zeros(num, bool)
    self.resets = 0
    self.received = []

  def _tran(self, i, first, action):
    return {'image': np.full((2, 2, 1), self.t[i], np.uint8), 'reward': np.float32(0 if first else 1),
            'is_first': first, 'is_last': (not first) and self.t[i] == self.length,
            'is_terminal': False, 'action': action, 'log_x': np.float32(2)}

  def _stack(self, trans):
    return {k: np.stack([np.asarray(t[k]) for t in trans]) for k in trans[0]}

  def reset(self):
    self.resets += 1
    self.t[:] = 0
    self.last[:] = False
    return self._stack([self._tran(i, True, np.zeros(self.size, np.float32))
                        for i in range(self.num)])

  def step(self, actions):
    self.received.append(np.array(actions))
    trans = []
    for i in range(self.num):
      if self.last[i]:
        self.t[i] = 0
        trans.append(self._tran(i, True, np.zeros(self.size, np.float32)))
      else:
        self.t[i] += 1
        trans.append(self._tran(i, False, actions[i]))
      self.last[i] = trans[-1]['is_last']
    return self._stack(trans)

  def close(self):
    pass


class Space:
  def __init__(self, discrete, size):
    self.discrete, self.size = discrete, size


# ----------------------------------------------------------------------------- driver

def test_driver_counts_agent_steps_not_reset_transitions():
  env = CountingVecEnv(num=2, length=3)
  seen, episodes = [], []
  driver = Driver(env, [lambda t, w: seen.append((w, int(t['image'][0, 0, 0]), bool(t['is_first'])))],
                  [lambda s, w: episodes.append((w, s))])
  policy = RandomPolicy(Space(True, 4), np.random.default_rng(0))
  steps, eps = driver(policy, steps=6)
  # reset (2 transitions, not steps) + 3 env steps x 2 workers = 6 agent steps, 2 episodes.
  assert (steps, eps) == (6, 2)
  assert seen[:2] == [(0, 0, True), (1, 0, True)]
  assert [s for s in seen if not s[2]] == [(0, 1, False), (1, 1, False), (0, 2, False),
                                           (1, 2, False), (0, 3, False), (1, 3, False)]
  assert [w for w, _ in episodes] == [0, 1]
  assert episodes[0][1] == {'return': 3.0, 'length': 3, 'log_x': 8.0}  # 4 transitions x 2
  # The next call continues (auto-reset transitions first, not counted), no env.reset().
  steps, eps = driver(policy, steps=2)
  assert (steps, eps) == (2, 0) and env.resets == 1
  assert seen[-4:-2] == [(0, 0, True), (1, 0, True)]


def test_driver_episodes_stop_state_and_obs():
  env = CountingVecEnv(num=1, length=2)
  states, keys = [], []

  def policy(obs, state):
    keys.append(sorted(obs))
    states.append(state)
    return np.eye(4, dtype=np.float32)[[1]], (0 if state is None else state + 1)

  driver = Driver(env)
  assert driver(policy, episodes=2) == (4, 2)
  assert 'log_x' not in keys[0] and 'image' in keys[0] and 'is_first' in keys[0]
  assert states == [None, 0, 1, 2, 3]  # the policy state carries across episodes
  calls = []
  assert driver(policy, steps=100, stop=lambda: calls.append(1) or len(calls) > 3) == (2, 1)
  driver.reset()
  driver(policy, steps=1)
  assert env.resets == 2 and states[-1] is None  # reset() starts over with a fresh state
  with pytest.raises(ValueError, match='steps'):
    driver(policy)


def test_random_policy_is_uniform_one_hot_or_box():
  policy = RandomPolicy(Space(True, 6), np.random.default_rng(1))
  actions, state = policy({'is_first': np.zeros(6000, bool)})
  assert state is None and actions.dtype == np.float32 and actions.shape == (6000, 6)
  assert np.all(actions.sum(1) == 1) and set(np.unique(actions)) == {0.0, 1.0}
  counts = actions.sum(0)
  assert np.all(np.abs(counts - 1000) < 150), counts  # 4.4 standard deviations
  box = RandomPolicy(Space(False, 3), np.random.default_rng(2))({'is_first': np.zeros(5000, bool)})[0]
  assert box.min() >= -1 and box.max() <= 1
  assert abs(box.mean()) < 0.05 and abs(box.var() - 1 / 3) < 0.02  # uniform on [-1, 1]


# ----------------------------------------------------------------------------- loop helpers

def test_every_fires_first_then_each_period():
  every = Every(100)
  fired = [s for s in range(401, 1201) if every(s)]
  assert fired == [401, 501, 601, 701, 801, 901, 1001, 1101]
  jump = Every(10)
  assert jump(0) and not jump(9) and jump(35) and jump.last == 30 and not jump(39) and jump(40)
  assert not any(Every(0)(s) for s in range(5))


def test_every_start_begins_the_period_without_firing():
  # The log interval starts when training starts: its first period is a whole one, not the
  # single agent step after the first call (which made the first rates ~100x too low).
  every = Every(300)
  every.start(400)
  assert [s for s in range(401, 1201) if every(s)] == [700, 1000]
  restored = Every(300)
  restored.last = 401  # from a checkpoint: start() keeps it
  restored.start(900)
  assert restored(1001) and restored.last == 1001


def test_mean_and_param_table():
  mean = Mean()
  mean.add({'a': np.float32(1), 'b': 2.0})
  mean.add({'a': np.float32(3)})
  assert mean.result() == {'a': 2.0, 'b': 2.0}
  assert mean.result() == {}
  table = format_param_table({'encoder': 1549776, 'actor': 1133606})
  assert '1,549,776' in table and 'actor' in table


def test_stored_agent_steps_subtracts_reset_rows():
  class FakeReplay:
    total_steps, total_episodes = 603, 3  # three episodes of 200 agent steps
  assert stored_agent_steps(FakeReplay()) == 600


# ----------------------------------------------------------------------------- logger

def test_jsonl_terminal_and_rewind(tmp_path, capsys):
  path = tmp_path / 'metrics.jsonl'
  log = logger_lib.Logger([logger_lib.TerminalOutput(), logger_lib.JSONLOutput(path)])
  log.write(400, {'train_return': -21.0, 'train_length': np.int64(812)}, terminal=False)
  log.write(800, {'model_loss': np.float32(3850.5), 'updates': 7, 'bad': float('nan')},
            terminal={'model_loss': 3850.5, 'eval_return': -20})
  log.write(1200, {'eval_return': 3.0})
  lines = path.read_text().splitlines()
  records = [json.loads(l) for l in lines]
  assert records[0] == {'step': 400, 'train_return': -21.0, 'train_length': 812}
  assert isinstance(records[0]['train_length'], int)
  assert records[1] == {'step': 800, 'model_loss': 3850.5, 'updates': 7, 'bad': None}
  out = capsys.readouterr().out.splitlines()
  assert out == ['[frames 800] eval_return -20 | model_loss 3850', '[frames 1,200] eval_return 3']
  # A resumed run at frame 800 moves the later line aside, keeping it.
  with open(path, 'a') as f:
    f.write('{"step": 1300, "trunc')  # a line cut by SIGKILL
  moved, aside = log.rewind(800)
  assert moved == 2 and aside.exists()
  assert [json.loads(l)['step'] for l in path.read_text().splitlines()] == [400, 800]
  assert aside.read_text().splitlines()[0] == lines[2]
  log.write(1000, {'x': 1.5})
  assert json.loads(path.read_text().splitlines()[-1]) == {'step': 1000, 'x': 1.5}
  log.close()


def test_tensorboard_scalars_and_gif_video(tmp_path):
  import tensorflow as tf
  log = logger_lib.Logger([logger_lib.TensorBoardOutput(tmp_path)])
  video = np.random.default_rng(0).integers(0, 255, (5, 8, 12, 1), dtype=np.uint8)
  log.write(4000, {'model_loss': 2.5}, {'train_openl_image': video})
  log.close()
  scalars, images = _read_events(tmp_path)
  assert scalars == {'model_loss': [(4000, 2.5)]}
  (step, (width, height, gif)), = images['train_openl_image']
  assert step == 4000 and (width, height) == (b'12', b'8') and gif.startswith(b'GIF89a')
  frames = tf.io.decode_gif(gif).numpy()
  assert frames.shape == (5, 8, 12, 3)
  np.testing.assert_array_equal(frames[2, ..., 0], video[2, ..., 0])  # lossless for gray


def _read_events(logdir: pathlib.Path):
  """{tag: [(step, value)]} for scalars and {tag: [(step, [strings])]} for image summaries."""
  import tensorflow as tf
  scalars, images = {}, {}
  for path in sorted(pathlib.Path(logdir).glob('events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        tensor = tf.make_ndarray(value.tensor)
        if value.metadata.plugin_data.plugin_name == 'images':
          images.setdefault(value.tag, []).append((event.step, list(tensor)))
        else:
          scalars.setdefault(value.tag, []).append((event.step, float(tensor)))
  return scalars, images


# ----------------------------------------------------------------------------- checkpoint

def test_checkpointer_saves_restores_rng_and_extra(tmp_path):
  import tensorflow as tf
  from dreamerv2_tf.checkpoint import Checkpointer, HostState, is_complete, read_variables

  step = tf.Variable(0, dtype=tf.int64)
  weights = tf.Variable([1.0, 2.0])
  gen = np.random.default_rng(5)
  extra = {'should_log': 401}
  host = HostState({'policy': gen}, lambda: dict(extra), extra.update)
  module = tf.Module()
  module.w = weights
  ckpt = Checkpointer(tmp_path / 'ck', step, max_to_keep=2, agent=module, host=host)
  assert ckpt.restore() is None
  random.seed(1)
  np.random.seed(2)
  step.assign(400)
  path = ckpt.save(key=(400, 2))
  assert path.endswith('ckpt-400')
  assert ckpt.save(key=(400, 2)) == path  # same key: nothing rewritten
  expected = (random.random(), np.random.rand(), gen.random())
  step.assign(999)
  weights.assign([0.0, 0.0])
  extra['should_log'] = 5
  status = ckpt.restore()
  assert is_complete(status)
  assert int(step.numpy()) == 400 and weights.numpy().tolist() == [1.0, 2.0]
  assert extra['should_log'] == 401
  assert (random.random(), np.random.rand(), gen.random()) == expected
  values = read_variables(path)
  assert values['step/.ATTRIBUTES/VARIABLE_VALUE'] == 400
  for number in (500, 600):
    step.assign(number)
    ckpt.save(key=(number, 3))
  assert [pathlib.Path(p).name for p in ckpt.manager.checkpoints] == ['ckpt-500', 'ckpt-600']


def test_evaluate_write_json_atomic(tmp_path):
  from dreamerv2_tf.evaluate import write_json
  write_json(tmp_path / 'evaluation.json', {'mean': 1.5})
  assert json.loads((tmp_path / 'evaluation.json').read_text()) == {'mean': 1.5}
  assert [p.name for p in tmp_path.iterdir()] == ['evaluation.json']


def test_evaluate_without_run_fails_cleanly(tmp_path):
  result = run_tool(['-m', 'dreamerv2_tf.evaluate', '--logdir', str(tmp_path), '--episodes', '1'])
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert 'config.yaml' in result.stderr


def test_unreadable_checkpoint_falls_back_and_is_kept(tmp_path, capsys):
  import tensorflow as tf
  from dreamerv2_tf.checkpoint import CheckpointError, Checkpointer, latest_readable

  step = tf.Variable(0, dtype=tf.int64)
  module = tf.Module()
  module.w = tf.Variable(tf.zeros(5000))  # a data file large enough to cut
  ckpt = Checkpointer(tmp_path, step, agent=module)
  for number in (100, 200, 300):
    step.assign(number)
    module.w.assign(tf.fill([5000], float(number)))
    ckpt.save()
  data = tmp_path / 'ckpt-300.data-00000-of-00001'
  good_bytes = data.read_bytes()
  data.write_bytes(good_bytes[:len(good_bytes) // 2])  # a copy cut short
  # Read-only lookup (evaluate, export): the newest readable one, nothing moved.
  assert latest_readable(tmp_path) == str(tmp_path / 'ckpt-200')
  assert 'ckpt-300 cannot be read (IndexError' in capsys.readouterr().out
  assert data.exists()
  # The training loop's restore: falls back, keeps the bad files under another name.
  fresh = Checkpointer(tmp_path, step, agent=module)
  assert fresh.restore_readable() is not None
  assert int(step.numpy()) == 200 and float(module.w[0]) == 200.0
  out = capsys.readouterr().out
  assert 'ckpt-300 cannot be read' in out and 'unreadable-' in out
  aside = sorted(p.name for p in tmp_path.glob('unreadable-*'))
  assert len(aside) == 2 and aside[0].endswith('-ckpt-300.data-00000-of-00001')
  assert (tmp_path / aside[0]).read_bytes() == good_bytes[:len(good_bytes) // 2]
  assert fresh.latest == str(tmp_path / 'ckpt-200')
  assert [pathlib.Path(p).name for p in fresh.manager.checkpoints] == ['ckpt-100', 'ckpt-200']
  # Saving again at step 300 and beyond never touches the kept files (the manager rotates
  # only its own list).
  for number in (300, 400, 500, 600):
    step.assign(number)
    fresh.save()
  assert sorted(p.name for p in tmp_path.glob('unreadable-*')) == aside
  assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / 'ckpt-600')
  # Nothing readable: a clear error naming each checkpoint, nothing moved.
  for path in tmp_path.glob('ckpt-*.data-*'):
    path.write_bytes(b'')
  before = sorted(p.name for p in tmp_path.iterdir())
  with pytest.raises(CheckpointError, match='ckpt-600 .*ckpt-500 .*ckpt-400 '):
    Checkpointer(tmp_path, step, agent=module).restore_readable()
  assert sorted(p.name for p in tmp_path.iterdir()) == before


def _pong_run(logdir: pathlib.Path):
  """A run folder as the loop leaves it (config.yaml + a checkpoint of a debug Pong agent with
  0 updates), by test_export's helper; returns the saved config."""
  from test_export import make_run  # pylint: disable=import-outside-toplevel
  _, config = make_run(logdir)
  config = config.update({'logdir': str(logdir)})
  config.save(logdir / 'config.yaml')
  return config


def test_checkpoint_of_another_config_leaves_config_yaml_unchanged(tmp_path):
  from dreamerv2_tf import loop
  from dreamerv2_tf.config import ConfigError
  logdir = tmp_path / 'run'
  config = _pong_run(logdir)
  saved = (logdir / 'config.yaml').read_bytes()
  wider = config.update({'rssm.deter': 2 * config.rssm.deter})
  with pytest.raises(ConfigError) as error:
    loop.run(wider, logdir, stop=loop.StopRequest())
  message = str(error.value)
  assert 'does not fit this config' in message and 'differs in: rssm.deter;' in message
  assert f'resume with the config saved in {logdir / "config.yaml"}' in message
  assert (logdir / 'config.yaml').read_bytes() == saved  # still the config of the checkpoint
  assert not list(logdir.glob('config.yaml.previous-*'))
  assert not list(logdir.glob('events.out.tfevents.*'))  # no logger started


def test_logdir_of_another_task_or_action_repeat_is_refused(tmp_path):
  from dreamerv2_tf import loop
  from dreamerv2_tf.config import ConfigError
  logdir = tmp_path / 'run'
  config = load_config(['atari', 'debug'], {'logdir': str(logdir)})
  config.save(logdir / 'config.yaml')
  saved = (logdir / 'config.yaml').read_bytes()
  for key, value in (('task', 'atari_space_invaders'), ('action_repeat', 2)):
    with pytest.raises(ConfigError) as error:
      loop.run(config.update({key: value}), logdir, stop=loop.StopRequest())
    message = str(error.value)
    assert f'{key} {config[key]!r}' in message and f'{key} {value!r}' in message
    assert 'new --logdir' in message and '\n' not in message
  assert sorted(p.name for p in logdir.iterdir()) == ['config.yaml']
  assert (logdir / 'config.yaml').read_bytes() == saved


def _one_line_error(capsys, prefix):
  lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith(prefix)]
  assert len(errors) == 1 and 'Traceback' not in '\n'.join(lines), lines
  return errors[0]


def test_evaluate_mismatched_or_corrupt_config_is_one_line(tmp_path, capsys):
  from dreamerv2_tf import evaluate
  logdir = tmp_path / 'run'
  config = _pong_run(logdir)
  config.update({'rssm.deter': 2 * config.rssm.deter}).save(logdir / 'config.yaml')
  assert evaluate.main(['--logdir', str(logdir), '--episodes', '1']) == 2
  line = _one_line_error(capsys, 'evaluate: error:')
  assert 'does not fit the agent of' in line and 'ckpt-1234' in line
  (logdir / 'config.yaml').write_text('task: [atari_pong\n')
  assert evaluate.main(['--logdir', str(logdir), '--episodes', '1']) == 2
  line = _one_line_error(capsys, 'evaluate: error:')
  assert f'cannot parse {logdir / "config.yaml"}' in line and 'line 2' in line
  assert not (logdir / 'evaluation.json').exists()


# ----------------------------------------------------------------------------- end to end

DEBUG = read_blocks()['debug']
REPEAT = read_blocks()['atari']['action_repeat']


def expected_updates(steps: int, prefill_end: int) -> int:
  """First update + pretrain, then one per train_every agent steps from prefill_end + 1."""
  every = Every(DEBUG['train_every'])
  return 1 + DEBUG['pretrain'] + sum(every(s) for s in range(prefill_end + 1, steps + 1))


def train_args(logdir, *extra):
  return ['train.py', '--configs', 'atari', 'debug', '--logdir', str(logdir), *extra]


def latest_checkpoint(logdir) -> tuple[str | None, dict]:
  from dreamerv2_tf.checkpoint import read_variables
  state = pathlib.Path(logdir) / 'checkpoints' / 'checkpoint'
  if not state.exists():
    return None, {}
  name = re.search(r'model_checkpoint_path: "(.*)"', state.read_text()).group(1)
  path = str(pathlib.Path(logdir) / 'checkpoints' / name)
  values = read_variables(path)
  return path, {
      'step': int(values['step/.ATTRIBUTES/VARIABLE_VALUE']),
      'updates': int(values['agent/ac/updates/.ATTRIBUTES/VARIABLE_VALUE']),
      'iterations': sorted(int(v) for k, v in values.items() if k.endswith(
          '_iterations/.ATTRIBUTES/VARIABLE_VALUE')),
  }


def read_metrics(logdir):
  return [json.loads(line) for line in (pathlib.Path(logdir) / 'metrics.jsonl').read_text()
          .splitlines()]


@pytest.fixture(scope='module')
def debug_run(tmp_path_factory):
  logdir = tmp_path_factory.mktemp('debug') / 'run'
  start = time.time()
  result = run_tool(train_args(logdir), timeout=600)
  return logdir, result, time.time() - start


@pytest.mark.slow
def test_debug_run_end_to_end(debug_run):
  from dreamerv2_tf.replay import load_episode
  logdir, result, seconds = debug_run
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  print(f'debug run: {seconds:.1f} s')
  out = result.stdout
  assert 'device: CPU' in out and 'precision: float32' in out and 'Trainable parameters' in out
  assert 'Prefill [' in out

  config = load_config(['atari', 'debug'], {'logdir': str(logdir)})
  saved = read_blocks(logdir / 'config.yaml')
  assert saved == config.to_dict()

  # Episodes: the time limit ends every debug episode at exactly time_limit agent steps.
  limit, steps = DEBUG['time_limit'], DEBUG['steps']
  train_files = sorted((logdir / 'train_episodes').glob('*.npz'))
  eval_files = sorted((logdir / 'eval_episodes').glob('*.npz'))
  assert len(train_files) == steps // limit
  for path in train_files + eval_files:
    assert len(load_episode(path)['reward']) == limit + 1
  prefill_end = math.ceil(DEBUG['prefill'] / limit) * limit
  evals = 1 + (steps - prefill_end) // DEBUG['eval_every']  # at training start, then each period
  assert len(eval_files) == 1 + evals  # plus the random one of prefill

  # metrics.jsonl: one object per line, steps in frames, finite losses.
  records = read_metrics(logdir)
  train_eps = [r for r in records if 'train_return' in r]
  eval_eps = [r for r in records if 'eval_return' in r]
  intervals = [r for r in records if 'model_loss' in r]
  assert [r['step'] for r in train_eps] == [limit * REPEAT * (i + 1) for i in range(len(train_files))]
  assert all(r['train_length'] == limit for r in train_eps)
  assert len(eval_eps) == evals and all(r['eval_length'] == limit for r in eval_eps)
  assert eval_eps[0]['step'] == prefill_end * REPEAT
  assert all(-limit <= r['eval_return'] <= limit for r in eval_eps)
  # The first log interval starts with training: a whole log_every long, not one agent step.
  log_every = DEBUG['log_every']
  assert len(intervals) == len(range(prefill_end + log_every, steps + 1, log_every))
  for r in intervals:
    for key in ('model_loss', 'image_loss', 'reward_loss', 'model_kl', 'actor_loss',
                'critic_loss', 'fps', 'updates_per_sec'):
      assert math.isfinite(r[key]), (key, r)
  assert intervals[0]['step'] == (prefill_end + log_every) * REPEAT
  # Its terminal train_return averages only the training episodes finished in it (prefill ones
  # excluded): here the single one ending at agent step prefill_end + time_limit.
  first = [r['train_return'] for r in train_eps
           if prefill_end * REPEAT < r['step'] <= intervals[0]['step']]
  assert len(first) == 1
  line, = [l for l in out.splitlines() if l.startswith(f'[frames {intervals[0]["step"]:,}]')
           and 'model_loss' in l]
  assert re.search(rf'train_return {re.escape(logger_lib.format_value(first[0]))}( \||$)', line)
  assert intervals[-1]['updates'] <= expected_updates(steps, prefill_end)
  assert [r['step'] for r in records] == sorted(r['step'] for r in records)
  assert max(r['step'] for r in records) == steps * REPEAT

  # TensorBoard: scalars and the open-loop videos.
  scalars, images = _read_events(logdir)
  for tag in ('model_loss', 'train_return', 'eval_return', 'fps'):
    assert tag in scalars, sorted(scalars)
  assert scalars['eval_return'][0][0] == prefill_end * REPEAT
  assert len(images['train_openl_image']) == len(intervals)
  width, height, gif = images['train_openl_image'][0][1]
  assert gif.startswith(b'GIF89a') and int(height) == 3 * 64
  assert 'eval_openl_image' in images
  # Policy videos (issue 17): a training episode's frames once per eval_every (from the first
  # training episode), and the first episode of each evaluation, as the authors logged them.
  import tensorflow as tf
  every = Every(DEBUG['eval_every'])
  ends = range(prefill_end + limit, steps + 1, limit)
  assert [s for s, _ in images['train_policy_image']] == [e * REPEAT for e in ends if every(e)]
  assert [s for s, _ in images['eval_policy_image']] == [r['step'] for r in eval_eps]
  first_train = [e for e in ends if Every(DEBUG['eval_every'])(e)][0]
  sources = {'train_policy_image': train_files[first_train // limit - 1],  # in time order
             'eval_policy_image': eval_files[1]}  # eval_files[0]: prefill's random episode
  for tag, source in sources.items():
    width, height, gif = images[tag][0][1]
    assert (int(width), int(height)) == (64, 64)
    frames = tf.io.decode_gif(gif).numpy()
    # GIF merges identical consecutive frames (Pong's first ones): at most the episode's
    # limit + 1 transitions, starting with its reset frame.
    assert limit // 2 < len(frames) <= limit + 1
    np.testing.assert_array_equal(frames[0, ..., 0], load_episode(source)['image'][0, ..., 0])

  # Checkpoint: step, update counter and every optimiser's iterations.
  path, values = latest_checkpoint(logdir)
  updates = expected_updates(steps, prefill_end)
  assert path.endswith(f'ckpt-{steps}')
  assert values['step'] == steps and values['updates'] == updates
  assert values['iterations'] == [updates] * 3
  assert f'Finished at agent step {steps:,}' in out


@pytest.mark.slow
def test_evaluate_cli(debug_run):
  logdir, result, _ = debug_run
  assert result.returncode == 0
  out = run_tool(['-m', 'dreamerv2_tf.evaluate', '--logdir', str(logdir), '--episodes', '2'])
  assert out.returncode == 0, out.stderr[-3000:]
  data = json.loads((logdir / 'evaluation.json').read_text())
  assert data['episodes'] == 2 and len(data['returns']) == 2
  assert data['lengths'] == [DEBUG['time_limit']] * 2
  assert data['mean'] == pytest.approx(np.mean(data['returns']))
  assert data['std'] == pytest.approx(np.std(data['returns']))
  assert data['agent_step'] == DEBUG['steps'] and data['frames'] == DEBUG['steps'] * REPEAT
  assert f"mean {data['mean']:.3f}, std {data['std']:.3f}" in out.stdout


def _start(args):
  return subprocess.Popen([sys.executable, *args], cwd=REPO, env=tool_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, proc, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    if proc.poll() is not None:
      raise AssertionError(f'process ended early: {proc.stdout.read()[-3000:]}')
    time.sleep(0.2)
  proc.kill()
  raise AssertionError('timed out')


def _trained_after_checkpoint(logdir):
  """True once a checkpoint exists and a train episode ended after it (training is running)."""
  _, values = latest_checkpoint(logdir)
  if not values or not (logdir / 'metrics.jsonl').exists():
    return False
  records = [json.loads(l) for l in (logdir / 'metrics.jsonl').read_text().splitlines()
             if l.endswith('}')]
  return any('train_return' in r and r['step'] > values['step'] * REPEAT for r in records)


@pytest.mark.slow

def _kill_after_a_checkpoint(args, logdir) -> str:
  """Starts train.py with `args`, SIGKILLs it once it has trained past a checkpoint, and
  returns what it printed."""
  proc = _start(args)
  try:
    _wait_for(lambda: _trained_after_checkpoint(logdir), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    proc.kill()
  return proc.stdout.read()

def test_sigkill_then_restart_resumes(tmp_path):
  from dreamerv2_tf.replay import load_episode
  logdir = tmp_path / 'run'
  steps = 1600
  # One evaluation (at training start), so the only checkpoint before the kill is its one.
  args = train_args(logdir, f'--steps={steps}', '--eval_every=100000')
  killed_output = _kill_after_a_checkpoint(args, logdir)
  path, before = latest_checkpoint(logdir)
  files = sorted(p.name for p in (logdir / 'train_episodes').glob('*.npz'))
  # Episodes were stored after the checkpoint: the restart keeps them, the counter rewinds.
  assert before['step'] < steps and len(files) * DEBUG['time_limit'] > before['step']

  result = run_tool(args, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  out = result.stdout
  # The counters continue from the checkpoint: step, updates, optimiser iterations.
  assert (f'Resumed from {path}: agent step {before["step"]:,} '
          f'(frame {before["step"] * REPEAT:,}), {before["updates"]:,} updates.') in out
  assert 'Prefill' not in out  # enough steps on disk
  assert f'Replay on disk: {len(files)} train episodes' in out
  for name in files:  # every stored episode is still there and loads
    assert len(load_episode(logdir / 'train_episodes' / name)['reward']) == DEBUG['time_limit'] + 1
  _, after = latest_checkpoint(logdir)
  prefill_end = math.ceil(DEBUG['prefill'] / DEBUG['time_limit']) * DEBUG['time_limit']
  updates = expected_updates(steps, prefill_end)  # as many as an uninterrupted run
  assert after['step'] == steps and after['updates'] == updates
  assert after['iterations'] == [updates] * 3
  records = read_metrics(logdir)
  assert [r['step'] for r in records] == sorted(r['step'] for r in records)
  assert any(r['step'] > before['step'] * REPEAT for r in records)
  assert list(logdir.glob('metrics.jsonl.after-checkpoint-*')), killed_output[-2000:]


@pytest.mark.slow
def test_sigint_saves_a_checkpoint(tmp_path):
  logdir = tmp_path / 'run'
  proc = _start(train_args(logdir, '--steps=100000', '--eval_every=100000'))
  try:
    _wait_for(lambda: _trained_after_checkpoint(logdir), proc)
    _, before = latest_checkpoint(logdir)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 128 + signal.SIGINT, out[-3000:]
  assert 'Traceback' not in out
  match = re.search(r'Stopped by SIGINT at agent step ([\d,]+)', out)
  assert match, out[-3000:]
  stopped = int(match.group(1).replace(',', ''))
  path, after = latest_checkpoint(logdir)
  assert path.endswith(f'ckpt-{stopped}')
  assert after['step'] == stopped > before['step']
  assert after['updates'] >= before['updates'] and after['iterations'] == [after['updates']] * 3


@pytest.mark.slow
def test_plan2explore_run_logs_the_explorer_and_resumes_it_after_sigkill(tmp_path):
  """expl_behavior: plan2explore end to end (issue 13): the explorer's metrics are logged, its
  ensemble, actor, critic and optimisers are in the checkpoint, and a restart after SIGKILL
  continues their counters from it (an unrestored explorer would count its updates from 0)."""
  from dreamerv2_tf.checkpoint import read_variables
  logdir = tmp_path / 'run'
  steps = 1600
  args = train_args(logdir, f'--steps={steps}', '--eval_every=100000',
                    '--expl_behavior=plan2explore', '--expl_until=1000')
  _kill_after_a_checkpoint(args, logdir)
  path, before = latest_checkpoint(logdir)
  assert before['updates'] > 0 and before['iterations'] == [before['updates']] * 6
  saved = read_variables(path)
  for key in ('agent/expl/disag9/out/bias', 'agent/expl/ac/actor/out/bias',
              'agent/expl/ac/target_critic/out/bias', 'agent/expl/intr_norm/mag'):
    assert f'{key}/.ATTRIBUTES/VARIABLE_VALUE' in saved, key
  assert int(saved['agent/expl/ac/updates/.ATTRIBUTES/VARIABLE_VALUE']) == before['updates']

  result = run_tool(args, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert f'Resumed from {path}: agent step {before["step"]:,}' in result.stdout
  _, after = latest_checkpoint(logdir)
  prefill_end = math.ceil(DEBUG['prefill'] / DEBUG['time_limit']) * DEBUG['time_limit']
  updates = expected_updates(steps, prefill_end)
  assert after['step'] == steps and after['updates'] == updates
  assert after['iterations'] == [updates] * 6  # model, actor, critic, expl, expl actor, critic
  final = read_variables(latest_checkpoint(logdir)[0])
  assert int(final['agent/expl/ac/updates/.ATTRIBUTES/VARIABLE_VALUE']) == updates
  intervals = [r for r in read_metrics(logdir) if 'model_loss' in r]
  assert intervals and any(r['step'] > before['step'] * REPEAT for r in intervals)
  for r in intervals:
    for key in ('expl_expl_loss', 'expl_expl_grad_norm', 'expl_actor_loss', 'expl_critic_loss',
                'expl_reward_mean'):
      assert math.isfinite(r[key]), (key, r)
