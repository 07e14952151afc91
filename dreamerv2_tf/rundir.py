"""The run directory's config: refuse another task's logdir, save `config.yaml`, name changes.

Used by the training Runner before anything else is written to `<logdir>`.
"""

from __future__ import annotations

import datetime
import os
import pathlib

from dreamerv2_tf.config import Config, ConfigError, read_blocks


def check_logdir(config: Config, logdir: pathlib.Path) -> None:
  """Refuses to continue a run of another task or action repeat in `logdir`: its replay,
  metrics and checkpoints would mix with this one's.

  Reads `<logdir>/config.yaml` if there is one (an unreadable one is left to `save_config`,
  which keeps it aside).

  Raises:
    ConfigError: naming both values and suggesting a new --logdir.
  """
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


def changed_keys(old: Config, new: Config, ignore: tuple[str, ...] = ()) -> list[str]:
  """Dotted keys whose values differ between two configs (present in one only included)."""
  missing = object()
  get = lambda c, k: c[k] if k in c else missing  # pylint: disable=unnecessary-lambda-assignment
  keys = sorted(set(old.flat_keys()) | set(new.flat_keys()))
  return [k for k in keys if k not in ignore and get(old, k) != get(new, k)]


def save_config(config: Config, logdir: pathlib.Path) -> None:
  """Writes `<logdir>/config.yaml`; a different existing one is first renamed to
  `config.yaml.previous-<UTC time>` and the changed keys are printed."""
  path = logdir / 'config.yaml'
  if path.exists():
    try:
      old = Config(read_blocks(path) or {})
    except Exception:  # pylint: disable=broad-except
      old = None
    if old is None or old.to_dict() != config.to_dict():
      changed = changed_keys(old, config) if old is not None else []
      stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%SZ')
      backup = path.with_name(f'config.yaml.previous-{stamp}')
      os.replace(path, backup)
      print(f'Config differs from the previous run in this logdir '
            f'({", ".join(changed) or "unreadable"}); kept the old one as {backup.name}.')
  config.save(path)


def config_difference(config: Config, logdir: pathlib.Path) -> str:
  """'config.yaml differs in: a, b; ' for the keys where the logdir's saved config differs from
  `config` (logdir excluded), or '' when there is none or it cannot be read."""
  try:
    old = Config(read_blocks(logdir / 'config.yaml'))
  except (ConfigError, OSError):
    return ''
  changed = changed_keys(old, config, ignore=('logdir',))
  return f'{logdir / "config.yaml"} differs in: {", ".join(changed)}; ' if changed else ''
