"""The Runner's fault handling (issue 12) and progress/signals (issue 11), in parts.

Fast tests use stand-ins (a counting vector env, a tiny tf.Module); the `slow` ones run the real
debug agent in this process or `train.py --configs atari debug` in subprocesses.
"""

from __future__ import annotations

import errno
import io
import math
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import REPO, tool_env
from dreamerv2_tf import faults
from dreamerv2_tf.driver import Driver, RandomPolicy
from dreamerv2_tf.lock import LogdirLock, LogdirLockedError
from dreamerv2_tf.progress import Heartbeat, ProgressOutput, format_duration
from dreamerv2_tf.signals import Abandoned, StopRequest, Worker
from test_train import CountingVecEnv, Space


# ----------------------------------------------------------------------------- logdir lock

HOLD = ('import sys, time; from dreamerv2_tf.lock import LogdirLock; '
        'LogdirLock(sys.argv[1]).acquire(); print("locked", flush=True); time.sleep(600)')


def test_second_lock_fails_naming_holder_then_stale_lock_is_taken(tmp_path):
  holder = subprocess.Popen([sys.executable, '-c', HOLD, str(tmp_path)], cwd=REPO,
                            env=tool_env(), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    start = time.time()
    with pytest.raises(LogdirLockedError) as error:
      LogdirLock(tmp_path).acquire()
    assert time.time() - start < 1  # no waiting
    message = str(error.value)
    assert f'pid {holder.pid} host ' in message and str(tmp_path) in message
    assert 'another --logdir' in message and '\n' not in message
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
  warnings = []
  lock = LogdirLock(tmp_path).acquire(warnings.append)  # the holder died: stale, taken over
  assert len(warnings) == 1 and f'pid {holder.pid} ' in warnings[0] and 'gone' in warnings[0]
  assert (tmp_path / '.lock').read_text().startswith(f'pid {os.getpid()} host ')
  with pytest.raises(LogdirLockedError, match=f'pid {os.getpid()} '):
    LogdirLock(tmp_path).acquire()  # another open file in this process conflicts too
  lock.release()
  assert (tmp_path / '.lock').read_text() == ''
  again = []
  LogdirLock(tmp_path).acquire(again.append).release()  # released cleanly: nothing to say
  assert again == []


# ----------------------------------------------------------------------------- non-finite

def test_check_finite_names_metric_and_update():
  faults.check_finite({'model_loss': np.float32(3.0), 'model_grad_norm': 1.0, 'x': np.nan}, 7)
  with pytest.raises(faults.NonFiniteError) as error:
    faults.check_finite({'model_loss': np.float32(np.nan), 'actor_grad_norm': np.inf,
                         'critic_loss': 1.0}, 1234)
  assert error.value.update == 1234 and set(error.value.metrics) == {'actor_grad_norm',
                                                                     'model_loss'}
  message = str(error.value)
  assert message.startswith('Update 1,234 gave a non-finite actor_grad_norm = inf, model_loss')
  # Under mixed float16 an infinite gradient norm is the loss scaler's business (step skipped).
  faults.check_finite({'model_loss': 1.0, 'model_grad_norm': np.inf}, 3, mixed=True)
  with pytest.raises(faults.NonFiniteError, match='model_loss'):
    faults.check_finite({'model_loss': np.nan, 'model_grad_norm': np.inf}, 3, mixed=True)


# ----------------------------------------------------------------------------- env failures

class FailingVecEnv(CountingVecEnv):
  """CountingVecEnv whose `step` raises when a shared counter of steps over every instance
  reaches one of `fail_at` (or always, with fail_at='always')."""

  def __init__(self, counter, fail_at, **kwargs):
    super().__init__(**kwargs)
    self.counter, self.fail_at = counter, fail_at
    self.closed = False

  def step(self, actions):
    self.counter['steps'] += 1
    if self.fail_at == 'always' or self.counter['steps'] in self.fail_at:
      raise RuntimeError(f'emulator crashed at step {self.counter["steps"]}')
    return super().step(actions)

  def close(self):
    self.closed = True


def test_env_raising_on_its_7th_step_drops_the_episode_and_goes_on(tmp_path):
  from dreamerv2_tf.replay import Replay, load_episode
  counter, built = {'steps': 0}, []

  def build():
    built.append(FailingVecEnv(counter, {7}, num=1, length=4))
    return built[-1]

  replay = Replay(tmp_path, 1000, 1, 0)
  failures = []
  driver = Driver(build(), [replay.add_step], rebuild=build, max_failures=2,
                  on_failure=[lambda e, n: failures.append((str(e), n))], name='train')
  policy = RandomPolicy(Space(True, 4), np.random.default_rng(0))
  steps, episodes = driver(policy, episodes=3)
  # Steps 1-4: episode 1; step 5 auto-resets; step 6 is episode 2's first agent step; step 7
  # raises, and episode 2 is dropped; the rebuilt env plays two whole episodes.
  assert episodes == 3 and failures == [('emulator crashed at step 7', 1)]
  assert len(built) == 2 and built[0].closed and driver.env is built[1]
  assert driver.failures == 1 and driver.failures_in_row == 0
  files = sorted(tmp_path.glob('*.npz'))
  assert len(files) == 3  # no file for the broken episode
  for path in files:
    episode = load_episode(path)
    assert len(episode['reward']) == 5 and episode['is_first'][0] and episode['is_last'][-1]
  assert steps == 4 + 1 + 4 + 4


def test_env_that_always_raises_stops_after_max_failures():
  counter, built = {'steps': 0}, []

  def build():
    built.append(FailingVecEnv(counter, 'always', num=2, length=5))
    return built[-1]

  failures = []
  driver = Driver(build(), rebuild=build, max_failures=3,
                  on_failure=[lambda e, n: failures.append(n)])
  policy = RandomPolicy(Space(True, 4), np.random.default_rng(0))
  with pytest.raises(faults.EnvFailureError) as error:
    driver(policy, episodes=1)
  assert failures == [1, 2, 3] and len(built) == 3
  message = str(error.value)
  assert 'failed 3 times in a row (env_max_failures 3)' in message
  assert 'RuntimeError: emulator crashed at step 3' in message
  assert isinstance(error.value.__cause__, RuntimeError)
  # Without a rebuild factory the env's own exception propagates.
  with pytest.raises(RuntimeError, match='emulator crashed'):
    Driver(FailingVecEnv({'steps': 0}, 'always'))(policy, episodes=1)


def test_env_failing_while_stopping_is_not_rebuilt():
  # Ctrl-C reaches env worker processes too: a worker dying then is not a failure to repair.
  stopping = {'now': False}

  class DiesOnStop(CountingVecEnv):
    def step(self, actions):
      stopping['now'] = True
      raise EOFError('worker process died')

  driver = Driver(DiesOnStop(), rebuild=lambda: pytest.fail('rebuilt'), max_failures=1)
  policy = RandomPolicy(Space(True, 4), np.random.default_rng(0))
  assert driver(policy, episodes=1, stop=lambda: stopping['now']) == (0, 0)
  assert driver.failures == 0


def test_policy_errors_are_not_env_failures():
  def bad_policy(obs, state):
    raise faults.NonFiniteError('policy saw NaN', 1, {})
  driver = Driver(CountingVecEnv(), rebuild=lambda: pytest.fail('rebuilt'))
  with pytest.raises(faults.NonFiniteError):
    driver(bad_policy, episodes=1)


# ----------------------------------------------------------------------------- write failures

def test_checkpoint_write_failure_names_path_and_keeps_earlier(tmp_path):
  import tensorflow as tf
  from dreamerv2_tf.checkpoint import Checkpointer, read_variables
  step = tf.Variable(100, dtype=tf.int64)
  module = tf.Module()
  module.w = tf.Variable(tf.fill([1000], 1.0))
  ckpt = Checkpointer(tmp_path, step, agent=module)
  first = ckpt.save()
  before = sorted(p.name for p in tmp_path.iterdir())
  real_write = ckpt.checkpoint._write  # pylint: disable=protected-access

  def full_disk(prefix, options=None):
    real_write(prefix + '_temp/part', options=None)  # some bytes land, as on a real disk
    pathlib.Path(prefix + '.index').write_bytes(b'half an index')
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), prefix + '.index')

  ckpt.checkpoint._write = full_disk  # pylint: disable=protected-access
  step.assign(200)
  module.w.assign(tf.fill([1000], 2.0))
  with pytest.raises(faults.CheckpointWriteError) as error:
    ckpt.save()
  message = str(error.value)
  assert f'Cannot write checkpoint {tmp_path / "ckpt-200"}' in message
  assert 'No space left on device' in message and f'{first} stays the latest' in message
  assert sorted(p.name for p in tmp_path.iterdir()) == before  # no partial file left
  assert tf.train.latest_checkpoint(str(tmp_path)) == first
  assert read_variables(first)['step/.ATTRIBUTES/VARIABLE_VALUE'] == 100


