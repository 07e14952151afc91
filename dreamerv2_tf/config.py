"""Configuration: `configs.yaml` blocks, overlays, dotted overrides, typed and validated.

A config is a nested, read-only mapping with attribute access (`config.rssm.deter`).
`load_config(['atari', 'debug'], ['rssm.deter=200'])` starts from the `defaults` block,
applies each named overlay in order, then each override. Nested dicts in an overlay merge
into the defaults key by key; a dotted key (`model_opt.lr: 2e-4`) sets one leaf.

Every value keeps the type of its default (docs/reference.md §6: every step-like key is in agent
steps). Schedulable keys (`actor_ent`, `actor_grad_mix`) are strings by default and are
parsed by `schedule.py`.

Errors (all `ConfigError`, a `ValueError`): an unknown key (names the closest valid keys),
a value of the wrong type (names the key, the value and the expected type), a value given to
a group of keys (`--rssm=5`: names the group's keys), an unknown overlay name (lists the valid
ones).
"""

from __future__ import annotations

import difflib
import io
import math
import os
import pathlib
import tempfile
from typing import Any, Iterable, Mapping

import ruamel.yaml

# The package's copy: in a checkout a symlink to the top-level configs.yaml, in an installed
# package the file itself (pyproject.toml package data).
CONFIGS_PATH = pathlib.Path(__file__).resolve().parent / 'configs.yaml'


class ConfigError(ValueError):
  """A config key, value or overlay name that is not allowed; the message says what is."""


class Config(Mapping):
  """Read-only nested mapping with attribute access.

  `Config({'a': {'b': 1}}).a.b == 1`; `config['a.b']` also works. `update()` returns a new
  Config; nothing mutates in place.
  """

  def __init__(self, data: Mapping[str, Any] | None = None, **kwargs):
    data = dict(data or {}, **kwargs)
    object.__setattr__(self, '_data', {
        k: Config(v) if isinstance(v, Mapping) and not isinstance(v, Config) else v
        for k, v in data.items()})

  def __getattr__(self, name):
    try:
      return self._data[name]
    except KeyError:
      raise AttributeError(_unknown_message(name, self.flat_keys())) from None

  def __setattr__(self, name, value):
    raise AttributeError('Config is read-only; use config.update({...}).')

  def __getitem__(self, key):
    node = self
    for part in key.split('.'):
      if not isinstance(node, Config) or part not in node._data:
        raise KeyError(_unknown_message(key, self.flat_keys()))
      node = node._data[part]
    return node

  def __contains__(self, key):
    try:
      self[key]
      return True
    except KeyError:
      return False

  def __iter__(self):
    return iter(self._data)

  def __len__(self):
    return len(self._data)

  def __repr__(self):
    return f'Config({self.to_dict()!r})'

  def to_dict(self) -> dict:
    return {k: v.to_dict() if isinstance(v, Config) else v for k, v in self._data.items()}

  def flat_keys(self) -> list[str]:
    """All leaf keys in dotted form, e.g. `['rssm.deter', ...]`."""
    keys = []
    for k, v in self._data.items():
      if isinstance(v, Config):
        keys += [f'{k}.{sub}' for sub in v.flat_keys()]
      else:
        keys.append(k)
    return keys

  def update(self, updates: Mapping[str, Any], check: bool = True) -> 'Config':
    """Returns a copy with `updates` applied (nested dicts merge, dotted keys set leaves).

    With `check`, keys must exist and values are converted to the type of the value they
    replace; raises ConfigError otherwise.
    """
    data = self.to_dict()
    for key, value in _flatten(updates):
      parts = key.split('.')
      node = data
      for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], dict):
          if check:
            raise ConfigError(_unknown_message(key, self.flat_keys()))
          node[part] = {}
        node = node[part]
      leaf = parts[-1]
      if leaf not in node:
        if check:
          raise ConfigError(_unknown_message(key, self.flat_keys()))
        node[leaf] = value
      elif check and isinstance(node[leaf], dict):
        raise ConfigError(_group_message(key, value, node[leaf]))
      else:
        node[leaf] = convert(key, value, node[leaf]) if check else value
    return Config(data)

  def save(self, path: str | os.PathLike) -> None:
    """Writes the config as YAML, atomically (temporary file, then rename)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    yaml = ruamel.yaml.YAML(typ='safe', pure=True)
    yaml.default_flow_style = False
    yaml.dump(self.to_dict(), buf)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix='.tmp-', suffix='.yaml')
    with os.fdopen(fd, 'w') as f:
      f.write(buf.getvalue())
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; the config is meant to be shared.
    os.replace(tmp, path)


def _flatten(mapping: Mapping[str, Any], prefix: str = '') -> Iterable[tuple[str, Any]]:
  for key, value in mapping.items():
    key = f'{prefix}{key}'
    if isinstance(value, Mapping) and value:
      yield from _flatten(value, key + '.')
    else:
      yield key, value


def _unknown_message(key: str, valid: list[str]) -> str:
  close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
  if not close:
    leaf = key.split('.')[-1]
    close = [k for k in valid if k.split('.')[-1] == leaf][:3]
  hint = f' Did you mean: {", ".join(close)}?' if close else ''
  return f"Unknown config key '{key}'.{hint} See configs.yaml for all keys."


def _group_message(key: str, value: Any, group: Mapping[str, Any]) -> str:
  """For a value given to a group of keys (`--rssm=5`): names the group's keys."""
  leaves = [f'{key}.{sub}' for sub, _ in _flatten(group)]
  example = leaves[0] if leaves else key
  default = group
  for part in example.split('.')[len(key.split('.')):]:
    default = default[part]
  return (f"Config key '{key}' is a group of keys ({', '.join(leaves)}), not a value; got "
          f'{value!r}. Set one of them, e.g. --{example}={default}.')


