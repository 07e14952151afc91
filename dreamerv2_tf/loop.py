"""The training loop of SPEC.md §6: prefill → pretrain → act/train/evaluate/log/checkpoint.

Units: every count in the config (`steps`, `prefill`, `train_every`, `eval_every`, `log_every`)
is in AGENT steps (one policy decision; a transition with `is_first` False). Every logged `step`
is in FRAMES = agent steps × `action_repeat`.

Order of a run in `<logdir>`:
1. Refuse a logdir whose `config.yaml` names another task or action repeat (`check_logdir`);
   print device, precision, spaces, replay contents.
2. Restore the newest readable checkpoint if there is one (agent, step counter, RNG states,
   loop counters; a newer unreadable one is renamed aside with a warning); otherwise the step
   counter starts at the agent steps already stored on disk. A checkpoint that does not fit
   the config stops the run with the logdir's `config.yaml` unchanged. Only once the
   checkpoint fits (or there is none) is `<logdir>/config.yaml` written (a different previous
   one is kept as `config.yaml.previous-<UTC time>`). Metrics lines newer than the restored
   step are moved aside (`Logger.rewind`).
3. Prefill with a uniform random policy until the train replay holds `prefill` agent steps
   (counting episodes already on disk) and at least one episode, and the eval replay one
   episode. Prefill steps count towards `steps`.
4. If the agent has never been updated: the first update (creates the variables) and `pretrain`
   more; then print the parameter table.
5. Evaluate (actor's mode, separate environment, `eval_eps` episodes) when training starts and
   then every `eval_every` agent steps, each evaluation followed by a checkpoint. Act with the
   agent's training policy; every `train_every` agent steps do `train_steps` updates; every
   `log_every` agent steps, counted from the start of training, write the interval's mean
   training metrics, rates, the mean return of the training episodes finished in it (prefill
   episodes excluded) and an open-loop video; stop at `steps`.
6. On finishing, SIGINT (Ctrl-C) or SIGTERM: save a checkpoint and return. A second Ctrl-C
   aborts at once without one. SIGKILL loses what happened after the last checkpoint, except
   finished episodes, which are files on disk and reload.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import pathlib
import random
import signal
import sys
import threading
import time
from typing import Any, Mapping

import numpy as np

from dreamerv2_tf.config import Config, ConfigError
from dreamerv2_tf.driver import Driver, RandomPolicy
from dreamerv2_tf import logger as logger_lib


class Every:
  """Fires on the first call, then whenever `step` reached `last + every` (agent steps).

  `every <= 0` never fires. After a jump of several periods it fires once and moves `last` to the
  latest period boundary, so a resumed or vectorised run does not fire in a burst. `start(step)`
  begins the first period at `step` without firing.
  """

  def __init__(self, every: int):
    self.every = int(every)
    self.last: int | None = None

  def start(self, step: int) -> None:
    """Starts counting at `step` (no fire now, the next at `step + every`), unless already
    started (e.g. restored from a checkpoint)."""
    if self.last is None:
      self.last = int(step)

  def __call__(self, step: int) -> bool:
    if self.every <= 0:
      return False
    if self.last is None:
      self.last = int(step)
      return True
    if step >= self.last + self.every:
      self.last += (int(step) - self.last) // self.every * self.every
      return True
    return False


class Mean:
  """Averages scalar metrics over a log interval: add(dict of scalars), then result()."""

  def __init__(self):
    self._sums: dict[str, float] = {}
    self._counts: dict[str, int] = {}

  def add(self, metrics: Mapping[str, Any]) -> None:
    for key, value in metrics.items():
      value = np.asarray(value.numpy() if hasattr(value, 'numpy') else value, np.float64)
      if value.size != 1:
        continue
      self._sums[key] = self._sums.get(key, 0.0) + float(value.reshape(()))
      self._counts[key] = self._counts.get(key, 0) + 1

  def result(self, reset: bool = True) -> dict[str, float]:
    out = {k: self._sums[k] / self._counts[k] for k in self._sums}
    if reset:
      self._sums.clear()
      self._counts.clear()
    return out


class StopRequest:
  """Turns SIGINT/SIGTERM into a flag the loop checks between environment steps.

  The first signal sets `signum` and prints what happens next; a second SIGINT raises
  KeyboardInterrupt immediately (no checkpoint). Handlers are installed only in the main thread.
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}

  def __bool__(self) -> bool:
    return self.signum is not None

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    name = signal.Signals(signum).name
    print(f'\nReceived {name}: stopping after the current step and saving a checkpoint '
          '(press Ctrl-C again to abort without one).', flush=True)

  def install(self) -> 'StopRequest':
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGINT, signal.SIGTERM):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def uninstall(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()


class Progress:
  """A progress line for prefill: rewritten in place on a terminal, else a line per 10% (or
  every 30 s)."""

  def __init__(self, total: int, start: int, frames_per_step: int, stream=None):
    self.total = max(int(total), 1)
    self.start = int(start)
    self.frames_per_step = frames_per_step
    self.stream = stream or sys.stdout
    self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
    self.begin = self.last_print = time.time()
    self.last_fraction = -1.0
    self.last_done = None

  def update(self, done: int, collected: int, force: bool = False) -> None:
    now = time.time()
    fraction = min(done / self.total, 1.0)
    if self.tty:
      due = now - self.last_print >= 0.2
    else:
      due = int(fraction * 10) > int(self.last_fraction * 10) or now - self.last_print >= 30
    if not (due or force) or done == self.last_done:
      return
    self.last_done = done
    rate = collected / max(now - self.begin, 1e-9)
    width = 30
    bar = '#' * int(fraction * width) + '-' * (width - int(fraction * width))
    line = (f'Prefill [{bar}] {done:,}/{self.total:,} agent steps on disk '
            f'({rate:,.0f} agent steps/s, {rate * self.frames_per_step:,.0f} frames/s)')
    if self.tty:
      print('\r' + line, end='', file=self.stream, flush=True)
    else:
      print(line, file=self.stream, flush=True)
    self.last_print = now
    self.last_fraction = fraction

  def close(self) -> None:
    if self.tty:
      print(file=self.stream, flush=True)


@dataclasses.dataclass
class RunResult:
  """What `run` did. `steps` in agent steps, `frames` = steps × action_repeat."""
  steps: int
  frames: int
  updates: int
  checkpoint: str | None
  signal: int | None  # the signal that stopped the run early, or None when `steps` was reached


def setup_device(precision: int) -> tuple[str, str]:
  """Chooses the Keras dtype policy: mixed float16 only with `precision: 16` AND a GPU,
  else float32 (SPEC.md §5). Returns (device description, precision description).

  Raises:
    ConfigError: when precision is not 16 or 32.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import keras  # pylint: disable=import-outside-toplevel
  if precision not in (16, 32):
    raise ConfigError(f"Config key 'precision' must be 16 or 32, got {precision!r}.")
  gpus = tf.config.list_physical_devices('GPU')
  if gpus:
    names = []
    for gpu in gpus:
      try:
        names.append(tf.config.experimental.get_device_details(gpu).get('device_name', gpu.name))
      except (ValueError, RuntimeError):
        names.append(gpu.name)
    device = f'{len(gpus)} GPU(s): {", ".join(names)}'
  else:
    device = f'CPU ({os.cpu_count()} cores, no GPU found)'
  if precision == 16 and gpus:
    keras.mixed_precision.set_global_policy('mixed_float16')
    described = 'mixed float16 (float32 variables, dynamic loss scaling)'
  else:
    keras.mixed_precision.set_global_policy('float32')
    described = 'float32' + (' (precision: 16 needs a GPU)' if precision == 16 else '')
  return device, described


def format_param_table(counts: Mapping[str, int]) -> str:
  """Start-up table of trainable parameters per module."""
  width = max([len('module')] + [len(k) for k in counts])
  lines = ['Trainable parameters:', f'  {"module":<{width}}  {"parameters":>12}']
  lines += [f'  {name:<{width}}  {int(count):>12,}' for name, count in counts.items()]
  return '\n'.join(lines)


def save_config(config: Config, logdir: pathlib.Path) -> None:
  """Writes `<logdir>/config.yaml`; a different existing one is first renamed to
  `config.yaml.previous-<UTC time>` and the changed keys are printed."""
  path = logdir / 'config.yaml'
  if path.exists():
    from dreamerv2_tf.config import read_blocks  # pylint: disable=import-outside-toplevel
    try:
      old = Config(read_blocks(path) or {})
    except Exception:  # pylint: disable=broad-except
      old = None
    if old is None or old.to_dict() != config.to_dict():
      changed = []
      if old is not None:
        missing = object()
        get = lambda c, k: c[k] if k in c else missing  # pylint: disable=unnecessary-lambda-assignment
        keys = sorted(set(old.flat_keys()) | set(config.flat_keys()))
        changed = [k for k in keys if get(old, k) != get(config, k)]
      stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%SZ')
      backup = path.with_name(f'config.yaml.previous-{stamp}')
      os.replace(path, backup)
      print(f'Config differs from the previous run in this logdir '
            f'({", ".join(changed) or "unreadable"}); kept the old one as {backup.name}.')
  config.save(path)


def run(config: Config, logdir: str | os.PathLike, stop: StopRequest | None = None) -> RunResult:
  """Trains the agent of `config` on `config.task`, logging to and resuming from `logdir`.

  Args:
    config: the full config (`load_config`); step-like keys are in agent steps.
    logdir: run directory (episodes, checkpoints, metrics.jsonl, TensorBoard events).
    stop: a StopRequest; by default one is created and installed for SIGINT/SIGTERM.

  Returns:
    RunResult (agent steps, frames, updates, last checkpoint, stopping signal or None).

  Raises:
    ConfigError / ValueError: a bad config value or unknown task (from the env factory).
  """
  logdir = pathlib.Path(logdir).expanduser()
  check_logdir(config, logdir)
  with contextlib.ExitStack() as cleanup:
    if stop is None:
      stop = StopRequest().install()
      cleanup.callback(stop.uninstall)
    return _run(config, logdir, stop, cleanup)


def check_logdir(config: Config, logdir: pathlib.Path) -> None:
  """Refuses to continue a run of another task or action repeat in `logdir`: its replay,
  metrics and checkpoints would mix with this one's.

  Reads `<logdir>/config.yaml` if there is one (an unreadable one is left to `save_config`,
  which keeps it aside).

  Raises:
    ConfigError: naming both values and suggesting a new --logdir.
  """
  from dreamerv2_tf.config import read_blocks  # pylint: disable=import-outside-toplevel
  path = logdir / 'config.yaml'
  if not path.is_file():
    return
  try:
    old = read_blocks(path)
  except ConfigError:
    return
  for key in ('task', 'action_repeat'):
    if key in old and old[key] != config[key]:
      raise ConfigError(
          f'{logdir} holds a run with {key} {old[key]!r} (see {path}); this run has {key} '
          f'{config[key]!r}, and its replay and metrics would mix with that one\'s. Start a '
          f'new --logdir, or resume with {key} {old[key]!r}.')


def _run(config: Config, logdir: pathlib.Path, stop: StopRequest,
         cleanup: contextlib.ExitStack) -> RunResult:
  """`run`'s body; environments and logs are closed by `cleanup` whatever happens."""
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  from dreamerv2_tf import envs
  from dreamerv2_tf.agent import Agent
  from dreamerv2_tf.checkpoint import (Checkpointer, CheckpointError, HostState, MAX_TO_KEEP,
                                       is_complete)
  from dreamerv2_tf.replay import Replay

  logdir.mkdir(parents=True, exist_ok=True)
  repeat = int(config.action_repeat)
  total_steps = int(config.steps)
  prefill = int(config.prefill)

  device, precision = setup_device(int(config.precision))
  tf.config.run_functions_eagerly(not config.jit)
  random.seed(config.seed)
  np.random.seed(config.seed % 2**32)
  tf.random.set_seed(config.seed)
  tf.random.set_global_generator(tf.random.Generator.from_seed(config.seed))
  print(f'Logdir: {logdir}')
  print(f'Task: {config.task}, action repeat {repeat}; device: {device}; precision: {precision}'
        f'{"" if config.jit else "; tf.function disabled (jit: false)"}')

  train_replay = Replay(logdir / 'train_episodes', int(config.replay.capacity),
                        int(config.replay.minlen), config.seed)
  eval_replay = Replay(logdir / 'eval_episodes', int(config.replay.capacity),
                       int(config.replay.minlen), config.seed + 1)
  print(f'Replay on disk: {train_replay.num_episodes} train episodes '
        f'({stored_agent_steps(train_replay):,} agent steps), {eval_replay.num_episodes} eval '
        'episodes.')
  # The envs derive their seeds from (run seed, mode, index). A fresh run uses config.seed; a
  # restarted one with episodes on disk a seed derived from it and the episode counts, so it
  # does not collect the same episodes again.
  run_seed = config.seed
  if train_replay.total_episodes or eval_replay.total_episodes:
    run_seed = int(np.random.SeedSequence([config.seed % 2**32, train_replay.total_episodes,
                                           eval_replay.total_episodes]).generate_state(1)[0])
  policy_seed = int(np.random.SeedSequence([run_seed % 2**32, 2]).generate_state(1)[0])
  train_env = envs.make_vec_env(config.task, config, 'train', int(config.envs), run_seed)
  cleanup.callback(train_env.close)
  eval_env = envs.make_vec_env(config.task, config, 'eval', int(config.envs), run_seed)
  cleanup.callback(eval_env.close)
  image_shape, image_dtype = train_env.obs_space['image']
  act_space = train_env.act_space
  print(f'Observations: image {tuple(image_shape)} {np.dtype(image_dtype).name}; actions: '
        f'{act_space.size} {"discrete" if act_space.discrete else "continuous in [-1, 1]"}; '
        f'{int(config.envs)} env(s) per mode.')

  step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name='agent_step')
  agent = Agent(config, train_env.obs_space, train_env.act_space, step_var)
  should_train = Every(config.train_every)
  should_log = Every(config.log_every)
  should_eval = Every(config.eval_every)
  schedules = {'should_train': should_train, 'should_log': should_log, 'should_eval': should_eval}

  def get_extra():
    return {name: every.last for name, every in schedules.items()}

  def set_extra(extra):
    for name, every in schedules.items():
      every.last = extra.get(name)

  prefill_rng = np.random.default_rng(policy_seed)
  host = HostState({'prefill_policy': prefill_rng}, get_extra, set_extra)
  checkpointer = Checkpointer(logdir / 'checkpoints', step_var, agent=agent,
                              tf_rng=tf.random.get_global_generator(), host=host)
  print(f'Checkpoints: {checkpointer.directory} (the manager keeps the latest {MAX_TO_KEEP}, '
        'deleting older ones).')

  def does_not_fit(error, path):
    first_line = str(error).splitlines()[0] if str(error) else ''
    return ConfigError(
        f'The checkpoint {path} does not fit this config ({type(error).__name__}: '
        f'{first_line}); {_config_difference(config, logdir)}resume with the config saved in '
        f'{logdir / "config.yaml"} or start a new --logdir.')

  try:
    status = checkpointer.restore_readable(lambda line: print(line, flush=True))
  except CheckpointError as e:
    raise ConfigError(str(e)) from None
  except (AssertionError, ValueError, IndexError, tf.errors.OpError) as e:
    raise does_not_fit(e, checkpointer.latest) from e
  restored_path = checkpointer.latest if status is not None else None
  # Values of variables not built yet (Keras builds lazily, optimiser slots appear on the first
  # update) wait in TF's deferred restoration; until they are built a save would lose them.
  pending = {'restore': status is not None and not is_complete(status), 'config': False}

  def commit_config():
    """Writes config.yaml once the checkpoint is known to fit (or there is none)."""
    if not pending['config']:
      save_config(config, logdir)
      pending['config'] = True

  if not pending['restore']:
    commit_config()
  logger = logger_lib.Logger([
      logger_lib.TerminalOutput(),
      logger_lib.JSONLOutput(logdir / 'metrics.jsonl'),
      logger_lib.TensorBoardOutput(logdir),
  ])
  cleanup.callback(logger.close)
  if status is not None:
    print(f'Resumed from {checkpointer.latest}: agent step {int(step_var.numpy()):,} '
          f'(frame {int(step_var.numpy()) * repeat:,}), {int(agent.updates.numpy()):,} updates.')
  else:
    step_var.assign(stored_agent_steps(train_replay))
  step = int(step_var.numpy())
  moved, aside = logger.rewind(step * repeat)
  if moved:
    print(f'Moved {moved} metrics.jsonl lines recorded after this checkpoint to {aside.name}.')

  printed_params = False
  try:
    printed_params = _print_params(agent)
  except Exception:  # pylint: disable=broad-except
    pass  # variables not built yet: printed after the first update

  # ---- state shared by the callbacks (agent steps) ----
  state = {'step': step, 'phase': 'prefill', 'train_scores': [], 'eval_scores': [],
           'last_eval_return': None}
  interval = {'time': time.time(), 'step': step, 'updates': 0, 'update_time': 0.0}
  train_metrics = Mean()
  datasets: dict[str, Any] = {}

  def next_batch(name, replay):
    # Built on first use: the replay holds enough episodes only after prefill.
    if name not in datasets:
      datasets[name] = iter(replay.dataset(
          int(config.dataset.batch), int(config.dataset.length),
          bool(config.replay.prioritize_ends), int(config.dataset.prefetch)))
    return next(datasets[name])

  train_batch = lambda: next_batch('train', train_replay)
  eval_batch = lambda: next_batch('eval', eval_replay)

  def train_update():
    step_var.assign(state['step'])
    start = time.time()
    metrics = agent.train(train_batch())
    train_metrics.add(metrics)  # .numpy() waits for the update to finish
    interval['update_time'] += time.time() - start
    interval['updates'] += 1

  def report_videos(batch_fn, prefix):
    report = agent.report(batch_fn())
    videos, scalars = {}, {}
    for key, value in report.items():
      value = value.numpy() if hasattr(value, 'numpy') else np.asarray(value)
      if value.ndim >= 3:
        videos[f'{prefix}_{key}'] = value
      elif value.size == 1:
        scalars[f'{prefix}_{key}'] = float(value)
    return videos, scalars

  def write_interval():
    now = time.time()
    seconds = max(now - interval['time'], 1e-9)
    steps = state['step'] - interval['step']
    scalars = train_metrics.result()
    scalars.update({
        'fps': steps * repeat / seconds,
        'env_steps_per_sec': steps / seconds,
        'updates_per_sec': interval['updates'] / seconds,
        'update_seconds': interval['update_time'] / max(interval['updates'], 1),
        'updates': int(agent.updates.numpy()),
        'replay_steps': stored_agent_steps(train_replay),
        'replay_episodes': train_replay.num_episodes,
    })
    videos, report_scalars = report_videos(train_batch, 'train')
    scalars.update(report_scalars)
    terminal = dict(scalars)
    if state['train_scores']:
      terminal['train_return'] = float(np.mean(state['train_scores']))
    if state['last_eval_return'] is not None:
      terminal['eval_return'] = state['last_eval_return']
    state['train_scores'] = []
    logger.write(state['step'] * repeat, scalars, videos, terminal=terminal)
    interval.update(time=time.time(), step=state['step'], updates=0, update_time=0.0)

  def save_checkpoint():
    if pending['restore']:
      print('No new checkpoint: the agent has not been rebuilt since resuming; '
            f'{checkpointer.latest} stays the latest.', flush=True)
      return checkpointer.latest
    step_var.assign(state['step'])
    return checkpointer.save(key=(state['step'], int(agent.updates.numpy())))

  def evaluate():
    eval_driver.reset()
    state['eval_scores'] = []
    eval_driver(eval_policy, episodes=int(config.eval_eps), stop=lambda: bool(stop))
    if state['eval_scores']:
      mean = float(np.mean(state['eval_scores']))
      state['last_eval_return'] = mean
      summary = {'eval_return': mean, 'eval_episodes': len(state['eval_scores'])}
      videos = {}
      if eval_replay.num_episodes:
        try:
          videos, report_scalars = report_videos(eval_batch, 'eval')
          summary.update(report_scalars)
        except ValueError as e:  # no stored eval episode as long as a training sequence
          print(f'No eval video: {e}', flush=True)
      logger.write(state['step'] * repeat, {}, videos, terminal=summary)

  def on_train_step(transition, worker):
    train_replay.add_step(transition, worker)
    if transition['is_first']:
      return
    state['step'] += 1
    if state['phase'] != 'train':
      return
    if should_train(state['step']):
      for _ in range(int(config.train_steps)):
        train_update()
    if should_log(state['step']):
      write_interval()
    if should_eval(state['step']):
      evaluate()
      save_checkpoint()

  def on_train_episode(stats, worker):
    del worker
    if state['phase'] == 'train':  # the interval's train_return counts training episodes only
      state['train_scores'].append(stats['return'])
    logger.write(state['step'] * repeat, _episode_scalars('train', stats), terminal=False)

  def on_eval_episode(stats, worker):
    del worker
    if state['phase'] == 'prefill':  # the random eval episode only fills the eval replay
      return
    state['eval_scores'].append(stats['return'])
    logger.write(state['step'] * repeat, _episode_scalars('eval', stats), terminal=False)

  train_driver = Driver(train_env, [on_train_step], [on_train_episode])
  eval_driver = Driver(eval_env, [lambda tran, worker: eval_replay.add_step(tran, worker)],
                       [on_eval_episode])
  train_policy = agent_policy(agent, 'train')
  eval_policy = agent_policy(agent, 'eval')
  random_policy = RandomPolicy(train_env.act_space, prefill_rng)

  # ---- prefill ----
  def prefilled():
    return stored_agent_steps(train_replay) >= prefill and train_replay.num_episodes >= 1

  if not prefilled():
    print(f'Prefill with a uniform random policy: {prefill:,} agent steps and one finished '
          f'episode ({stored_agent_steps(train_replay):,} agent steps on disk).')
    progress = Progress(prefill, stored_agent_steps(train_replay), repeat)
    start_step = state['step']

    def prefill_stop():
      progress.update(stored_agent_steps(train_replay), state['step'] - start_step)
      return bool(stop) or prefilled()

    train_driver(random_policy, stop=prefill_stop)
    progress.update(stored_agent_steps(train_replay), state['step'] - start_step, force=True)
    progress.close()
  if not stop and eval_replay.num_episodes < 1:
    eval_driver(random_policy, episodes=1, stop=lambda: bool(stop))
  interrupted = bool(stop)

  # ---- first update and pretraining ----
  if not interrupted and int(agent.updates.numpy()) > 0 and pending['restore']:
    # Resumed: one update builds every variable (consuming the deferred values), then the
    # checkpoint is restored again over all of them, undoing that update.
    start = time.time()
    try:
      agent.train(train_batch())
      status = checkpointer.restore(restored_path)
    except (AssertionError, ValueError, IndexError, tf.errors.OpError) as e:
      raise does_not_fit(e, restored_path) from e
    if not is_complete(status):
      print('Warning: some checkpoint values match no variable of this agent '
            '(was it saved by a different version or config?).', flush=True)
    pending['restore'] = False
    commit_config()
    print(f'Rebuilt the agent and restored {restored_path} again '
          f'({time.time() - start:.1f} s).', flush=True)
  if not interrupted and int(agent.updates.numpy()) == 0:
    start = time.time()
    try:
      train_update()
    except (AssertionError, ValueError, IndexError, tf.errors.OpError) as e:
      if not pending['restore']:
        raise
      raise does_not_fit(e, restored_path) from e
    pending['restore'] = False
    commit_config()
    print(f'First update (builds variables, traces the train step): '
          f'{time.time() - start:.1f} s.', flush=True)
    if not printed_params:
      printed_params = _print_params(agent)
    start = time.time()
    for _ in range(int(config.pretrain)):
      if stop:
        break
      train_update()
    if config.pretrain:
      print(f'Pretraining: {int(config.pretrain)} updates in {time.time() - start:.1f} s.',
            flush=True)
  interrupted = bool(stop)

  # ---- training ----
  if not interrupted:
    state['phase'] = 'train'
    if should_eval(state['step']):
      evaluate()
      save_checkpoint()
    if not printed_params:
      printed_params = _print_params(agent)
    # The first log interval starts here, with its rates (first update, pretraining and the
    # first evaluation are timed above); its metrics include those of the pretraining updates.
    should_log.start(state['step'])
    interval.update(time=time.time(), step=state['step'], updates=0, update_time=0.0)
    if state['step'] < total_steps:
      train_driver(train_policy, stop=lambda: bool(stop) or state['step'] >= total_steps)
  path = save_checkpoint()
  how = f'Stopped by {signal.Signals(stop.signum).name}' if stop else 'Finished'
  print(f'{how} at agent step {state["step"]:,} (frame {state["step"] * repeat:,}), '
        f'{int(agent.updates.numpy()):,} updates; checkpoint {path}.', flush=True)
  return RunResult(state['step'], state['step'] * repeat, int(agent.updates.numpy()), path,
                   stop.signum)