# ----------------------------------------------------------------------------- progress, signals

def test_heartbeat_line_rates_and_log_file(tmp_path):
  now = [0.0]
  stream = io.StringIO()
  output = ProgressOutput(tmp_path / 'progress.log', stream)
  beat = Heartbeat(60, total_steps=10_000, frames_per_step=4, output=output,
                   clock=lambda: now[0])
  beat.start(1000, 10)
  now[0] = 30.0
  assert not beat('train', 1300, 13, next_log=1500, next_eval=2000)  # not due yet
  now[0] = 100.0
  assert beat('train', 2000, 20, next_log=2500, next_eval=None)
  line = stream.getvalue().strip()
  # 1,000 agent steps and 10 updates in 100 s; 8,000 agent steps to go at 10/s.
  assert line == ('[progress] train: agent step 2,000/10,000 (frame 8,000) | updates 20 '
                  '(0.1/s) | 10 agent steps/s | next log in 500 agent steps (~50s) | '
                  'ETA 13m20s')
  output.close()
  logged = (tmp_path / 'progress.log').read_text().splitlines()
  assert len(logged) == 1 and logged[0].endswith(line) and logged[0][:4].isdigit()
  assert format_duration(2 * 86400 + 4 * 3600 + 5) == '2d04h' and format_duration(None) == '?'


