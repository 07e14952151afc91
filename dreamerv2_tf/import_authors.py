"""Imports a checkpoint of the authors' DreamerV2 release into this project (issue 8).

    python -m dreamerv2_tf.import_authors --variables variables.pkl --config config.yaml \
        [--task TASK] --logdir DIR [--no_env_check]

reads the two files the authors' `train.py` writes into its logdir (PyPI `dreamerv2` 2.2.0):

- `variables.pkl`: `pickle.dump` of a tuple of numpy arrays, one per variable of the authors'
  `Agent`, in the order of `tf.Module.variables` (each module yields its own variables in sorted
  attribute order, then visits its sub-modules in sorted attribute / dict-key order; Keras layers
  yield kernel then bias, gamma then beta). There are no names in the file: the order is derived
  here from the config alone (`authors_layout`). A `variables.json` as written by
  ../shared/parity_fixtures/make_fixture.py (index, path, shape per entry) is only a cross-check.
- `config.yaml`: the authors' full config. Keys are translated to this project's `configs.yaml`
  keys (`translate_config`); keys without meaning here are reported, values this project cannot
  honour raise `AuthorsImportError`.

and writes into DIR this project's `config.yaml` and a checkpoint in the training loop's format
(`checkpoint.Checkpointer`: `step`, `agent`, `tf_rng`, `host`, under `DIR/checkpoints/ckpt-<step>`),
plus `authors_import.json` (provenance: source files, sha256, unused keys, dropped variables), so
that `python -m dreamerv2_tf.evaluate --logdir DIR`, `python -m dreamerv2_tf.export --logdir DIR
--out ...` and `train.py --logdir DIR` (continuing, with the printed flags)
work on it. The authors' `tfstep` becomes the agent-step counter (agent steps, as in their
`train.py`); `_task_behavior/_updates` becomes `agent.updates`. The authors do not save optimiser
state (Adam moments, iteration counts): a continued run starts with fresh optimisers, exactly as
the authors' own `train.py` does after loading `variables.pkl`.

Unpickling is restricted (`load_variables`): only numpy arrays, numpy scalars and tuples/lists of
them can be constructed; a file that would construct anything else is refused before that object
is created.

Errors: every problem raises `AuthorsImportError` (a ValueError) with a message naming the file,
key, variable or value and what is allowed; the command line prints it and exits with status 1.
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import hashlib
import io
import json
import math
import os
import pathlib
import pickle
import re
import sys
import tempfile
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from dreamerv2_tf import cli
from dreamerv2_tf.config import Config, ConfigError, load_config
from dreamerv2_tf.validate import validate


class AuthorsImportError(ValueError):
  """An authors' checkpoint or config that cannot be imported; the message says why."""


# ------------------------------------------------------------------------- safe unpickling

def _numpy_core():
  try:  # numpy >= 2
    from numpy._core import multiarray, numeric  # pylint: disable=import-outside-toplevel
  except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray, numeric  # pylint: disable=import-outside-toplevel
  return multiarray, numeric


def _latin1_encode(text: str, encoding: str = 'latin1') -> bytes:
  # Python-2-compatible pickles (protocol < 3) store bytes as `_codecs.encode(str, 'latin1')`.
  if encoding not in ('latin1', 'latin-1'):
    raise pickle.UnpicklingError(
        f"the file calls _codecs.encode with encoding {encoding!r}; only 'latin1' is allowed.")
  return codecs.encode(text, 'latin1')


def _allowed_globals() -> dict[tuple[str, str], Any]:
  multiarray, numeric = _numpy_core()
  allowed = {}
  # numpy 1.x pickles name numpy.core, numpy 2.x numpy._core; protocol 5 uses _frombuffer.
  for core in ('numpy.core', 'numpy._core'):
    allowed[(f'{core}.multiarray', '_reconstruct')] = multiarray._reconstruct  # pylint: disable=protected-access
    allowed[(f'{core}.multiarray', 'scalar')] = multiarray.scalar
    allowed[(f'{core}.numeric', '_frombuffer')] = numeric._frombuffer  # pylint: disable=protected-access
  allowed[('numpy', 'ndarray')] = np.ndarray
  allowed[('numpy', 'dtype')] = np.dtype
  allowed[('_codecs', 'encode')] = _latin1_encode
  return allowed


