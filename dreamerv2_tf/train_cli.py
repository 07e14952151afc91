"""The command line of train.py and `dreamerv2-train` (docs/reference.md §6, the training loop).

Usage:
  train.py [--configs NAME ...] [--task TASK] [--logdir DIR] [--dotted.key=VALUE ...]
  train.py --logdir DIR [--dotted.key=VALUE ...]      (resume a run with its saved config)
  train.py -h | --help

  --configs   overlays of configs.yaml applied in order over `defaults`, space- or
              comma-separated: `--configs atari debug` or `--configs=atari,debug`. Without it, the
              task's suite picks its overlay: atari_* -> atari, dmc_* -> dmc_vision,
              crafter_* -> crafter (said at start).
  --task      e.g. atari_pong, atari_james_bond, dmc_walker_walk (default: the config's `task`).
  --logdir    run directory (default: the config's `logdir`, else logdir/<task>). When it holds a
              run (its config.yaml), that config is the starting point: flags given again
              override it, and each changed key is printed. Running the same command again
              resumes from the latest checkpoint.
  --KEY=VALUE any config key by its dotted name, typed like its default, e.g. --rssm.deter=200,
              --steps=1e6, --replay.prioritize_ends=false, --actor_ent='linear(3e-3,1e-3,1e6)'.
              Every step-like key is in agent steps; logged steps are frames.

Every failure a user can cause ends in one line `<prog>: error: ...` on stderr and exit status 2,
before the logdir is written to: an unknown or mistyped key or value (config.py), a value that
cannot work (validate.py, e.g. kernels that do not fit the image), an unknown task, a logdir that
is a file or not writable, a replay capacity whose full size exceeds the machine's memory
(replay.check_memory), another task's logdir; and, during the run, a write that fails (full
disk). Ctrl-C (or SIGTERM) saves a checkpoint and exits with 128 + the signal number; a second
Ctrl-C aborts without one.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging as absl_logging

# No TensorFlow import at module level: the DMC environment's worker process is started with
# `spawn`, which re-imports the main module, and TensorFlow must not load in that process.
from dreamerv2_tf.config import (
    CONFIGS_PATH, Config, ConfigError, load_config, parse_overrides, read_blocks)
from dreamerv2_tf.validate import validate

FLAGS = flags.FLAGS
flags.DEFINE_list('configs', [], 'Config overlays from configs.yaml, applied in order.')
flags.DEFINE_string('task', None, 'Task name, e.g. atari_pong or dmc_walker_walk.')
flags.DEFINE_string('logdir', None, 'Run directory (default logdir/<task>).')

# The overlay a task's suite uses when no --configs is given.
SUITE_OVERLAYS = {'atari': 'atari', 'dmc': 'dmc_vision', 'crafter': 'crafter'}
# Keys listed by --help, in this order.
MAIN_KEYS = ('task', 'logdir', 'seed', 'steps', 'prefill', 'pretrain', 'train_every',
             'log_every', 'eval_every', 'eval_eps', 'envs', 'action_repeat', 'time_limit',
             'replay.capacity', 'replay.minlen', 'dataset.batch', 'dataset.length', 'precision',
             'rssm.deter', 'rssm.hidden', 'jit')
NESTED_NOTES = {
    'replay.capacity': 'agent steps held in memory (README "Replay memory")',
    'precision': '32 (float32), 16 (mixed float16 on a GPU) or bf16 (mixed bfloat16)',
    'replay.minlen': 'agent steps; shorter episodes are not stored',
    'dataset.batch': 'sequences per update', 'dataset.length': 'transitions per sequence',
    'rssm.deter': 'GRU state size', 'rssm.hidden': 'hidden units of the RSSM layers'}
HELP_FLAGS = ('-h', '--help', '-help', '--helpfull', '-?')


def prog() -> str:
  return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'train.py'


def fail(message: str, status: int = 2) -> None:
  """Prints a one-line error to stderr and exits with `status` (no traceback)."""
  # TensorFlow warns at exit about objects of a failed restore; the error line says it all.
  absl_logging.set_verbosity(absl_logging.ERROR)
  logging.getLogger('tensorflow').setLevel(logging.ERROR)
  print(f'{prog()}: error: {" ".join(str(message).split())}', file=sys.stderr, flush=True)
  sys.exit(status)


# ----------------------------------------------------------------------------- help

def overlay_descriptions(path: str | os.PathLike = CONFIGS_PATH) -> dict[str, str]:
  """{overlay: first sentence of the comment block just above it in configs.yaml}."""
  descriptions, comment = {}, []
  for line in pathlib.Path(path).read_text().splitlines():
    if line.startswith('#'):
      comment.append(line.lstrip('#').strip())
      continue
    match = re.match(r'^([A-Za-z_][\w-]*):\s*$', line)
    if match and match.group(1) != 'defaults':
      text = ' '.join(comment)
      sentence = re.split(r'(?<=[.;:])\s', text, maxsplit=1)[0].rstrip('.;:') if text else ''
      if len(sentence) > 96:
        sentence = sentence[:93].rsplit(' ', 1)[0] + ' ...'
      descriptions[match.group(1)] = sentence or '(no description in configs.yaml)'
    if line.strip() == '' or match:
      comment = []
    elif not line.startswith(' '):
      comment = []
  return descriptions


def key_comments(path: str | os.PathLike = CONFIGS_PATH) -> dict[str, str]:
  """{top-level key of `defaults`: its inline comment in configs.yaml}."""
  comments, inside = {}, False
  for line in pathlib.Path(path).read_text().splitlines():
    if re.match(r'^\S', line):
      inside = line.startswith('defaults:')
      continue
    match = re.match(r'^  (\w+):.*?#\s*(.+)$', line) if inside else None
    if match:
      comments[match.group(1)] = match.group(2).strip()
  return comments


def usage() -> str:
  """The --help text: usage, the overlays with one line each, the main keys with defaults."""
  text = __doc__.split('Usage:', 1)[1].split('\n\nEvery failure')[0]
  lines = [f'{prog()}: trains DreamerV2 (Hafner et al., ICLR 2021).', '', 'Usage:' + text, '',
           'Overlays (configs.yaml; --configs NAME ...):']
  names = overlay_descriptions()
  width = max(map(len, names), default=0)
  lines += [f'  {name:<{width}}  {desc}' for name, desc in names.items()]
  defaults = load_config([])
  comments = {**key_comments(), **NESTED_NOTES}
  lines += ['', 'Main keys (default value; every key of configs.yaml works as --dotted.key=VALUE):']
  shown = [(f'--{key}={defaults[key]}', comments.get(key, '')) for key in MAIN_KEYS
           if key in defaults]
  width = max(len(flag) for flag, _ in shown)
  lines += [f'  {flag:<{width}}  {note}'.rstrip() for flag, note in shown]
  lines += ['', 'Errors exit with status 2 and one line on stderr; see README "Training".']
  return '\n'.join(lines)


# ----------------------------------------------------------------------------- flags

def join_list_flag(argv: list[str], name: str = 'configs') -> list[str]:
  """Rewrites `--configs a b` (space-separated, as in the authors' command line) into
  `--configs=a,b` for absl, which reads only comma-separated lists."""
  out, i = [], 0
  while i < len(argv):
    arg = argv[i]
    if arg in (f'--{name}', f'-{name}'):
      values, i = [], i + 1
      while i < len(argv) and not argv[i].startswith('-'):
        values.append(argv[i])
        i += 1
      out.append(f'--{name}={",".join(values)}')
    else:
      out.append(arg)
      i += 1
  return out


def parse_flags(argv: list[str]) -> dict[str, str]:
  """absl's flags parser for this program: `-h`/`--help` print `usage()` and exit 0; parses
  --configs/--task/--logdir (and absl's own flags), returns the remaining `--dotted.key=value`
  overrides as {key: string}."""
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    print(usage())
    sys.exit(0)
  argv = join_list_flag(list(argv))
  try:
    rest = FLAGS(argv, known_only=True)
  except flags.Error as e:
    fail(e)
  try:
    return parse_overrides(rest[1:])
  except ConfigError as e:
    fail(e)


# ----------------------------------------------------------------------------- config

def suite_overlay(task: str) -> str | None:
  """The overlay of a task's suite (SUITE_OVERLAYS), or None for other suites."""
  return SUITE_OVERLAYS.get(str(task).split('_', 1)[0])


def default_logdir(config: Config, logdir: str | None) -> pathlib.Path:
  return pathlib.Path(logdir or config.logdir or pathlib.Path('logdir') / config.task).expanduser()


def build_config(configs: list[str], overrides: dict[str, str], task: str | None,
                 logdir: str | None, notes: list[str] | None = None) -> Config:
  """The final config, `logdir` resolved (flag, else the config's, else logdir/<task>).

  A new run: `defaults`, the overlays `configs` (when empty, the task's suite overlay), the
  overrides, then --task. A logdir holding a run (its config.yaml): that config, then the
  overlays and overrides given. `notes` receives the lines to print at start (the overlay chosen,
  each key changed against the saved config). Raises ConfigError.
  """
  notes = [] if notes is None else notes
  overrides = dict(overrides)
  if task is not None:
    overrides['task'] = task
  names = list(configs)
  if not names:
    chosen = suite_overlay(overrides.get('task') or load_config([])['task'])
    names = [chosen] if chosen else []
  config = load_config(names, overrides)
  path = default_logdir(config, logdir)
  saved = path / 'config.yaml'
  if saved.is_file():
    return _resume(saved, configs, overrides, notes)
  if names and not configs:
    notes.append(f"Task {config.task}: using the '{names[0]}' overlay of configs.yaml (give "
                 '--configs to choose others).')
  return config.update({'logdir': str(path)})


def _resume(saved: pathlib.Path, configs: list[str], overrides: dict[str, str],
            notes: list[str]) -> Config:
  """The run's saved config with the overlays and overrides given again; notes each change."""
  from dreamerv2_tf.rundir import changed_keys  # pylint: disable=import-outside-toplevel
  defaults = load_config([])
  try:
    data = read_blocks(saved)
  except ConfigError as e:  # a run of defaults on this logdir would be another task's run
    raise ConfigError(f'{e}; the run in {saved.parent} cannot resume without it: repair it, '
                      f'or move it aside and give the run\'s --configs and --task again.') from e
  stored = Config(data)
  known = {k: stored[k] for k in stored.flat_keys() if k in defaults}
  dropped = sorted(set(stored.flat_keys()) - set(known))
  if dropped:
    notes.append(f'{saved} has keys this version does not know, ignored: {", ".join(dropped)}.')
  old = defaults.update(known)
  blocks = read_blocks()
  config = old
  for name in configs:
    if name not in blocks:
      valid = ', '.join(k for k in blocks if k != 'defaults')
      raise ConfigError(f"Unknown config overlay '{name}'. Valid overlays: {valid}.")
    config = config.update(blocks[name] or {})
  config = config.update(overrides).update({'logdir': str(saved.parent)})
  changed = changed_keys(old, config, ignore=('logdir',))
  notes.append(f'Resuming {saved.parent} with its {saved.name}' +
               (f'; changed by the command line: ' if changed else ' (no key changed).'))
  notes += [f'  {key}: {old[key]!r} -> {config[key]!r}' for key in changed]
  return config


# ----------------------------------------------------------------------------- checks

def check_logdir(logdir: str | os.PathLike) -> None:
  """Refuses a logdir that is a file, lies inside a file, or cannot be written (it and its
  existing sub-folders are probed with an unnamed temporary file: nothing is left behind).

  Raises:
    ConfigError: one line naming the path and the problem.
  """
  path = pathlib.Path(logdir)
  if path.exists() and not path.is_dir():
    raise ConfigError(f'--logdir {path} is a file, not a folder; give a folder for the run '
                      '(it is created if missing).')
  existing = path
  while not existing.exists() and existing != existing.parent:
    existing = existing.parent
  if not existing.is_dir():
    raise ConfigError(f'--logdir {path} cannot be created: {existing} is a file.')
  folders = [existing] + ([p for p in sorted(path.iterdir()) if p.is_dir()]
                          if existing == path else [])
  for folder in folders:
    try:
      with tempfile.TemporaryFile(dir=folder):
        pass
    except OSError as e:
      raise ConfigError(f'--logdir {path} is not writable: {folder}: {e.strerror or e}. Give a '
                        'writable --logdir (checkpoints, episodes and metrics go there).') from None


IMAGE_CHANNELS = {'atari': None, 'dmc': 3, 'crafter': 3}
ACTION_SIZES = {'atari': 18, 'dmc': 38, 'crafter': 17}  # upper bounds (floats per step)


def estimated_bytes_per_step(config: Config) -> int | None:
  """Bytes one stored agent step takes in the replay for the image suites: the uint8 image
  (render_size x channels; Atari grayscale 1), the one-hot or continuous action (float32, the
  suite's largest), reward and three flags. None for other suites (checked once episodes
  arrive)."""
  suite = str(config.task).split('_', 1)[0]
  if suite not in IMAGE_CHANNELS:
    return None
  channels = IMAGE_CHANNELS[suite] or (1 if config.atari_grayscale else 3)
  height, width = (int(s) for s in config.render_size)
  return height * width * channels + 4 * ACTION_SIZES[suite] + 4 + 3


def check_memory(config: Config) -> str | None:
  """Refuses (MemoryError) a replay whose full size, min(replay.capacity, steps) agent steps,
  exceeds the machine's memory; returns a warning line when it exceeds what is available now."""
  from dreamerv2_tf import replay  # pylint: disable=import-outside-toplevel
  per_step = estimated_bytes_per_step(config)
  if per_step is None:
    return None
  capacity = min(int(config.replay.capacity), int(config.steps))
  return replay.check_memory(per_step, capacity, int(config.replay.minlen))


def check_task(config: Config) -> None:
  """Fails fast on an unknown task (suite, Atari game, DMC domain or task) with the env
  factory's message, which lists the valid or closest names, before TensorFlow loads or the
  logdir is created. Raises ValueError."""
  from dreamerv2_tf import envs  # pylint: disable=import-outside-toplevel
  envs.check_task(config.task)


# ----------------------------------------------------------------------------- main

def prepare(overrides: dict[str, str]) -> Config:
  """Builds and checks the config from the flags, prints the start notes; fails in one line."""
  notes: list[str] = []
  try:
    config = build_config(FLAGS.configs, overrides, FLAGS.task, FLAGS.logdir, notes)
    check_task(config)
    validate(config, check_task=False)
    check_logdir(config.logdir)
    warning = check_memory(config)
  except (ConfigError, ValueError, MemoryError) as e:
    fail(e)
  for note in notes:
    print(note, flush=True)
  if warning:
    print(f'{prog()}: warning: {warning}', file=sys.stderr, flush=True)
  return config


def main(overrides: dict[str, str]) -> int:
  if FLAGS['verbosity'].present == 0:
    absl_logging.set_verbosity(absl_logging.WARNING)  # app.run lowers it to INFO: too chatty
  config = prepare(overrides)
  from dreamerv2_tf import faults, loop  # pylint: disable=import-outside-toplevel
  try:
    result = loop.run(config, config.logdir)
  except (ConfigError, MemoryError) as e:
    fail(e)
  except OSError as e:  # a write that failed: full disk, permissions changed during the run
    fail(e)
  except faults.RunError as e:  # non-finite values, failing envs, a failed checkpoint write
    fail(e, 1)
  except KeyboardInterrupt:
    fail('aborted by a second Ctrl-C; no checkpoint written for the last steps.', 130)
  # Everything is written and closed: exit now rather than wait (up to a minute) for
  # TensorFlow's teardown of datasets and graphs at interpreter exit.
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(128 + result.signal if result.signal else 0)  # pylint: disable=protected-access


def run() -> None:
  """Entry point of train.py and the `dreamerv2-train` console script."""
  app.run(main, flags_parser=parse_flags)