def test_worker_call_returns_raises_and_lets_signals_through():
  worker = Worker()
  assert worker.call(lambda: 41 + 1) == 42
  with pytest.raises(ZeroDivisionError):
    worker.call(lambda: 1 / 0)
  stop = StopRequest().install()
  try:
    release = threading.Event()
    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
    start = time.time()
    with pytest.raises(Abandoned):
      worker.call(lambda: release.wait(30), lambda: bool(stop), abandon_on_stop=True)
    assert stop.signum == signal.SIGTERM and time.time() - start < 2 and worker.busy
    release.set()
  finally:
    stop.uninstall()
    worker.close()


# ----------------------------------------------------------------------------- runner parts

class RecordingLogger:
  def __init__(self):
    self.records = []

  def write(self, step, scalars=None, videos=None, terminal=True):
    self.records.append((step, dict(scalars or {}), dict(videos or {})))


def test_eval_eps_is_episodes_per_evaluation_whatever_envs(monkeypatch):
  from dreamerv2_tf import envs, runner
  from dreamerv2_tf.config import load_config
  built = {}

  def make_vec_env(task, config, mode, num, seed, **kwargs):
    env = CountingVecEnv(num=num, length=3, size=6)
    env.obs_space = {'image': ((2, 2, 1), np.uint8)}
    env.act_space = Space(True, 6)
    built[mode] = env
    return env

  monkeypatch.setattr(envs, 'make_vec_env', make_vec_env)
  config = load_config(['atari', 'debug'], {'envs': 4, 'eval_eps': 3})
  run = runner.Runner(config, '/nonexistent')
  run.run_seed = 0
  run._open_envs()  # pylint: disable=protected-access
  assert (built['train'].num, built['eval'].num) == (4, 3)  # min(envs, eval_eps) eval workers
  run.logger, run.phase = RecordingLogger(), 'train'
  for value in (1.0, 2.0, 3.0, 4.0):  # a fourth episode finishing with the third: not scored
    run.on_eval_episode({'return': value, 'length': 3}, 0)
  assert run.eval_scores == [1.0, 2.0, 3.0] and len(run.logger.records) == 3
  assert runner.Runner(load_config(['atari', 'debug'], {'envs': 2}), '/x').eval_eps == 1