_TYPE_NAMES = {bool: 'bool', int: 'int', float: 'float', str: 'str', list: 'list', tuple: 'list'}
# Keys whose values are numbers or one of these words (validate.py checks the choice).
WORD_VALUES = {'precision': ('bf16',)}


def convert(key: str, value: Any, default: Any) -> Any:
  """Converts `value` (possibly a command-line string) to the type of `default`.

  int keys accept integral floats and strings like '1e6' (step counts are written that way),
  not inf or nan;
  float keys accept ints; bool keys accept true/false/1/0/yes/no; list keys accept a YAML or
  comma-separated string and convert each element like the default's first element. A single
  number given to a list key whose default holds several numbers (`--encoder.cnn_kernels=3`,
  `--render_size=64`) is refused rather than taken as a one-element list; `[3]` says it.

  Raises:
    ConfigError: naming the key, the value and the expected type.
  """
  def fail():
    expected = _TYPE_NAMES.get(type(default), type(default).__name__)
    return ConfigError(
        f"Config key '{key}' expects a value of type {expected} (like {default!r}), "
        f"got {value!r}.")

  if isinstance(value, str) and value.strip().lower() in WORD_VALUES.get(key, ()):
    return value.strip().lower()
  if default is None:
    return value
  if isinstance(default, bool):
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.strip().lower() in ('true', 'false', '1', '0', 'yes', 'no'):
      return value.strip().lower() in ('true', '1', 'yes')
    if isinstance(value, int) and value in (0, 1):
      return bool(value)
    raise fail()
  if isinstance(default, int):
    try:
      number = float(value) if isinstance(value, str) else value
    except ValueError:
      raise fail() from None
    if isinstance(number, bool) or not isinstance(number, (int, float)):
      raise fail()
    if not math.isfinite(number):
      raise ConfigError(f"Config key '{key}' expects a finite whole number (type int, like "
                        f"{default!r}), got {value!r}.")
    if float(number) != int(number):
      raise fail()
    return int(number)
  if isinstance(default, float):
    if isinstance(value, bool):
      raise fail()
    try:
      return float(value)
    except (TypeError, ValueError):
      raise fail() from None
  if isinstance(default, str):
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
      return str(value)
    raise fail()
  if isinstance(default, (list, tuple)):
    if isinstance(value, str):
      text = value.strip()
      if text.startswith('['):
        value = ruamel.yaml.YAML(typ='safe', pure=True).load(text)
      elif (',' not in text and len(default) > 1 and
            all(isinstance(d, (int, float)) and not isinstance(d, bool) for d in default)):
        listed = ','.join([text] * len(default))
        raise ConfigError(
            f"Config key '{key}' expects a list of {len(default)} numbers like "
            f"{list(default)!r}, got the single value {value!r}; write all of them, e.g. "
            f"--{key}={listed} (or '[{text}]' for a one-element list).")
      else:
        value = [v.strip() for v in text.split(',') if v.strip()]
    if not isinstance(value, (list, tuple)):
      raise fail()
    if default:
      value = [convert(f'{key}[{i}]', v, default[0]) for i, v in enumerate(value)]
    return list(value)
  return value