class RestrictedUnpickler(pickle.Unpickler):
  """An Unpickler that can only construct numpy arrays, numpy scalars and dtypes.

  `find_class` is the only way a pickle reaches a Python callable; any global other than
  numpy's array/scalar reconstructors (`_reconstruct`, `scalar`, `_frombuffer` under
  `numpy.core` or `numpy._core`), `numpy.ndarray`, `numpy.dtype` and `_codecs.encode`
  (latin1 only) raises `pickle.UnpicklingError` naming it, before it is looked up or called.
  """

  _ALLOWED = None

  def find_class(self, module: str, name: str):
    if RestrictedUnpickler._ALLOWED is None:
      RestrictedUnpickler._ALLOWED = _allowed_globals()
    try:
      return RestrictedUnpickler._ALLOWED[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(f'it would construct {module}.{name}') from None


def load_variables(path: str | os.PathLike) -> list[np.ndarray]:
  """Reads an authors' `variables.pkl` safely: a tuple or list of numpy arrays.

  Returns:
    list of numpy arrays (0-d arrays for scalars such as `tfstep`), in file order.
  Raises:
    AuthorsImportError: the file is missing or unreadable, would construct anything but numpy
      arrays (it is refused without constructing it: "... would construct os.system and was not
      loaded"), holds object arrays, or is not a tuple/list of arrays.
  """
  path = pathlib.Path(path)
  try:
    data = path.read_bytes()
  except OSError as e:
    raise AuthorsImportError(f'Cannot read {path}: {e}.') from None
  try:
    value = RestrictedUnpickler(io.BytesIO(data)).load()
  except pickle.UnpicklingError as e:
    message = str(e)
    if message.startswith('it would construct'):
      raise AuthorsImportError(
          f'{path}: {message} and was not loaded. An authors\' variables.pkl holds only numpy '
          'arrays; this file may run code when unpickled.') from None
    raise AuthorsImportError(f'{path} is not a readable pickle: {message}.') from None
  except Exception as e:  # pylint: disable=broad-except  (truncated or corrupt data)
    raise AuthorsImportError(f'{path} is not a readable pickle: {type(e).__name__}: {e}.') from None
  if not isinstance(value, (tuple, list)):
    raise AuthorsImportError(
        f'{path} holds a {type(value).__name__}; an authors\' variables.pkl holds a tuple of '
        'numpy arrays.')
  arrays = []
  for i, item in enumerate(value):
    if isinstance(item, np.generic):
      item = np.asarray(item)
    if not isinstance(item, np.ndarray):
      raise AuthorsImportError(
          f'{path}: entry {i} is a {type(item).__name__}, not a numpy array.')
    if item.dtype.kind not in 'biuf':
      raise AuthorsImportError(
          f'{path}: entry {i} has dtype {item.dtype}; only numeric arrays are allowed.')
    arrays.append(item)
  return arrays


# ------------------------------------------------------------------------- config translation

@dataclasses.dataclass
class Translation:
  """Result of `translate_config`.

  Attributes:
    config: this project's full Config.
    unused: [(authors' dotted key, value, reason)] for keys that have no meaning here.
    notes: other remarks (task changed, keys set to values equal to the authors' behaviour).
    discrete: one-hot actions (else continuous).
    image_shape: (H, W, C) of the observations.
  """
  config: Config
  unused: list[tuple[str, Any, str]]
  notes: list[str]
  discrete: bool
  image_shape: tuple[int, int, int]


_UNUSED_PREFIXES = {
    'log_keys_': 'filter of the authors\' logger; this project logs a fixed set of keys',
}
_UNUSED_KEYS = {
    'envs_parallel': 'this project runs envs > 1 in worker processes on its own',
    'logdir': 'replaced by --logdir',
    'replay.maxlen': 'episode chunking of the authors\' replay; this replay samples '
                     'dataset.length windows from whole episodes',
    'replay.ongoing': 'sampling from unfinished episodes is not done here',
    'encoder.mlp_layers': 'MLP encoder of vector observations; none are used (mlp_keys)',
    'decoder.mlp_layers': 'MLP decoder of vector observations; none are used (mlp_keys)',
    'loss_scales.proprio': 'scale of vector-observation losses; none are predicted here',
}
# Authors' keys whose value must be this (no counterpart here: only this value is implemented).
_REQUIRED = {
    'rssm.ensemble': (1, 'an ensemble of prior heads, of which img_step picks one at random, '
                      'is not implemented; the authors\' Plan2Explore does not use it'),
    'reward_head.dist': ('mse', 'the reward head is a unit-variance Normal'),
    'discount_head.dist': ('binary', 'the discount head is a Bernoulli'),
    'critic.dist': ('mse', 'the critic is a unit-variance Normal'),
    'model_opt.opt': ('adam', 'only Adam is implemented'),
    'actor_opt.opt': ('adam', 'only Adam is implemented'),
    'critic_opt.opt': ('adam', 'only Adam is implemented'),
    'expl_opt.opt': ('adam', 'only Adam is implemented'),
    'expl_head.dist': ('mse', 'the explorer\'s heads are unit-variance Normals'),
}
# The authors' expl_behavior values (class names in their expl.py) and this project's names.
_BEHAVIORS = {'greedy': 'greedy', 'Plan2Explore': 'plan2explore', 'ModelLoss': 'model_loss'}
# Names of vector observations of the authors' environments (Atari `ram`, dm_control
# proprioception); `mlp_keys` must match none of them: the importer takes image-only agents
# (training itself supports vectors, e.g. the dmc_proprio overlay).
_VECTOR_KEY_PROBES = (
    'ram', 'position', 'velocity', 'orientations', 'orientation', 'joint_angles', 'to_target',
    'touch', 'extremities', 'com_velocity', 'torso_velocity', 'egocentric_state', 'arm_pos',
    'hand_pos', 'object_pos', 'target_pos', 'head_height', 'torso_vertical', 'height',
    'some_vector_observation')


def _flatten(mapping: Mapping[str, Any], prefix: str = '') -> Iterable[tuple[str, Any]]:
  for key, value in mapping.items():
    if isinstance(value, Mapping) and value:
      yield from _flatten(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def read_authors_config(path: str | os.PathLike) -> dict:
  """Reads an authors' config.yaml (as their `Config.save` writes it) into a nested dict.

  Raises:
    AuthorsImportError: missing file, YAML error, or not a mapping.
  """
  import ruamel.yaml  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(path)
  try:
    data = ruamel.yaml.YAML(typ='safe', pure=True).load(path.read_text())
  except OSError as e:
    raise AuthorsImportError(f'Cannot read {path}: {e}.') from None
  except Exception as e:  # pylint: disable=broad-except  (ruamel's YAMLError subclasses)
    raise AuthorsImportError(f'{path} is not valid YAML: {e}') from None
  if not isinstance(data, dict):
    raise AuthorsImportError(f'{path} holds a {type(data).__name__}, not a config mapping.')
  return data


def _regex_matches(pattern: str, key: str, name: str) -> bool:
  try:
    return re.match(pattern, key) is not None
  except re.error as e:
    raise AuthorsImportError(f'{name} is {pattern!r}, not a valid regular expression: {e}.') \
        from None


def _latent_classes(value: Any) -> int:
  """The authors' `rssm.discrete` as this project's int: classes >= 1, or 0 for Gaussian
  latents (their False or 0). Raises AuthorsImportError for anything else (e.g. True)."""
  if value is False or (type(value) is int and value >= 0):  # pylint: disable=unidiomatic-typecheck
    return int(value)
  raise AuthorsImportError(
      f'The authors\' config sets rssm.discrete: {value!r}; allowed: a number of classes >= 1 '
      '(categorical latents) or False / 0 (Gaussian latents).')


def translate_config(authors: Mapping[str, Any], task: str | None = None,
                     logdir: str | None = None) -> Translation:
  """Translates an authors' config (nested dict) into this project's Config.

  Every authors' key that this project also has is copied (converted to this project's type;
  e.g. `actor_ent: 0.001` becomes the schedule string '0.001'); keys listed as having no
  meaning here are returned in `unused` with the reason; unknown keys are also reported there.
  Keys this project has and the authors' config lacks keep this project's defaults, which equal
  the authors' fixed behaviour (`atari_sticky` 0.25, `atari_full_action_space` false,
  `actor.init_std` 0, `loss_scales.image` 1).

  Args:
    authors: the authors' config as read by `read_authors_config`.
    task: this project's task name (default: the authors' `task`, which uses the same names).
    logdir: written into the config's `logdir`.
  Raises:
    AuthorsImportError: a value this project cannot honour (rssm.ensemble > 1, a norm other than
      none or layer, rssm.discrete True, vector observations in mlp_keys, no image in cnn_keys, the
      Random explorer, another optimiser, an unsupported distribution,
      ...) or a value of the wrong type; the message names the key and the allowed values.
  """
  flat = dict(_flatten(authors))
  ours = load_config()
  our_keys = set(ours.flat_keys())
  updates, unused, notes = {}, [], []
  for key, value in flat.items():
    if key in _REQUIRED:
      required, why = _REQUIRED[key]
      if value != required:
        raise AuthorsImportError(
            f'The authors\' config sets {key}: {value!r}; only {required!r} can be imported '
            f'({why}).')
      continue
    if key in _UNUSED_KEYS:
      unused.append((key, value, _UNUSED_KEYS[key]))
      continue
    if key == 'expl_behavior':
      if value not in _BEHAVIORS:
        raise AuthorsImportError(
            f'The authors\' config sets expl_behavior: {value!r}; allowed: '
            f'{", ".join(_BEHAVIORS)} (their Random explorer is not implemented).')
      updates[key] = _BEHAVIORS[value]
      continue
    prefix = next((p for p in _UNUSED_PREFIXES if key.startswith(p)), None)
    if prefix is not None:
      unused.append((key, value, _UNUSED_PREFIXES[prefix]))
      continue
    if key in ('encoder.cnn_keys', 'decoder.cnn_keys', 'encoder.mlp_keys', 'decoder.mlp_keys'):
      continue  # Checked below.
    if key in our_keys:
      updates[key] = value
      continue
    unused.append((key, value, 'unknown key (not in the authors\' 2.2.0 config); ignored'))

  for part in ('encoder', 'decoder'):
    cnn_keys = flat.get(f'{part}.cnn_keys', '.*')
    mlp_keys = flat.get(f'{part}.mlp_keys', '.*')
    if not _regex_matches(str(cnn_keys), 'image', f'{part}.cnn_keys'):
      raise AuthorsImportError(
          f'The authors\' config sets {part}.cnn_keys: {cnn_keys!r}, which does not match '
          "'image'; this project models image observations only.")
    matched = [k for k in _VECTOR_KEY_PROBES
               if _regex_matches(str(mlp_keys), k, f'{part}.mlp_keys')]
    if matched:
      raise AuthorsImportError(
          f'The authors\' config sets {part}.mlp_keys: {mlp_keys!r}, which matches vector '
          f'observations (e.g. {matched[0]!r}); this project models image observations only. '
          "Only configs whose mlp_keys match no observation (like '$^') can be imported.")
  updates['rssm.discrete'] = _latent_classes(flat.get('rssm.discrete', 32))

  our_task = task or flat.get('task')
  if not our_task:
    raise AuthorsImportError('No task: pass --task (the authors\' config has none).')
  if task and flat.get('task') and task != flat['task']:
    notes.append(f"task {task!r} replaces the authors' task {flat['task']!r}.")
  from dreamerv2_tf.envs import parse_task  # pylint: disable=import-outside-toplevel
  try:
    suite, _ = parse_task(our_task)
  except ValueError as e:
    raise AuthorsImportError(str(e)) from None
  updates['task'] = our_task
  if logdir is not None:
    updates['logdir'] = str(logdir)
  discrete = suite == 'atari'
  dist = flat.get('actor.dist', 'auto')
  allowed = 'onehot' if discrete else 'trunc_normal'
  if dist not in ('auto', allowed):
    raise AuthorsImportError(
        f'The authors\' config sets actor.dist: {dist!r}; for the '
        f'{"discrete" if discrete else "continuous"} actions of {our_task} only auto or '
        f'{allowed} is implemented.')
  clip = flat.get('clip_rewards', 'tanh')
  if clip not in ('tanh', 'identity'):
    raise AuthorsImportError(
        f"The authors' config sets clip_rewards: {clip!r}; allowed: 'tanh', 'identity'.")
  try:
    config = ours.update(updates)
    validate(config)  # values of the right type that still cannot work (validate.py)
  except ConfigError as e:
    raise AuthorsImportError(f'The authors\' config has a value this project cannot take: {e}') \
        from None
  for key in sorted(our_keys - set(flat) - {'task', 'logdir'}):
    notes.append(f'{key}: {config[key]!r} (this project\'s default; the authors\' config has '
                 'no such key)')
  if suite == 'atari':
    channels = 1 if config.atari_grayscale else 3
  else:
    channels = 3
  height, width = (int(s) for s in config.render_size)
  return Translation(config, unused, notes, discrete, (height, width, channels))


# ------------------------------------------------------------------------- variable layout

@dataclasses.dataclass(frozen=True)
class AuthorsVariable:
  """One entry of an authors' variables.pkl.

  Attributes:
    index: position in the pickled tuple.
    path: the authors' tf.Module attribute path, e.g. 'wm/rssm/_cell/_layer/kernel' (the same
      spelling as the fixtures' variables.json).
    shape: expected shape; None entries are unknown (the action size before it is read).
    dtype: expected numpy dtype name ('float32'; 'int32' for the counters, 'float64' for the
      reward normaliser's magnitude).
  """
  index: int
  path: str
  shape: tuple
  dtype: str


class _Node:
  """A tf.Module of the authors' agent: own variables (in traversal order) and sub-modules."""

  def __init__(self, variables=(), children=None):
    self.variables = list(variables)  # [(name, shape, dtype)]
    self.children = dict(children or {})  # {(attribute, dict key...): _Node}

  def flatten(self, prefix: str = ''):
    # tf.Module._flatten_module: a module's own variables first (sorted attributes; a Keras
    # layer's in creation order), then each sub-module depth-first in sorted (attribute,
    # dict key or list index) order; list indices are ints, so 10 sorts after 9.
    for name, shape, dtype in self.variables:
      yield f'{prefix}{name}', shape, dtype
    for key in sorted(self.children):
      yield from self.children[key].flatten(prefix + '/'.join(map(str, key)) + '/')


def _dense(n_in, n_out) -> _Node:
  return _Node([('kernel', (n_in, n_out), 'float32'), ('bias', (n_out,), 'float32')])


# The authors' names of the RSSM's NormLayers (`rssm.norm: layer`), in the order img_in,
# img_out, obs_out.
_RSSM_NORMS = ('img_in_norm', 'img_out_norm_0', 'obs_out_norm')


def _layer_norm(size) -> _Node:
  # The authors' NormLayer('layer') holds its LayerNormalization as `_layer`.
  return _Node(children={('_layer',): _Node([('gamma', (size,), 'float32'),
                                             ('beta', (size,), 'float32')])})


def _mlp(n_in, layers, units, n_out, std: bool = False, norm: str = 'none') -> _Node:
  children = {}
  size = n_in
  for i in range(layers):
    children[('_modules', f'dense{i}')] = _dense(size, units)
    if norm == 'layer':
      children[('_modules', f'norm{i}')] = _layer_norm(units)
    size = units
  out = {('_modules', 'out'): _dense(size, n_out)}
  if std:
    out[('_modules', 'std')] = _dense(size, n_out)
  children[('_modules', 'out')] = _Node(children=out)
  return _Node(children=children)


def embed_size(image_shape: Sequence[int], depth: int, kernels: Sequence[int]) -> int:
  """Encoder output size: 'valid' convs with stride 2, depths depth·2^i (1536 for Atari)."""
  h, w, c = image_shape
  for i, k in enumerate(kernels):
    h, w, c = (h - k) // 2 + 1, (w - k) // 2 + 1, depth * 2 ** i
  return h * w * c


def authors_layout(config: Config, image_shape: Sequence[int], action_size: int | None,
                   discrete: bool) -> list[AuthorsVariable]:
  """The entries of the authors' variables.pkl for this (translated) config, in file order.

  Derived from the authors' module tree (Agent: tfstep, _task_behavior (ActorCritic: _updates,
  _target_critic, actor, critic, rewnorm.mag), wm (encoder, heads decoder/discount/reward,
  rssm: _cell, img_dist_0, img_in, img_out_0, obs_dist, obs_out, and with `rssm.norm: layer`
  img_in_norm, img_out_norm_0, obs_out_norm)). Gaussian latents (`rssm.discrete: 0`): the
  img_dist_0/obs_dist layers have 2·stoch units, img_in takes stoch. With `slow_target: False`
  the authors' `_target_critic` is the critic itself, visited under that name first.

  Args:
    config: this project's Config from `translate_config`.
    image_shape: (H, W, C). action_size: A, or None (shapes that need it hold None).
    discrete: one-hot actor (else truncated-normal actor with a std layer).
  """
  rssm, enc, dec = config.rssm, config.encoder, config.decoder
  a = action_size
  flat = rssm.stoch * (rssm.discrete or 1)  # the flattened stoch
  stats = flat if rssm.discrete else 2 * rssm.stoch  # logits, or mean and raw std
  feat = flat + rssm.deter
  embed = embed_size(image_shape, enc.cnn_depth, enc.cnn_kernels)
  encoder = _Node()
  c_in = image_shape[-1]
  for i, k in enumerate(enc.cnn_kernels):
    c_out = enc.cnn_depth * 2 ** i
    encoder.children[('_modules', f'conv{i}')] = _Node(
        [('kernel', (k, k, c_in, c_out), 'float32'), ('bias', (c_out,), 'float32')])
    if enc.get('norm', 'none') == 'layer':
      encoder.children[('_modules', f'convnorm{i}')] = _layer_norm(c_out)
    c_in = c_out
  decoder = _Node()
  decoder.children[('_modules', 'convin')] = _dense(feat, 32 * dec.cnn_depth)
  c_in = 32 * dec.cnn_depth
  kernels = list(dec.cnn_kernels)
  for i, k in enumerate(kernels):
    last = i == len(kernels) - 1
    c_out = image_shape[-1] if last else dec.cnn_depth * 2 ** (len(kernels) - i - 2)
    decoder.children[('_modules', f'conv{i}')] = _Node(
        [('kernel', (k, k, c_out, c_in), 'float32'), ('bias', (c_out,), 'float32')])
    if dec.get('norm', 'none') == 'layer' and not last:
      decoder.children[('_modules', f'convnorm{i}')] = _layer_norm(c_out)
    c_in = c_out
  heads = {('heads', 'decoder'): decoder,
           ('heads', 'reward'): _mlp(feat, config.reward_head.layers, config.reward_head.units, 1,
                                     norm=config.reward_head.get('norm', 'none'))}
  if config.pred_discount:
    heads[('heads', 'discount')] = _mlp(
        feat, config.discount_head.layers, config.discount_head.units, 1,
        norm=config.discount_head.get('norm', 'none'))
  cell = _Node(children={
      ('_layer',): _dense(rssm.hidden + rssm.deter, 3 * rssm.deter),
      ('_norm',): _Node([('gamma', (3 * rssm.deter,), 'float32'),
                         ('beta', (3 * rssm.deter,), 'float32')])})
  rssm_node = _Node(children={
      ('_cell',): cell,
      ('_modules', 'img_in'): _dense(flat + a if a is not None else None, rssm.hidden),
      ('_modules', 'img_out_0'): _dense(rssm.deter, rssm.hidden),
      ('_modules', 'img_dist_0'): _dense(rssm.hidden, stats),
      ('_modules', 'obs_out'): _dense(rssm.deter + embed, rssm.hidden),
      ('_modules', 'obs_dist'): _dense(rssm.hidden, stats)})
  if rssm.get('norm', 'none') == 'layer':
    for name in _RSSM_NORMS:
      rssm_node.children[('_modules', name)] = _layer_norm(rssm.hidden)
  wm = _Node(children={('encoder',): encoder, **heads, ('rssm',): rssm_node})
  ac = _actor_critic_node(config, feat, a, discrete)
  children = {('_task_behavior',): ac, ('wm',): wm}
  explorer = _explorer_node(config, feat, a, discrete, flat, embed)
  if explorer is not None:
    children[('_expl_behavior',)] = explorer
  agent = _Node([('tfstep', (), 'int32')], children)
  return [AuthorsVariable(i, path, tuple(shape), dtype)
          for i, (path, shape, dtype) in enumerate(agent.flatten())]


def _actor_critic_node(config: Config, feat: int, a, discrete: bool,
                       with_actor: bool = True) -> _Node:
  # The authors' ActorCritic: _updates, _target_critic, actor, critic, rewnorm.mag. An
  # explorer's actor is also its own attribute `actor`, visited there instead (with_actor False).
  critic_norm = config.critic.get('norm', 'none')
  critic = _mlp(feat, config.critic.layers, config.critic.units, 1, norm=critic_norm)
  children = {('rewnorm',): _Node([('mag', (), 'float64')])}
  if with_actor:
    children[('actor',)] = _actor_node(config, feat, a, discrete)
  if config.slow_target:
    children[('_target_critic',)] = _mlp(feat, config.critic.layers, config.critic.units, 1,
                                         norm=critic_norm)
    children[('critic',)] = critic
  else:
    children[('_target_critic',)] = critic  # the same object: visited once, first
  return _Node([('_updates', (), 'int32')], children)


def _actor_node(config: Config, feat: int, a, discrete: bool) -> _Node:
  return _mlp(feat, config.actor.layers, config.actor.units, a, std=not discrete,
              norm=config.actor.get('norm', 'none'))


def _explorer_node(config: Config, feat: int, a, discrete: bool, flat: int,
                   embed: int) -> _Node | None:
  """The authors' `_expl_behavior` for Plan2Explore / ModelLoss (None for greedy): its
  ActorCritic `ac` without the actor, the actor as `actor` (the same object, visited first as
  the explorer's attribute), then `_networks` (ensemble) and the reward normalisers, or `head`."""
  behavior = config.expl_behavior
  if behavior == 'greedy':
    return None
  head = config.expl_head
  children = {('ac',): _actor_critic_node(config, feat, a, discrete, with_actor=False),
              ('actor',): _actor_node(config, feat, a, discrete)}
  if behavior == 'plan2explore':
    size = {'stoch': flat, 'deter': config.rssm.deter, 'feat': feat,
            'embed': embed}[config.disag_target]
    n_in = feat
    if config.disag_action_cond:
      n_in = None if a is None else feat + a
    for i in range(int(config.disag_models)):
      children[('_networks', i)] = _mlp(n_in, head.layers, head.units, size,
                                         norm=head.get('norm', 'none'))
    for name in ('extr_rewnorm', 'intr_rewnorm'):
      children[(name,)] = _Node([('mag', (), 'float64')])
  else:
    children[('head',)] = _mlp(feat, head.layers, head.units, 1, norm=head.get('norm', 'none'))
  return _Node(children=children)


ACTOR_OUT_BIAS = '_task_behavior/actor/_modules/out/_modules/out/bias'


def read_action_size(layout: Sequence[AuthorsVariable], arrays: Sequence[np.ndarray],
                     source: str = 'variables.pkl') -> int:
  """The action size A: the length of the actor's output bias in `arrays`.

  Raises:
    AuthorsImportError: the file is too short or that entry is not a vector.
  """
  entry = next(v for v in layout if v.path == ACTOR_OUT_BIAS)
  if entry.index >= len(arrays) or arrays[entry.index].ndim != 1:
    got = (f'shape {list(arrays[entry.index].shape)}' if entry.index < len(arrays)
           else f'only {len(arrays)} entries')
    raise AuthorsImportError(
        f'{source}: entry {entry.index} should be {entry.path} (a vector of the action size) '
        f'for this config, got {got}. Does the config belong to this checkpoint?')
  return int(arrays[entry.index].shape[0])


def check_arrays(layout: Sequence[AuthorsVariable], arrays: Sequence[np.ndarray],
                 source: str = 'variables.pkl') -> None:
  """Checks every array against the layout, in file order.

  Raises:
    AuthorsImportError: at the first entry whose shape (or dtype kind) differs, naming the
      index, the authors' path, the shape in the file and the shape the config implies; or when
      the number of entries differs.
  """
  for entry, value in zip(layout, arrays):
    if tuple(value.shape) != tuple(entry.shape):
      raise AuthorsImportError(
          f'{source}: variable {entry.index} ({entry.path}) has shape {list(value.shape)} in '
          f'the checkpoint, but the config implies {list(entry.shape)}. The checkpoint does not '
          'fit this config.')
    want_int = entry.dtype.startswith('int')
    if want_int != (value.dtype.kind in 'iub'):
      raise AuthorsImportError(
          f'{source}: variable {entry.index} ({entry.path}) has dtype {value.dtype}; expected '
          f'{entry.dtype}.')
  if len(arrays) != len(layout):
    raise AuthorsImportError(
        f'{source} holds {len(arrays)} variables, but the config implies {len(layout)} '
        f'(the first {min(len(arrays), len(layout))} fit). The checkpoint does not fit this '
        'config.')


def check_variables_json(layout: Sequence[AuthorsVariable], path: str | os.PathLike) -> None:
  """Cross-checks the derived layout against a variables.json (index, path, shape per entry).

  Raises:
    AuthorsImportError: naming the first entry whose path or shape differs.
  """
  table = json.loads(pathlib.Path(path).read_text())['variables']
  if len(table) != len(layout):
    raise AuthorsImportError(
        f'{path} lists {len(table)} variables; the layout derived from the config has '
        f'{len(layout)}.')
  for row, entry in zip(table, layout):
    if row['path'] != entry.path or tuple(row['shape']) != tuple(entry.shape):
      raise AuthorsImportError(
          f'{path}: entry {row["index"]} is {row["path"]} {row["shape"]}; the layout derived '
          f'from the config says {entry.path} {list(entry.shape)}.')


# ------------------------------------------------------------------------- mapping to our agent

def _norm_targets(prefix: str, norm) -> dict[str, list]:
  return {f'{prefix}/_layer/gamma': [norm.gamma], f'{prefix}/_layer/beta': [norm.beta]}


def _mlp_targets(prefix: str, mlp) -> dict[str, list]:
  out = {}
  for i, (layer, norm) in enumerate(zip(mlp.hidden, mlp.norms)):
    out[f'{prefix}/_modules/dense{i}/kernel'] = [layer.kernel]
    out[f'{prefix}/_modules/dense{i}/bias'] = [layer.bias]
    if norm is not None:
      out.update(_norm_targets(f'{prefix}/_modules/norm{i}', norm))
  out[f'{prefix}/_modules/out/_modules/out/kernel'] = [mlp.out.kernel]
  out[f'{prefix}/_modules/out/_modules/out/bias'] = [mlp.out.bias]
  if mlp.std is not None:
    out[f'{prefix}/_modules/out/_modules/std/kernel'] = [mlp.std.kernel]
    out[f'{prefix}/_modules/out/_modules/std/bias'] = [mlp.std.bias]
  return out


def _actor_critic_targets(prefix: str, actor_prefix: str, ac) -> dict[str, list]:
  targets = {f'{prefix}/_updates': [ac.updates], f'{prefix}/rewnorm/mag': [ac.reward_norm.mag]}
  critic = _mlp_targets(f'{prefix}/critic', ac.critic)
  target = _mlp_targets(f'{prefix}/_target_critic', ac.target_critic)
  if not ac.slow_target:
    target = {k: target[k] + critic[k.replace('_target_critic', 'critic')] for k in target}
  targets.update(_mlp_targets(actor_prefix, ac.actor))
  targets.update(critic)
  targets.update(target)
  return targets


def _explorer_targets(explorer) -> dict[str, list]:
  """The authors' `_expl_behavior/...` paths onto this project's explorer (expl.py)."""
  prefix = '_expl_behavior'
  targets = _actor_critic_targets(f'{prefix}/ac', f'{prefix}/actor', explorer.ac)
  if hasattr(explorer, 'intr_norm'):  # Plan2Explore
    for i, head in enumerate(explorer.heads):
      targets.update(_mlp_targets(f'{prefix}/_networks/{i}', head))
    targets[f'{prefix}/intr_rewnorm/mag'] = [explorer.intr_norm.mag]
    targets[f'{prefix}/extr_rewnorm/mag'] = [explorer.extr_norm.mag]
  else:  # ModelLoss
    targets.update(_mlp_targets(f'{prefix}/head', explorer.head))
  return targets


def variable_targets(agent, step) -> dict[str, list]:
  """{authors' path: [this project's variables that receive it]} ([] = dropped).

  The authors' `rewnorm/mag` fills the reward normaliser's magnitude. Without a slow target the
  authors' critic (visited as `_target_critic`) fills both the critic and the (unused) target
  critic here.
  """
  wm = agent.wm
  targets = {'tfstep': [step]}
  targets.update(_actor_critic_targets('_task_behavior', '_task_behavior/actor', agent.ac))
  if agent.expl is not None:
    targets.update(_explorer_targets(agent.expl))
  for i, (conv, norm) in enumerate(zip(wm.encoder.convs, wm.encoder.norms)):
    targets[f'wm/encoder/_modules/conv{i}/kernel'] = [conv.kernel]
    targets[f'wm/encoder/_modules/conv{i}/bias'] = [conv.bias]
    if norm is not None:
      targets.update(_norm_targets(f'wm/encoder/_modules/convnorm{i}', norm))
  dec = wm.heads['decoder']
  targets['wm/heads/decoder/_modules/convin/kernel'] = [dec.convin.kernel]
  targets['wm/heads/decoder/_modules/convin/bias'] = [dec.convin.bias]
  for i, (conv, norm) in enumerate(zip(dec.convs, dec.norms)):
    targets[f'wm/heads/decoder/_modules/conv{i}/kernel'] = [conv.kernel]
    targets[f'wm/heads/decoder/_modules/conv{i}/bias'] = [conv.bias]
    if norm is not None:
      targets.update(_norm_targets(f'wm/heads/decoder/_modules/convnorm{i}', norm))
  for name in ('reward', 'discount'):
    if name in wm.heads:
      targets.update(_mlp_targets(f'wm/heads/{name}', wm.heads[name]))
  rssm = wm.rssm
  targets['wm/rssm/_cell/_layer/kernel'] = [rssm.cell.dense.kernel]
  targets['wm/rssm/_cell/_layer/bias'] = [rssm.cell.dense.bias]
  targets['wm/rssm/_cell/_norm/gamma'] = [rssm.cell.norm.gamma]
  targets['wm/rssm/_cell/_norm/beta'] = [rssm.cell.norm.beta]
  for authors_name, layer in (('img_in', rssm.img_in), ('img_out_0', rssm.img_out),
                              ('img_dist_0', rssm.img_dist), ('obs_out', rssm.obs_out),
                              ('obs_dist', rssm.obs_dist)):
    targets[f'wm/rssm/_modules/{authors_name}/kernel'] = [layer.kernel]
    targets[f'wm/rssm/_modules/{authors_name}/bias'] = [layer.bias]
  for authors_name, norm in zip(_RSSM_NORMS, (rssm.img_in_norm, rssm.img_out_norm,
                                              rssm.obs_out_norm)):
    if norm is not None:
      targets.update(_norm_targets(f'wm/rssm/_modules/{authors_name}', norm))
  return targets


def assign(agent, step, layout: Sequence[AuthorsVariable], arrays: Sequence[np.ndarray]) -> list:
  """Assigns the checked `arrays` to the agent's variables and the step counter.

  Returns:
    [(path, value)] of the dropped entries (none for the supported settings).
  Raises:
    RuntimeError: an internal mismatch between the layout and this project's variables (a bug).
  """
  targets = variable_targets(agent, step)
  missing = [v.path for v in layout if v.path not in targets]
  if missing:
    raise RuntimeError(f'No variable of this project for the authors\' {missing[0]}.')
  dropped = []
  for entry, value in zip(layout, arrays):
    dests = targets[entry.path]
    if not dests:
      dropped.append((entry.path, value.tolist()))
      continue
    for var in dests:
      if tuple(var.shape) != tuple(value.shape):
        raise RuntimeError(
            f'{entry.path}: this project\'s variable has shape {list(var.shape)}, the layout '
            f'{list(value.shape)} (a bug in the layout or the model).')
      var.assign(value.astype(np.dtype(var.dtype.name if hasattr(var.dtype, 'name')
                                       else var.dtype)))
  return dropped


# ------------------------------------------------------------------------- high level

@dataclasses.dataclass
class Imported:
  """An authors' checkpoint loaded into this project's Agent.

  Attributes:
    agent: the Agent (variables assigned). step: its int64 agent-step tf.Variable.
    translation: the config translation. layout: the entries of variables.pkl.
    dropped: [(path, value)] of entries without counterpart. sources: {'variables': path,
      'config': path, 'variables_sha256': hex}.
  """
  agent: Any
  step: Any
  translation: Translation
  layout: list[AuthorsVariable]
  dropped: list
  sources: dict


def load_authors(variables: str | os.PathLike, config: str | os.PathLike,
                 task: str | None = None, logdir: str | None = None,
                 variables_json: str | os.PathLike | None = None,
                 overrides: Mapping[str, Any] | None = None) -> Imported:
  """Reads an authors' checkpoint and config and builds this project's Agent holding its values.

  Args:
    variables: the authors' variables.pkl. config: their config.yaml.
    task: this project's task (default: the config's). logdir: stored in the config.
    variables_json: optional variables.json to cross-check the derived order against.
    overrides: this project's config keys set after the translation (e.g.
      {'deterministic_check': True} for the update parity check).
  Raises:
    AuthorsImportError: see `load_variables`, `translate_config`, `check_arrays`.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from dreamerv2_tf.agent import ActSpace, Agent  # pylint: disable=import-outside-toplevel

  arrays = load_variables(variables)
  translation = translate_config(read_authors_config(config), task, logdir)
  if overrides:
    try:
      translation.config = translation.config.update(dict(overrides))
    except ConfigError as e:
      raise AuthorsImportError(f'overrides: {e}') from None
  cfg = translation.config
  source = str(variables)
  layout = authors_layout(cfg, translation.image_shape, None, translation.discrete)
  action_size = read_action_size(layout, arrays, source)
  layout = authors_layout(cfg, translation.image_shape, action_size, translation.discrete)
  if variables_json is not None:
    check_variables_json(layout, variables_json)
  check_arrays(layout, arrays, source)
  step = tf.Variable(0, dtype=tf.int64, trainable=False, name='agent_step')
  obs_space = {'image': (translation.image_shape, np.uint8)}
  try:
    agent = Agent(cfg, obs_space, ActSpace(translation.discrete, action_size), step)
  except ValueError as e:
    raise AuthorsImportError(f'This project cannot build the agent of this config: {e}') \
        from None
  dropped = assign(agent, step, layout, arrays)
  sources = {'variables': str(pathlib.Path(variables).resolve()),
             'variables_sha256': hashlib.sha256(pathlib.Path(variables).read_bytes()).hexdigest(),
             'config': str(pathlib.Path(config).resolve())}
  return Imported(agent, step, translation, layout, dropped, sources)


def check_env(imported: Imported) -> str:
  """Builds the task's environment once and checks its spaces against the checkpoint.

  Returns a one-line description. Raises AuthorsImportError on a different action size or
  kind or image shape.
  """
  from dreamerv2_tf import envs  # pylint: disable=import-outside-toplevel
  cfg = imported.translation.config
  env = envs.make_env(cfg.task, cfg, 'eval')
  try:
    act = env.act_space
    image = tuple(env.obs_space['image'][0]) if hasattr(env, 'obs_space') else None
  finally:
    env.close()
  agent = imported.agent
  if bool(act.discrete) != agent.discrete or int(act.size) != agent.action_size:
    raise AuthorsImportError(
        f'{cfg.task} has {"discrete" if act.discrete else "continuous"} actions of size '
        f'{act.size}; the checkpoint\'s actor has {"discrete" if agent.discrete else "continuous"}'
        f' actions of size {agent.action_size}. Pass the task this agent was trained on.')
  if image is not None and image != imported.translation.image_shape:
    raise AuthorsImportError(
        f'{cfg.task} gives images of shape {image}; the checkpoint expects '
        f'{imported.translation.image_shape}.')
  return f'{cfg.task}: {act.size} {"discrete" if act.discrete else "continuous"} actions, ' \
         f'images {imported.translation.image_shape}'


def _write_json(path: pathlib.Path, data: Any) -> None:
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix='.tmp-', suffix='.json')
  with os.fdopen(fd, 'w') as f:
    json.dump(data, f, indent=1)
    f.write('\n')
  os.chmod(tmp, 0o644)
  os.replace(tmp, path)


def write_logdir(imported: Imported, logdir: str | os.PathLike) -> str:
  """Writes `config.yaml`, the checkpoint and `authors_import.json` into a new run folder.

  The checkpoint has the training loop's objects: `step`, `agent`, `tf_rng` (a generator seeded
  with the config's seed) and `host` (Python/numpy random states; no loop counters, so the
  loop's log/eval/train schedules start afresh), and is numbered by the agent step.

  Returns:
    the checkpoint's path prefix.
  Raises:
    AuthorsImportError: when `logdir` already holds a config.yaml or checkpoints (nothing is
      overwritten).
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from dreamerv2_tf.checkpoint import Checkpointer, HostState  # pylint: disable=import-outside-toplevel
  logdir = pathlib.Path(logdir).expanduser()
  existing = [p for p in (logdir / 'config.yaml', logdir / 'checkpoints') if p.exists()]
  if existing:
    raise AuthorsImportError(
        f'{logdir} already holds {existing[0].name}; import into a new, empty folder '
        '(nothing is overwritten).')
  logdir.mkdir(parents=True, exist_ok=True)
  cfg = imported.translation.config.update({'logdir': str(logdir)})
  cfg.save(logdir / 'config.yaml')
  generator = tf.random.Generator.from_seed(int(cfg.seed))
  host = HostState({'prefill_policy': np.random.default_rng(int(cfg.seed))})
  checkpointer = Checkpointer(logdir / 'checkpoints', imported.step, agent=imported.agent,
                              tf_rng=generator, host=host)
  path = checkpointer.save()
  _write_json(logdir / 'authors_import.json', {
      **imported.sources,
      'task': cfg.task,
      'agent_step': int(imported.step.numpy()),
      'updates': int(imported.agent.updates.numpy()),
      'variables_count': len(imported.layout),
      'parameters': int(sum(math.prod(v.shape) for v in imported.layout)),
      'dropped_variables': [{'path': p, 'value': v} for p, v in imported.dropped],
      'unused_config_keys': [{'key': k, 'value': v, 'reason': r}
                             for k, v, r in imported.translation.unused],
      'checkpoint': path,
      'train_command': train_command(cfg),
  })
  return path


def _python() -> str:
  """The interpreter to name in printed commands: this one, relative to the cwd if inside it."""
  try:
    return str(pathlib.Path(sys.executable).relative_to(pathlib.Path.cwd()))
  except ValueError:
    return sys.executable


def train_command(config: Config) -> str:
  """The `train.py` command line that rebuilds `config`: --task, --logdir and every key whose
  value differs from configs.yaml's defaults (train.py builds its config from flags)."""
  defaults = load_config()
  parts = [f'{_python()} train.py', f'--task {config.task}', f'--logdir {config.logdir}']
  for key in config.flat_keys():
    if key in ('task', 'logdir') or config[key] == defaults[key]:
      continue
    value = config[key]
    if isinstance(value, (list, tuple)):
      text = '[' + ','.join(str(v) for v in value) + ']'
    elif isinstance(value, bool):
      text = str(value).lower()
    else:
      text = str(value)
    parts.append(f"--{key}='{text}'" if re.search(r'[^\w.,+-]', text) else f'--{key}={text}')
  return ' '.join(parts)


def format_unused(unused: Sequence[tuple[str, Any, str]]) -> str:
  """The report of authors' config keys without meaning here, one line each."""
  lines = [f'{len(unused)} keys of the authors\' config have no meaning here and were not used:']
  for key, value, reason in unused:
    lines.append(f'  {key}: {value!r}  ({reason})')
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  """Command line; returns the exit status (1 with a message on AuthorsImportError)."""
  parser = cli.ArgumentParser(
      prog='python -m dreamerv2_tf.import_authors',
      description='Turn a checkpoint of the authors\' DreamerV2 release (variables.pkl + '
      'config.yaml) into this project\'s run folder (config.yaml + checkpoint).')
  parser.add_argument('--variables', required=True, metavar='FILE',
                      help='the authors\' variables.pkl')
  parser.add_argument('--config', required=True, metavar='FILE',
                      help='the authors\' config.yaml of the same run')
  parser.add_argument('--task', default=None,
                      help='this project\'s task, e.g. atari_pong (default: the config\'s task)')
  parser.add_argument('--logdir', required=True, metavar='DIR',
                      help='new run folder to write (must not hold a config.yaml or checkpoints)')
  parser.add_argument('--variables_json', default=None, metavar='FILE',
                      help='optional variables.json (fixtures) to cross-check the variable order')
  parser.add_argument('--no_env_check', action='store_true',
                      help='do not build the task\'s environment to check the action space')
  args = parser.parse_args(argv)
  try:
    imported = load_authors(args.variables, args.config, args.task, args.logdir,
                            args.variables_json)
    translation = imported.translation
    print(f'Read {len(imported.layout)} variables '
          f'({sum(math.prod(v.shape) for v in imported.layout):,} numbers) from {args.variables}: '
          f'agent step {int(imported.step.numpy()):,}, {int(imported.agent.updates.numpy()):,} '
          f'updates, {imported.agent.action_size} '
          f'{"discrete" if translation.discrete else "continuous"} actions, images '
          f'{translation.image_shape}.')
    for path, value in imported.dropped:
      print(f'Dropped {path} = {value} (no counterpart here).')
    print(format_unused(translation.unused))
    for note in translation.notes:
      print(f'Note: {note}')
    if not args.no_env_check:
      print(f'Environment check: {check_env(imported)}.')
    path = write_logdir(imported, args.logdir)
  except (AuthorsImportError, ConfigError) as e:
    print(f'import_authors: error: {e}', file=sys.stderr)
    return 1
  config = translation.config.update({'logdir': str(pathlib.Path(args.logdir).expanduser())})
  print(f'Wrote {pathlib.Path(args.logdir) / "config.yaml"} and checkpoint {path} '
        '(authors_import.json records the sources). Optimiser state starts fresh, as after the '
        'authors\' own restore (they do not save it).')
  print(f'Evaluate: {_python()} -m dreamerv2_tf.evaluate --logdir {args.logdir}')
  print(f'Export: {_python()} -m dreamerv2_tf.export --logdir {args.logdir} --out '
        f'{pathlib.Path(args.logdir) / "export"}')
  print(f'Continue training: {train_command(config)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