def test_steps_smaller_than_prefill_is_warned():
  from dreamerv2_tf.runner import prefill_warning
  assert prefill_warning(50_000, 50_000) is None and prefill_warning(10**6, 50_000) is None
  assert prefill_warning(10, 50_000) == (
      'Warning: steps (10) is smaller than prefill (50,000); prefill counts towards steps, so '
      'this run stops after 10 random agent steps and at most a few updates.')


def test_policy_refusing_non_finite_values_stops_the_run_in_one_line():
  from dreamerv2_tf.runner import agent_policy

  class Counter:
    def numpy(self):
      return np.int64(12)

  class NaNAgent:
    updates = Counter()

    def initial_state(self, batch):
      return None

    def policy(self, obs, state, mode):
      raise FloatingPointError('the actor output holds NaN\n(check the weights)')

  with pytest.raises(faults.NonFiniteError) as error:
    agent_policy(NaNAgent(), 'eval')({'is_first': np.ones(1, bool)}, None)
  assert str(error.value) == ('The eval policy refused to act after update 12: the actor output '
                              'holds NaN (check the weights)')
  assert isinstance(error.value, faults.RunError) and error.value.update == 12


# ----------------------------------------------------------------------------- end to end

class CrashOnce:
  """Wraps a VecEnv: the train env's `step` raises once, at the `at`-th step over the run."""

  def __init__(self, env, counter, at):
    self._env, self._counter, self._at = env, counter, at

  def __getattr__(self, name):
    return getattr(self._env, name)

  def step(self, actions):
    self._counter['steps'] += 1
    if self._counter['steps'] == self._at:
      raise RuntimeError('renderer crashed (injected)')
    return self._env.step(actions)