def read_blocks(path: str | os.PathLike = CONFIGS_PATH) -> dict:
  """Reads a YAML config file (configs.yaml, a run's config.yaml) into a dict ({} when empty).

  Raises:
    ConfigError: a missing or unreadable file, YAML that does not parse ("cannot parse
      <path>: <problem> (line L, column C)", one line), or a top level that is not a mapping.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise ConfigError(f'Config file {path} does not exist.')
  try:
    data = ruamel.yaml.YAML(typ='safe', pure=True).load(path.read_text())
  except ruamel.yaml.YAMLError as e:
    problem = getattr(e, 'problem', None)
    mark = getattr(e, 'problem_mark', None)
    if problem and mark is not None:
      detail = f'{problem} (line {mark.line + 1}, column {mark.column + 1})'
    else:
      detail = ' '.join(str(e).split())
    raise ConfigError(f'cannot parse {path}: {detail}') from None
  except (OSError, UnicodeDecodeError) as e:
    raise ConfigError(f'cannot read {path}: {e}') from None
  if data is None:
    return {}
  if not isinstance(data, dict):
    raise ConfigError(f'cannot parse {path}: expected a mapping of config keys, got a '
                      f'{type(data).__name__}.')
  return data


def load_config(names: Iterable[str] = (), overrides: Mapping[str, Any] | None = None,
                path: str | os.PathLike = CONFIGS_PATH) -> Config:
  """Builds the config from `defaults`, the overlays `names` in order, then `overrides`.

  Args:
    names: overlay names from configs.yaml, e.g. ['atari', 'debug'].
    overrides: {dotted key: value}; values may be strings as typed on a command line.

  Raises:
    ConfigError: unknown overlay, unknown key, or a value of the wrong type.
  """
  blocks = read_blocks(path)
  config = Config(blocks['defaults'])
  for name in names:
    if name not in blocks:
      valid = ', '.join(k for k in blocks if k != 'defaults')
      raise ConfigError(f"Unknown config overlay '{name}'. Valid overlays: {valid}.")
    config = config.update(blocks[name] or {})
  if overrides:
    config = config.update(overrides)
  return config


def parse_overrides(args: Iterable[str]) -> dict[str, str]:
  """Parses command-line overrides into {dotted key: value string} (converted later by `convert`).

  Accepted forms: `--rssm.deter=200`, `--rssm.deter 200`, and a bare `--flag` (the value
  'true', for bool keys). Keys are checked against the config by `Config.update`, not here.

  Raises:
    ConfigError: for an argument that is not an override (e.g. a stray positional word or a
      single-dash option), naming it.
  """
  args = list(args)
  overrides = {}
  i = 0
  while i < len(args):
    arg = args[i]
    if not arg.startswith('--') or len(arg) == 2:
      raise ConfigError(
          f"Unexpected argument '{arg}': overrides look like --key=value (e.g. --rssm.deter=200).")
    if '=' in arg:
      key, value = arg[2:].split('=', 1)
      i += 1
    elif i + 1 < len(args) and not args[i + 1].startswith('--'):
      key, value = arg[2:], args[i + 1]
      i += 2
    else:
      key, value = arg[2:], 'true'
      i += 1
    if not key:
      raise ConfigError(f"Unexpected argument '{arg}': the key is empty.")
    overrides[key] = value
  return overrides