def _config_difference(config: Config, logdir: pathlib.Path) -> str:
  """'config.yaml differs in: a, b; ' for the keys where the logdir's saved config differs from
  `config` (logdir excluded), or '' when there is none or it cannot be read."""
  from dreamerv2_tf.config import read_blocks  # pylint: disable=import-outside-toplevel
  try:
    old = Config(read_blocks(logdir / 'config.yaml'))
  except (ConfigError, OSError):
    return ''
  missing = object()
  get = lambda c, k: c[k] if k in c else missing  # pylint: disable=unnecessary-lambda-assignment
  keys = sorted(set(old.flat_keys()) | set(config.flat_keys()))
  changed = [k for k in keys if k != 'logdir' and get(old, k) != get(config, k)]
  return f'{logdir / "config.yaml"} differs in: {", ".join(changed)}; ' if changed else ''


def stored_agent_steps(replay: Any) -> int:
  """Agent steps in the episodes a Replay has taken in, files loaded at start included.

  The Replay counts transitions (an episode of L agent steps has L + 1, its reset row included);
  its eviction from memory does not reduce this count.
  """
  return int(replay.total_steps) - int(replay.total_episodes)


def _episode_scalars(mode: str, stats: Mapping[str, float]) -> dict[str, float]:
  """{'train_return': R, 'train_length': L agent steps, 'train_log_*': sums} for one episode."""
  out = {f'{mode}_return': stats['return'], f'{mode}_length': stats['length']}
  out.update({f'{mode}_{k}': v for k, v in stats.items() if k.startswith('log_')})
  return out


def agent_policy(agent: Any, mode: str):
  """Adapts `agent.policy` to the driver: numpy in, numpy float32 actions [N, A] out."""
  def policy(obs, state):
    if state is None:
      state = agent.initial_state(len(obs['is_first']))
    outputs, state = agent.policy(obs, state, mode)
    return np.asarray(outputs['action'], np.float32), state
  return policy


def _print_params(agent: Any) -> bool:
  counts = agent.param_counts()
  if not counts or not any(counts.values()):
    return False
  print(format_param_table(counts), flush=True)
  return True
