"""The training Runner: one object that owns a run's parts, one method per phase (docs/reference.md §6).

    Runner(config, logdir, stop=None, make_env=None).run() -> RunResult

Phases, in order (`run`): `open` (logdir lock, device, replays, envs, agent, checkpoint
restore, logger), `prefill`, `pretrain` (the first update and `pretrain` more), `train`
(`on_train_step` for every transition: `train_step` updates every `train_every` agent steps,
`log` every `log_every`, `evaluate` + `checkpoint` every `eval_every`), then `checkpoint` and
`close`. See loop.py's docstring for the behaviour a user sees; units: every config count is in
agent steps, every logged step in frames (agent steps × action_repeat).

What a checkpoint holds is listed in one place, `_make_checkpointer`.

Faults (issue 12): a second run on the logdir fails at once (`lock.LogdirLock`); a non-finite
loss or gradient norm stops training with `faults.NonFiniteError` before any checkpoint is
written from those weights; an environment that raises is rebuilt and its unfinished episodes
dropped, counted in `env_failures`, until `env_max_failures` in a row raise
`faults.EnvFailureError`; a checkpoint write that fails raises `faults.CheckpointWriteError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import signal
import sys
import time
from typing import Any, Callable, Mapping

import numpy as np

from dreamerv2_tf import device as device_lib
from dreamerv2_tf import distribute
from dreamerv2_tf import faults
from dreamerv2_tf import logger as logger_lib
from dreamerv2_tf import progress as progress_lib
from dreamerv2_tf import rundir
from dreamerv2_tf.config import Config, ConfigError
from dreamerv2_tf.counters import Every, Mean
from dreamerv2_tf.driver import Driver, RandomPolicy
from dreamerv2_tf.lock import LogdirLock
from dreamerv2_tf.signals import Abandoned, StopRequest, Worker

# A policy video holds at most this many frames (the first ones of the episode): a 27,000-step
# Atari episode would otherwise make a 100 MB GIF in the event file.
MAX_VIDEO_FRAMES = 1000


@dataclasses.dataclass
class RunResult:
  """What `run` did. `steps` in agent steps, `frames` = steps × action_repeat."""
  steps: int
  frames: int
  updates: int
  checkpoint: str | None
  signal: int | None  # the signal that stopped the run early, or None when `steps` was reached
  aborted: bool = False  # stopped during the first update: no checkpoint written


@dataclasses.dataclass
class Interval:
  """The current log interval: when and at which agent step it began, its updates."""
  time: float = 0.0
  step: int = 0
  updates: int = 0
  update_time: float = 0.0

  def restart(self, step: int) -> None:
    self.time, self.step, self.updates, self.update_time = time.time(), step, 0, 0.0


def stored_agent_steps(replay: Any) -> int:
  """Agent steps in the episodes a Replay has taken in, files loaded at start included.

  The Replay counts transitions (an episode of L agent steps has L + 1, its reset row included);
  its eviction from memory does not reduce this count.
  """
  return int(replay.total_steps) - int(replay.total_episodes)


def format_param_table(counts: Mapping[str, int]) -> str:
  """Start-up table of trainable parameters per module."""
  width = max([len('module')] + [len(k) for k in counts])
  lines = ['Trainable parameters:', f'  {"module":<{width}}  {"parameters":>12}']
  lines += [f'  {name:<{width}}  {int(count):>12,}' for name, count in counts.items()]
  return '\n'.join(lines)


def prefill_warning(steps: int, prefill: int) -> str | None:
  """The start-up warning for `steps` < `prefill` (agent steps; prefill counts towards steps),
  or None."""
  if steps >= prefill:
    return None
  return (f'Warning: steps ({steps:,}) is smaller than prefill ({prefill:,}); prefill counts '
          f'towards steps, so this run stops after {steps:,} random agent steps and at most a '
          'few updates.')


def episode_scalars(mode: str, stats: Mapping[str, float]) -> dict[str, float]:
  """{'train_return': R, 'train_length': L agent steps, 'train_log_*': sums} for one episode."""
  out = {f'{mode}_return': stats['return'], f'{mode}_length': stats['length']}
  out.update({f'{mode}_{k}': v for k, v in stats.items() if k.startswith('log_')})
  return out


def agent_policy(agent: Any, mode: str, step: Callable[[], int] | None = None):
  """Adapts `agent.policy` to the driver: numpy in, numpy float32 actions [N, A] out.

  `step()` (optional) gives the current agent step, which decides `expl_until` (the agent's own
  step variable is only brought up to date at updates and checkpoints).

  Raises:
    faults.NonFiniteError: the agent refused to act on a non-finite latent or actor output
      (its FloatingPointError), e.g. from NaN weights.
  """
  def policy(obs, state):
    if state is None:
      state = agent.initial_state(len(obs['is_first']))
    try:
      kwargs = {} if step is None else {'step': step()}
      outputs, state = agent.policy(obs, state, mode, **kwargs)
    except FloatingPointError as e:
      updates = int(agent.updates.numpy())
      raise faults.NonFiniteError(
          f'The {mode} policy refused to act after update {updates:,}: '
          f'{" ".join(str(e).split())}', updates, {}) from e
    return np.asarray(outputs['action'], np.float32), state
  return policy


def _fit_errors():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return (AssertionError, ValueError, IndexError, tf.errors.OpError)


class Runner:
  """Trains the agent of `config` on `config.task` in `logdir` (see the module docstring).

  Args:
    config: the full config (`load_config`); step-like keys are in agent steps.
    logdir: run directory (episodes, checkpoints, metrics.jsonl, progress.log, TensorBoard).
    stop: a StopRequest; by default one is created and installed for SIGINT/SIGTERM by `run`.
    make_env: zero-argument factory of a gymnasium Env to train on instead of `config.task`
      (passed to `envs.make_vec_env(..., env_fn=make_env)`), or None.
  """

  def __init__(self, config: Config, logdir: str | os.PathLike, stop: StopRequest | None = None,
               make_env: Callable[[], Any] | None = None):
    self.config = config
    self.logdir = pathlib.Path(logdir).expanduser()
    self.stop = stop
    self._own_stop = stop is None
    self.make_env = make_env
    self.repeat = int(config.action_repeat)
    self.total_steps = int(config.steps)
    self.prefill_steps = int(config.prefill)
    self.eval_eps = int(config.eval_eps)
    # Counters across phases (agent steps).
    self.step = 0
    self.phase = 'setup'  # then 'prefill', 'pretrain', 'train'
    self.activity = 'setup'  # what the progress line names
    self.train_scores: list[float] = []
    self.eval_scores: list[float] = []
    self.last_eval_return: float | None = None
    self.eval_video_due = False
    self.interval = Interval()
    self.train_metrics = Mean()
    self.should_train = Every(config.train_every)
    self.should_log = Every(config.log_every)
    self.should_eval = Every(config.eval_every)
    self.should_video_train = Every(config.eval_every)
    # Restore bookkeeping: values of variables not built yet (Keras builds lazily, optimiser
    # slots appear on the first update) wait in TF's deferred restoration; until they are
    # built a save would lose them, and config.yaml is written only once they fit.
    self.restored_path: str | None = None
    self.restore_pending = False
    self.config_saved = False
    self.printed_params = False
    self._datasets: dict[str, Any] = {}
    self._stack = contextlib.ExitStack()
    self.worker: Worker | None = None

  # ------------------------------------------------------------------ the whole run

  def run(self) -> RunResult:
    """All phases; environments, logs and the lock are released whatever happens.

    Raises:
      ConfigError: a logdir of another task, a checkpoint that does not fit, a logdir in use.
      faults.RunError: non-finite values, failing environments, a failed checkpoint write.
    """
    rundir.check_logdir(self.config, self.logdir)
    with self._stack:
      self._stack.callback(self.close)
      if self.stop is None:
        self.stop = StopRequest().install()
        self._stack.callback(self.stop.uninstall)
      self.open()
      try:
        self.prefill()
        self.pretrain()
      except Abandoned:
        return self._aborted()
      self.train()
      path = self.checkpoint()
      how = f'Stopped by {signal.Signals(self.stop.signum).name}' if self.stop else 'Finished'
      updates = self.updates
      print(f'{how} at agent step {self.step:,} (frame {self.step * self.repeat:,}), '
            f'{updates:,} updates; checkpoint {path}.', flush=True)
      return RunResult(self.step, self.step * self.repeat, updates, path, self.stop.signum)

  @property
  def updates(self) -> int:
    return int(self.agent.updates.numpy())

  def _aborted(self) -> RunResult:
    """A signal during the first update: nothing saved; exits the process at once when this
    Runner installed the signal handlers (the abandoned update cannot be stopped)."""
    signum = self.stop.signum
    again = self.restored_path or 'the episodes on disk'
    print(f'Stopped by {signal.Signals(signum).name} during the first update (building and '
          'tracing the train step): no checkpoint written; running the same command again '
          f'starts from {again}.', flush=True)
    if self._own_stop and self.worker is not None and self.worker.busy:
      self._stack.close()
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(128 + signum)  # pylint: disable=protected-access
    return RunResult(self.step, self.step * self.repeat, 0, None, signum, aborted=True)

  def close(self) -> None:
    """Closes envs, logger, progress log and worker thread; releases the logdir lock. (The
    tf.data pipelines are freed with the Runner: deleting their iterators waits for their
    prefetch threads, seconds that a finished run need not spend before exiting.)"""
    for driver, env in ((getattr(self, 'train_driver', None), getattr(self, 'train_env', None)),
                        (getattr(self, 'eval_driver', None), getattr(self, 'eval_env', None))):
      env = driver.env if driver is not None else env  # a rebuilt env replaces the first one
      if env is not None:
        with contextlib.suppress(Exception):
          env.close()
    for name in ('logger', 'progress_output'):
      if getattr(self, name, None) is not None:
        getattr(self, name).close()
    if self.worker is not None:
      self.worker.close()
    if getattr(self, 'lock', None) is not None:
      self.lock.release()

  # ------------------------------------------------------------------ set-up

  def open(self) -> None:
    """Lock, device, replays, envs, agent, checkpoint, logger: everything `prefill` needs."""
    self.logdir.mkdir(parents=True, exist_ok=True)
    self.lock = LogdirLock(self.logdir).acquire(lambda line: print(line, flush=True))
    device, precision = device_lib.setup(self.config.precision, int(self.config.seed),
                                         bool(self.config.jit), str(self.config.strategy),
                                         int(self.config.cpu_devices))
    print(f'Logdir: {self.logdir}')
    print(f'Task: {self.config.task}, action repeat {self.repeat}; device: {device}; '
          f'precision: {precision}'
          f'{"" if self.config.jit else "; tf.function disabled (jit: false)"}')
    warning = prefill_warning(self.total_steps, self.prefill_steps)
    if warning:
      print(warning, flush=True)
    self._open_replays()
    self._open_envs()
    self._open_agent()
    self._restore()
    self._open_logs()

  def _open_replays(self) -> None:
    from dreamerv2_tf.replay import Replay  # pylint: disable=import-outside-toplevel
    replay = self.config.replay
    self.train_replay = Replay(self.logdir / 'train_episodes', int(replay.capacity),
                               int(replay.minlen), self.config.seed)
    # The eval replay only feeds the eval open-loop video: a tenth of the capacity, as the
    # authors' train.py gives it.
    self.eval_replay = Replay(self.logdir / 'eval_episodes', max(int(replay.capacity) // 10, 1),
                              int(replay.minlen), self.config.seed + 1)
    print(f'Replay on disk: {self.train_replay.num_episodes} train episodes '
          f'({stored_agent_steps(self.train_replay):,} agent steps), '
          f'{self.eval_replay.num_episodes} eval episodes.')
    # The envs derive their seeds from (run seed, mode, index). A fresh run uses config.seed;
    # a restarted one with episodes on disk a seed derived from it and the episode counts, so
    # it does not collect the same episodes again.
    seed = self.config.seed
    counts = (self.train_replay.total_episodes, self.eval_replay.total_episodes)
    self.run_seed = seed if not any(counts) else int(
        np.random.SeedSequence([seed % 2**32, *counts]).generate_state(1)[0])

  def _make_vec_env(self, mode: str, num: int, rebuilds: int = 0):
    """The `mode` env of this run; `rebuilds` > 0 (after a failure) gets fresh seeds."""
    from dreamerv2_tf import envs  # pylint: disable=import-outside-toplevel
    seed = self.run_seed if not rebuilds else int(np.random.SeedSequence(
        [self.run_seed % 2**32, 3, rebuilds]).generate_state(1)[0])
    if self.make_env is None:
      return envs.make_vec_env(self.config.task, self.config, mode, num, seed)
    return envs.make_vec_env(self.config.task, self.config, mode, num, seed,
                             env_fn=self.make_env)

  def _open_envs(self) -> None:
    """Train env (`envs` workers) and eval env (min(envs, eval_eps) workers) with drivers
    that rebuild a failing env (`env_max_failures` in a row stop the run)."""
    max_failures = int(self.config.env_max_failures)
    nums = {'train': int(self.config.envs), 'eval': min(int(self.config.envs), self.eval_eps)}
    self.train_env = self._make_vec_env('train', nums['train'])
    self.eval_env = self._make_vec_env('eval', nums['eval'])
    self.env_failures = 0

    def rebuilder(mode):
      def rebuild():
        return self._make_vec_env(mode, nums[mode], self.env_failures)
      return rebuild

    self.train_driver = Driver(
        self.train_env, [self.on_train_step], [self.on_train_episode],
        rebuild=rebuilder('train'), max_failures=max_failures,
        on_failure=[self._on_env_failure('train')], name='train')
    self.eval_driver = Driver(
        self.eval_env, [self.on_eval_step], [self.on_eval_episode],
        rebuild=rebuilder('eval'), max_failures=max_failures,
        on_failure=[self._on_env_failure('eval')], name='eval')
    fields = ('reward', 'is_first', 'is_last', 'is_terminal', 'action')
    observed = ', '.join(
        f'{key} {tuple(shape)} {np.dtype(dtype).name}'
        for key, (shape, dtype) in self.train_env.obs_space.items()
        if key not in fields and not key.startswith('log_'))
    act = self.train_env.act_space
    print(f'Observations: {observed}; actions: '
          f'{act.size} {"discrete" if act.discrete else "continuous in [-1, 1]"}; '
          f'{nums["train"]} train env(s), {nums["eval"]} eval env(s).')

  def _on_env_failure(self, mode: str):
    def report(error, in_row):
      self.env_failures += 1
      text = ' '.join(str(error).split())[:300]
      print(f'Warning: the {mode} environment failed ({type(error).__name__}: {text}); '
            f'dropped its unfinished episode(s) and rebuilt it (failure {in_row} in a row; '
            f'the run stops at {int(self.config.env_max_failures)}).', flush=True)
    return report

  def _open_agent(self) -> None:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import keras  # pylint: disable=import-outside-toplevel
    from dreamerv2_tf.agent import Agent  # pylint: disable=import-outside-toplevel
    self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name='agent_step')
    self.strategy = distribute.current()  # acting stays on one device (distribute.py)
    self.agent = Agent(self.config, self.train_env.obs_space, self.train_env.act_space,
                       self.step_var, scope=self.strategy.scope())
    self.train_fn = distribute.train_fn(self.strategy, self.agent, bool(self.config.jit))
    self.mixed = keras.mixed_precision.global_policy().name == 'mixed_float16'
    policy = keras.mixed_precision.global_policy().name
    self.worker = Worker(setup=lambda: keras.mixed_precision.set_global_policy(policy))
    self.train_policy = agent_policy(self.agent, 'train', lambda: self.step)
    self.eval_policy = agent_policy(self.agent, 'eval')
    policy_seed = int(np.random.SeedSequence([self.run_seed % 2**32, 2]).generate_state(1)[0])
    self.prefill_rng = np.random.default_rng(policy_seed)
    self.random_policy = RandomPolicy(self.train_env.act_space, self.prefill_rng)
    self.checkpointer = self._make_checkpointer()

  def _make_checkpointer(self):
    """What a checkpoint holds, the one place it is listed (checkpoint.py has the format):
    `step` (agent steps), `agent` (weights, optimisers, `updates`), `tf_rng` (TF's global
    Generator) and `host`: Python's and numpy's global RNG states, the prefill policy's
    Generator, and the schedules' last firing steps (`_schedules`). Not in it: the episodes
    (files on disk), the environments' state, the log interval's partial means."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from dreamerv2_tf.checkpoint import Checkpointer, HostState, MAX_TO_KEEP  # pylint: disable=import-outside-toplevel

    def get_extra():
      return {name: every.last for name, every in self._schedules().items()}

    def set_extra(extra):
      for name, every in self._schedules().items():
        every.last = extra.get(name)

    host = HostState({'prefill_policy': self.prefill_rng}, get_extra, set_extra)
    checkpointer = Checkpointer(self.logdir / 'checkpoints', self.step_var, agent=self.agent,
                                tf_rng=tf.random.get_global_generator(), host=host)
    print(f'Checkpoints: {checkpointer.directory} (the manager keeps the latest '
          f'{MAX_TO_KEEP}, deleting older ones).')
    return checkpointer

  def _schedules(self) -> dict[str, Every]:
    return {'should_train': self.should_train, 'should_log': self.should_log,
            'should_eval': self.should_eval, 'should_video_train': self.should_video_train}

  def _does_not_fit(self, error: Exception, path: str | None) -> ConfigError:
    first_line = str(error).splitlines()[0] if str(error) else ''
    return ConfigError(
        f'The checkpoint {path} does not fit this config ({type(error).__name__}: '
        f'{first_line}); {rundir.config_difference(self.config, self.logdir)}resume with the '
        f'config saved in {self.logdir / "config.yaml"} or start a new --logdir.')

  def _restore(self) -> None:
    """Restores the newest readable checkpoint (or counts the agent steps on disk)."""
    from dreamerv2_tf.checkpoint import CheckpointError, is_complete  # pylint: disable=import-outside-toplevel
    try:
      status = self.checkpointer.restore_readable(lambda line: print(line, flush=True))
    except CheckpointError as e:
      raise ConfigError(str(e)) from None
    except _fit_errors() as e:
      raise self._does_not_fit(e, self.checkpointer.latest) from e
    if status is None:
      self.step_var.assign(stored_agent_steps(self.train_replay))
    else:
      self.restored_path = self.checkpointer.latest
      self.restore_pending = not is_complete(status)
      print(f'Resumed from {self.restored_path}: agent step {int(self.step_var.numpy()):,} '
            f'(frame {int(self.step_var.numpy()) * self.repeat:,}), {self.updates:,} updates.')
    self.step = int(self.step_var.numpy())
    if not self.restore_pending:
      self._save_config()

  def _save_config(self) -> None:
    """Writes config.yaml once the checkpoint is known to fit (or there is none)."""
    if not self.config_saved:
      rundir.save_config(self.config, self.logdir)
      self.config_saved = True

  def _open_logs(self) -> None:
    self.logger = logger_lib.Logger([
        logger_lib.TerminalOutput(),
        logger_lib.JSONLOutput(self.logdir / 'metrics.jsonl'),
        logger_lib.TensorBoardOutput(self.logdir),
    ])
    self.progress_output = progress_lib.ProgressOutput(self.logdir / 'progress.log')
    self.heartbeat = progress_lib.Heartbeat(float(self.config.progress_every_s),
                                            self.total_steps, self.repeat, self.progress_output)
    moved, aside = self.logger.rewind(self.step * self.repeat)
    if moved:
      print(f'Moved {moved} metrics.jsonl lines recorded after this checkpoint to '
            f'{aside.name}.')
    with contextlib.suppress(Exception):  # variables not built yet: printed after an update
      self._print_params()

  def _print_params(self) -> None:
    if not self.printed_params:
      counts = self.agent.param_counts()
      if counts and any(counts.values()):
        print(format_param_table(counts), flush=True)
        self.printed_params = True

  # ------------------------------------------------------------------ prefill

  def prefilled(self) -> bool:
    return (stored_agent_steps(self.train_replay) >= self.prefill_steps
            and self.train_replay.num_episodes >= 1)

  def prefill(self) -> None:
    """Random policy until the train replay holds `prefill` agent steps and one episode, and
    the eval replay one episode (prefill steps count towards `steps`)."""
    self.phase = 'prefill'
    if not self.prefilled():
      print(f'Prefill with a uniform random policy: {self.prefill_steps:,} agent steps and one '
            f'finished episode ({stored_agent_steps(self.train_replay):,} agent steps on disk).')
      bar = progress_lib.PrefillProgress(self.prefill_steps, self.repeat, self.progress_output)
      start = self.step

      def done():
        bar.update(stored_agent_steps(self.train_replay), self.step - start)
        return bool(self.stop) or self.prefilled()

      self.train_driver(self.random_policy, stop=done)
      bar.update(stored_agent_steps(self.train_replay), self.step - start, force=True)
      bar.close()
    if not self.stop and self.eval_replay.num_episodes < 1:
      self.eval_driver(self.random_policy, episodes=1, stop=lambda: bool(self.stop))

  # ------------------------------------------------------------------ updates

  def next_batch(self, name: str, update: bool = False) -> dict:
    """The next training batch of the `name` ('train' or 'eval') replay; the tf.data
    pipeline is built on first use (the replay holds enough episodes only after prefill).
    `update`: a batch for `train_fn` (split across replicas under a strategy)."""
    key = 'update' if update and not distribute.is_default(self.strategy) else name
    if key not in self._datasets:
      replay = self.train_replay if name == 'train' else self.eval_replay
      data = self.config.dataset
      make = lambda batch: replay.dataset(  # pylint: disable=unnecessary-lambda-assignment
          batch, int(data.length), bool(self.config.replay.prioritize_ends), int(data.prefetch))
      self._datasets[key] = iter(distribute.dataset(self.strategy, make, int(data.batch))
                                 if key == 'update' else make(int(data.batch)))
    return next(self._datasets[key])

  def update(self, abandon_on_stop: bool = False) -> None:
    """One update on a train batch, in the worker thread (signals stay responsive); checks
    that its losses and gradient norms are finite (`faults.check_finite`).

    Raises:
      Abandoned: with `abandon_on_stop`, a signal arrived before the update finished.
      faults.NonFiniteError: a non-finite loss or gradient norm (nothing saved after it).
    """
    self.step_var.assign(self.step)
    start = time.time()
    batch = self.next_batch('train', update=True)
    metrics = self.worker.call(lambda: self.train_fn(batch), lambda: bool(self.stop),
                               abandon_on_stop, on_wait=self.beat)
    metrics = {k: v.numpy() if hasattr(v, 'numpy') else v for k, v in metrics.items()}
    faults.check_finite(metrics, self.updates, self.mixed)
    self.train_metrics.add(metrics)
    self.interval.update_time += time.time() - start
    self.interval.updates += 1
    self.beat()

  def beat(self, force: bool = False) -> None:
    """The heartbeat line, when due (see progress.Heartbeat); `activity` names the phase."""
    training = self.phase == 'train'
    self.heartbeat(self.activity, self.step, self.updates,
                   self.should_log.next(self.step) if training else None,
                   self.should_eval.next(self.step) if training else None, force)

  def pretrain(self) -> None:
    """The first update (builds every variable, traces the train step) and `pretrain` more,
    unless the agent was updated before (then one update rebuilds it for the restore)."""
    if self.stop:
      return
    self.phase = 'pretrain'
    if self.updates > 0 and self.restore_pending:
      self.activity = 'rebuilding the restored agent (one update, tracing the train step)'
      self._rebuild_restored()
    if self.updates > 0:
      return
    self.activity = 'first update (building variables, tracing the train step)'
    print('First update: building variables and tracing the train step...', flush=True)
    start = time.time()
    try:
      self.update(abandon_on_stop=True)
    except _fit_errors() as e:
      if not self.restore_pending:
        raise
      raise self._does_not_fit(e, self.restored_path) from e
    self.restore_pending = False
    self._save_config()
    print(f'First update (builds variables, traces the train step): '
          f'{time.time() - start:.1f} s.', flush=True)
    self._print_params()
    start, total, done = time.time(), int(self.config.pretrain), 0
    for done in range(total):
      if self.stop:
        break
      self.activity = f'pretraining (update {done + 1} of {total})'
      self.update()
    else:
      done = total
    if total:
      print(f'Pretraining: {done} of {total} updates in {time.time() - start:.1f} s.',
            flush=True)

  def _rebuild_restored(self) -> None:
    """Resumed: one update builds every variable (consuming the deferred values), then the
    checkpoint is restored again over all of them, undoing that update."""
    from dreamerv2_tf.checkpoint import is_complete  # pylint: disable=import-outside-toplevel
    start = time.time()
    try:
      batch = self.next_batch('train', update=True)
      self.worker.call(lambda: self.train_fn(batch), lambda: bool(self.stop), True,
                       on_wait=self.beat)
      status = self.checkpointer.restore(self.restored_path)
    except _fit_errors() as e:
      raise self._does_not_fit(e, self.restored_path) from e
    if not is_complete(status):
      print('Warning: some checkpoint values match no variable of this agent '
            '(was it saved by a different version or config?).', flush=True)
    self.restore_pending = False
    self._save_config()
    print(f'Rebuilt the agent and restored {self.restored_path} again '
          f'({time.time() - start:.1f} s).', flush=True)

  # ------------------------------------------------------------------ training

  def train(self) -> None:
    """Evaluates at the start, then acts with the training policy until `steps`."""
    if self.stop:
      return
    self.phase = self.activity = 'train'
    if self.should_eval(self.step):
      self.evaluate()
      self.checkpoint()
    self._print_params()
    # The first log interval starts here, with its rates (first update, pretraining and the
    # first evaluation are timed above); its metrics include those of the pretraining updates.
    self.should_log.start(self.step)
    self.interval.restart(self.step)
    self.heartbeat.start(self.step, self.updates)
    self.beat(force=True)
    if self.step < self.total_steps:
      self.train_driver(self.train_policy,
                        stop=lambda: bool(self.stop) or self.step >= self.total_steps)

  def on_train_step(self, transition: Mapping[str, Any], worker: int) -> None:
    """Driver callback for every train transition: store it, count it, then `train_step`."""
    episode = self.train_replay.add_step(transition, worker)
    if transition['is_first']:
      return
    self.step += 1
    if self.phase != 'train':
      return
    if episode is not None and self.should_video_train(self.step):
      self._policy_video('train', episode)
    self.train_step()

  def train_step(self) -> None:
    """After one training agent step: updates, log, evaluation + checkpoint when due."""
    if self.should_train(self.step):
      for _ in range(int(self.config.train_steps)):
        self.update()
    if self.should_log(self.step):
      self.log()
    if self.should_eval(self.step):
      self.evaluate()
      self.checkpoint()
    self.beat()

  def on_train_episode(self, stats: Mapping[str, float], worker: int) -> None:
    del worker
    if self.phase == 'train':  # the interval's train_return counts training episodes only
      self.train_scores.append(stats['return'])
    self.logger.write(self.step * self.repeat, episode_scalars('train', stats), terminal=False)

  def _policy_video(self, mode: str, episode: Mapping[str, np.ndarray]) -> None:
    """`<mode>_policy_image`: the episode's observed frames, uint8 [T, H, W, C]."""
    if 'image' not in episode:  # vector observations only: nothing to show
      return
    frames = np.asarray(episode['image'])[:MAX_VIDEO_FRAMES]
    self.logger.write(self.step * self.repeat, {}, {f'{mode}_policy_image': frames},
                      terminal=False)

  # ------------------------------------------------------------------ log, evaluate, save

  def _report(self, name: str) -> tuple[dict, dict]:
    """Open-loop videos and report scalars on a batch of the `name` replay."""
    report = self.agent.report(self.next_batch(name))
    videos, scalars = {}, {}
    for key, value in report.items():
      value = value.numpy() if hasattr(value, 'numpy') else np.asarray(value)
      if value.ndim >= 3:
        videos[f'{name}_{key}'] = value
      elif value.size == 1:
        scalars[f'{name}_{key}'] = float(value)
    return videos, scalars

  def log(self) -> None:
    """The log interval's mean training metrics, rates, open-loop video and returns."""
    seconds = max(time.time() - self.interval.time, 1e-9)
    steps = self.step - self.interval.step
    scalars = self.train_metrics.result()
    scalars.update({
        'fps': steps * self.repeat / seconds,
        'env_steps_per_sec': steps / seconds,
        'updates_per_sec': self.interval.updates / seconds,
        'update_seconds': self.interval.update_time / max(self.interval.updates, 1),
        'updates': self.updates,
        'replay_steps': stored_agent_steps(self.train_replay),
        'replay_episodes': self.train_replay.num_episodes,
        'env_failures': self.env_failures,
    })
    videos, report_scalars = self._report('train')
    scalars.update(report_scalars)
    terminal = dict(scalars)
    if self.train_scores:
      terminal['train_return'] = float(np.mean(self.train_scores))
    if self.last_eval_return is not None:
      terminal['eval_return'] = self.last_eval_return
    self.train_scores = []
    self.logger.write(self.step * self.repeat, scalars, videos, terminal=terminal)
    self.interval.restart(self.step)

  def evaluate(self) -> None:
    """`eval_eps` episodes with the actor's mode in the eval env (more finished at once are
    stored but not scored); logs their mean return, an open-loop video and a policy video."""
    self.eval_driver.reset()
    self.eval_scores = []
    self.eval_video_due = True
    self.activity = f'evaluation ({self.eval_eps} episode(s))'
    self.eval_driver(self.eval_policy, episodes=self.eval_eps, stop=lambda: bool(self.stop))
    self.activity = 'train'
    if not self.eval_scores:
      return
    mean = float(np.mean(self.eval_scores))
    self.last_eval_return = mean
    summary = {'eval_return': mean, 'eval_episodes': len(self.eval_scores)}
    videos = {}
    if self.eval_replay.num_episodes:
      try:
        videos, report_scalars = self._report('eval')
        summary.update(report_scalars)
      except ValueError as e:  # no stored eval episode as long as a training sequence
        print(f'No eval video: {e}', flush=True)
    self.logger.write(self.step * self.repeat, {}, videos, terminal=summary)

  def on_eval_step(self, transition: Mapping[str, Any], worker: int) -> None:
    episode = self.eval_replay.add_step(transition, worker)
    if self.phase != 'train':
      return
    if episode is not None and self.eval_video_due:
      self.eval_video_due = False
      self._policy_video('eval', episode)
    self.beat()

  def on_eval_episode(self, stats: Mapping[str, float], worker: int) -> None:
    del worker
    if self.phase == 'prefill' or len(self.eval_scores) >= self.eval_eps:
      return  # the random eval episode only fills the eval replay; extras are not scored
    self.eval_scores.append(stats['return'])
    self.logger.write(self.step * self.repeat, episode_scalars('eval', stats), terminal=False)

  def checkpoint(self) -> str | None:
    """Saves a checkpoint at the current agent step (nothing new while a restore is pending
    or when nothing changed since the last save). Returns its path prefix.

    Raises:
      faults.CheckpointWriteError: the write failed (see Checkpointer.save).
    """
    if self.restore_pending:
      print('No new checkpoint: the agent has not been rebuilt since resuming; '
            f'{self.checkpointer.latest} stays the latest.', flush=True)
      return self.checkpointer.latest
    self.step_var.assign(self.step)
    return self.checkpointer.save(key=(self.step, self.updates))