@pytest.mark.slow
def test_env_crash_is_survived_and_nan_stops_training(tmp_path, monkeypatch, capsys):
  """The debug Pong agent: the train env raises on its 7th step (the episode is dropped, the
  run goes on, `env_failures` is logged); then a NaN reward in the 4th update's batch stops
  training naming the metric and the update, and the checkpoint on disk stays finite."""
  import json
  import tensorflow as tf
  from dreamerv2_tf import envs, loop, runner
  from dreamerv2_tf.checkpoint import read_variables
  from dreamerv2_tf.config import load_config
  from dreamerv2_tf.replay import load_episode

  real_make, counter = envs.make_vec_env, {'steps': 0}

  def make_vec_env(task, config, mode, num, seed, **kwargs):
    env = real_make(task, config, mode, num, seed, **kwargs)
    return CrashOnce(env, counter, 7) if mode == 'train' else env

  monkeypatch.setattr(envs, 'make_vec_env', make_vec_env)
  real_batch = runner.Runner.next_batch

  def next_batch(self, name, update=False):
    batch = real_batch(self, name, update)
    if update and self.updates == 3:  # the batch of update 4
      reward = batch['reward'].numpy()
      reward[0, 3] = np.nan
      batch = dict(batch, reward=tf.constant(reward))
    return batch

  monkeypatch.setattr(runner.Runner, 'next_batch', next_batch)
  logdir = tmp_path / 'run'
  config = load_config(['atari', 'debug'], {'logdir': str(logdir), 'steps': 1000,
                                            'log_every': 100, 'progress_every_s': 0.0})
  with pytest.raises(faults.NonFiniteError) as error:
    loop.run(config, logdir, stop=StopRequest())
  out = capsys.readouterr().out
  assert 'Warning: the train environment failed (RuntimeError: renderer crashed' in out
  assert error.value.update == 4 and str(error.value).startswith('Update 4 gave a non-finite ')
  assert 'model_loss = nan' in str(error.value) and 'reward_loss = nan' in str(error.value)
  # The broken first episode (6 agent steps) was dropped: every file is a whole episode.
  files = sorted((logdir / 'train_episodes').glob('*.npz'))
  assert files and all(len(load_episode(p)['reward']) == 201 for p in files)
  records = [json.loads(l) for l in (logdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['env_failures'] for r in records if 'env_failures' in r] == [1]
  # Training progress between log intervals, on the terminal and in progress.log.
  assert '[progress] train: agent step ' in out
  assert '[progress] train: agent step ' in (logdir / 'progress.log').read_text()
  # The checkpoint of the first evaluation (after 2 updates) is the latest and finite.
  state = tf.train.get_checkpoint_state(str(logdir / 'checkpoints'))
  values = read_variables(state.model_checkpoint_path)
  assert values['agent/ac/updates/.ATTRIBUTES/VARIABLE_VALUE'] == 2
  floats = [v for v in values.values() if np.issubdtype(np.asarray(v).dtype, np.floating)]
  assert floats and all(np.all(np.isfinite(v)) for v in floats)
  assert (logdir / '.lock').read_text() == ''  # released


class Proc:
  """`python tests/fault_hooks.py train.py ARGS` with its output read line by line."""

  def __init__(self, args, hooks=''):
    import queue
    env = dict(tool_env(), FAULT_HOOKS=hooks)
    self.proc = subprocess.Popen(
        [sys.executable, str(REPO / 'tests' / 'fault_hooks.py'), 'train.py', *args], cwd=REPO,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    self.lines: list[str] = []
    self._queue = queue.Queue()
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.proc.stdout:
      self._queue.put(line)
    self._queue.put(None)

  def wait_for(self, text, timeout=300):
    """Reads until a line contains `text`; returns the time it was seen."""
    import queue
    deadline = time.time() + timeout
    while time.time() < deadline:
      try:
        line = self._queue.get(timeout=1)
      except queue.Empty:
        continue
      if line is None:
        break
      self.lines.append(line)
      if text in line:
        return time.time()
    self.proc.kill()
    raise AssertionError(f'no {text!r} in: {"".join(self.lines)[-3000:]}')

  def finish(self, timeout=300):
    rc = self.proc.wait(timeout=timeout)
    self.wait_for_end()
    return rc

  def wait_for_end(self):
    while True:
      line = self._queue.get(timeout=30)
      if line is None:
        return
      self.lines.append(line)

  @property
  def out(self):
    return ''.join(self.lines)

  def kill(self):
    self.proc.send_signal(signal.SIGKILL)
    self.proc.wait(timeout=30)
    self.wait_for_end()


def _episodes(logdir):
  """{file name: sha of its arrays} of every stored episode; each must load."""
  import hashlib
  from dreamerv2_tf.replay import load_episode
  out = {}
  for path in sorted(p for p in logdir.glob('*_episodes/*.npz') if not p.name.startswith('.')):
    episode = load_episode(path)
    digest = hashlib.sha256()
    for key in sorted(episode):
      digest.update(np.ascontiguousarray(episode[key]).tobytes())
    out[f'{path.parent.name}/{path.name}'] = digest.hexdigest()
  return out


def _check_restart(logdir, history):
  """After a kill: every episode loads, none is stored twice, metrics steps never go back, and
  the checkpointed step is at least the previous one's."""
  import json
  from test_train import latest_checkpoint
  episodes = _episodes(logdir)
  assert len(set(episodes.values())) == len(episodes), 'an episode is stored twice'
  if (logdir / 'metrics.jsonl').exists():
    steps = [json.loads(l)['step'] for l in (logdir / 'metrics.jsonl').read_text().splitlines()
             if l.endswith('}')]
    assert steps == sorted(steps)
  _, values = latest_checkpoint(logdir)
  step = values.get('step', 0)
  assert step >= (history[-1] if history else 0)
  history.append(step)
  return episodes


@pytest.mark.slow
def test_kills_at_every_phase_then_the_run_completes(tmp_path):
  """One `--configs atari debug` run, killed and restarted at several moments (issue 12):
  SIGKILL in prefill; SIGTERM while tracing the first update (clean abort, exit 143 within
  20 s); a second run on the logdir in use (refused, naming the PID); SIGKILL while a checkpoint
  is written; SIGKILL during an evaluation; SIGKILL while an episode is written; then the run
  completes with every episode loading and none stored twice."""
  from test_train import latest_checkpoint
  logdir = tmp_path / 'run'
  steps = 1200
  args = ['--configs', 'atari', 'debug', '--logdir', str(logdir), f'--steps={steps}',
          '--eval_every=400', '--progress_every_s=1']
  history = []
  # 1. SIGKILL during prefill, after the first episode is on disk.
  run = Proc(args)
  run.wait_for('Prefill [####################')
  run.kill()
  first = _check_restart(logdir, history)
  assert len(first) == 1 and latest_checkpoint(logdir)[0] is None
  # 2. SIGTERM while the first update traces: a clean abort, no checkpoint.
  run = Proc(args)
  run.wait_for('First update: building variables and tracing the train step')
  time.sleep(2)
  sent = time.time()
  run.proc.send_signal(signal.SIGTERM)
  assert run.finish(timeout=60) == 128 + signal.SIGTERM, run.out[-3000:]
  assert time.time() - sent < 20, time.time() - sent
  assert 'Stopped by SIGTERM during the first update' in run.out
  assert 'First update (' not in run.out and latest_checkpoint(logdir)[0] is None
  _check_restart(logdir, history)
  # 3. SIGKILL while the first checkpoint is written; meanwhile a second run is refused.
  run = Proc(args, hooks='checkpoint')
  run.wait_for('HOOK checkpoint')
  second = subprocess.run([sys.executable, 'train.py', *args], cwd=REPO, env=tool_env(),
                          capture_output=True, text=True, timeout=120)
  assert second.returncode == 2 and f'in use by another run (pid {run.proc.pid} host ' in \
      second.stderr, second.stderr[-2000:]
  run.kill()
  assert list((logdir / 'checkpoints').glob('ckpt-*.index'))  # written, never named
  assert latest_checkpoint(logdir)[0] is None
  _check_restart(logdir, history)
  # 4. SIGKILL in the middle of the second evaluation (the stale lock is taken over).
  run = Proc(args, hooks='eval')
  run.wait_for('HOOK eval')
  assert 'Took over the lock' in run.out
  run.kill()
  _check_restart(logdir, history)
  assert history[-1] > 0  # the evaluation at training start wrote a checkpoint
  # 5. SIGKILL while an episode file is being written.
  run = Proc(args, hooks='episode')
  run.wait_for('HOOK episode')
  run.kill()
  assert list(logdir.glob('*_episodes/.tmp-*'))  # the unfinished file, never loaded
  before = _check_restart(logdir, history)
  # 6. The run completes.
  run = Proc(args)
  assert run.finish(timeout=600) == 0, run.out[-3000:]
  after = _check_restart(logdir, history)
  assert set(before) <= set(after)  # nothing lost
  path, values = latest_checkpoint(logdir)
  assert values['step'] == steps and f'Finished at agent step {steps:,}' in run.out
  assert '[progress] train: agent step' in run.out  # a resumed run prints progress too
  assert (logdir / '.lock').read_text() == ''
