"""Trains DreamerV2 (SPEC.md §6).

Usage:
  python train.py --configs atari --task atari_pong [--logdir DIR] [--<dotted.key>=VALUE ...]

  --configs   overlays from configs.yaml applied in order over `defaults`, space- or
              comma-separated: `--configs atari debug` or `--configs=atari,debug`.
  --task      e.g. atari_pong, atari_james_bond, dmc_walker_walk (default: the config's `task`).
  --logdir    run directory (default: the config's `logdir`, else logdir/<task>). Running the same
              command again resumes from its latest checkpoint.
  --KEY=VALUE any config key by its dotted name, typed like its default, e.g. --rssm.deter=200,
              --steps=1e6, --replay.prioritize_ends=false, --actor_ent='linear(3e-3,1e-3,1e6)'.
              Every step-like key is in agent steps; logged steps are frames.

Errors in the command line and bad config values (`validate.validate`: task names, sizes,
choices, schedules, replay lengths against the time limit) exit with status 2 and a one-line
message before the logdir is created; so do a logdir holding another task's run and a
checkpoint that does not fit the config. Ctrl-C (or SIGTERM) saves
a checkpoint and exits with 128 + the signal number; a second Ctrl-C aborts without one.
"""

from __future__ import annotations

import logging
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging

# No TensorFlow import at module level: the DMC environment's worker process is started with
# `spawn`, which re-imports this module, and TensorFlow must not load in that process.
from dreamerv2_tf.config import Config, ConfigError, load_config, parse_overrides
from dreamerv2_tf.validate import validate

FLAGS = flags.FLAGS
flags.DEFINE_list('configs', [], 'Config overlays from configs.yaml, applied in order.')
flags.DEFINE_string('task', None, 'Task name, e.g. atari_pong or dmc_walker_walk.')
flags.DEFINE_string('logdir', None, 'Run directory (default logdir/<task>).')


def fail(message: str, status: int = 2) -> None:
  """Prints a one-line error to stderr and exits with `status` (no traceback)."""
  # TensorFlow warns at exit about objects of a failed restore; the error line says it all.
  absl_logging.set_verbosity(absl_logging.ERROR)
  logging.getLogger('tensorflow').setLevel(logging.ERROR)
  print(f'train.py: error: {" ".join(str(message).split())}', file=sys.stderr, flush=True)
  sys.exit(status)


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
  """absl's flags parser for this program: parses --configs/--task/--logdir (and absl's own
  flags), returns the remaining `--dotted.key=value` overrides as {key: string}."""
  argv = join_list_flag(list(argv))
  try:
    rest = FLAGS(argv, known_only=True)
  except flags.Error as e:
    fail(e)
  try:
    return parse_overrides(rest[1:])
  except ConfigError as e:
    fail(e)


def build_config(configs: list[str], overrides: dict[str, str], task: str | None,
                 logdir: str | None) -> Config:
  """The final config: overlays, overrides, then --task and --logdir; `logdir` resolved to
  `logdir/<task>` when neither the flag nor the config gives one. Raises ConfigError."""
  overrides = dict(overrides)
  if task is not None:
    overrides['task'] = task
  config = load_config(configs, overrides)
  if logdir is None:
    logdir = config.logdir or str(pathlib.Path('logdir') / config.task)
  return config.update({'logdir': str(pathlib.Path(logdir).expanduser())})


def check_task(config: Config) -> None:
  """Fails fast on an unknown task (suite, Atari game, DMC domain or task) with the env
  factory's message, which lists the valid or closest names, before TensorFlow loads or the
  logdir is created. Raises ValueError."""
  from dreamerv2_tf import envs  # pylint: disable=import-outside-toplevel
  envs.check_task(config.task)


def main(overrides: dict[str, str]) -> int:
  if FLAGS['verbosity'].present == 0:
    absl_logging.set_verbosity(absl_logging.WARNING)  # app.run lowers it to INFO: too chatty
  try:
    config = build_config(FLAGS.configs, overrides, FLAGS.task, FLAGS.logdir)
    check_task(config)
    validate(config, check_task=False)
  except (ConfigError, ValueError) as e:
    fail(e)
  from dreamerv2_tf import loop  # pylint: disable=import-outside-toplevel
  try:
    result = loop.run(config, config.logdir)
  except ConfigError as e:
    fail(e)
  except KeyboardInterrupt:
    fail('aborted by a second Ctrl-C; no checkpoint written for the last steps.', 130)
  return 128 + result.signal if result.signal else 0


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
