"""Checks a full config's values before anything runs (docs/reference.md §2–§6).

Called by train.py, evaluate, export and import_authors.

`Config.update` already checks keys and types (config.py); `validate` checks what a value of the
right type may still get wrong, so that a bad command line fails in one line before the logdir
is created, TensorFlow loads or an environment starts:

- the task (suite, Atari game, DMC domain and task; envs.check_task, no dm_control import);
- sizes and counts: positive (`dataset.batch`, `rssm.deter`, ...) or non-negative (`seed`,
  `prefill`, `time_limit`, `log_every`, ...), in agent steps where they are step counts;
- choices: `precision` 16/32/'bf16', `actor.dist`, `actor_grad`, `clip_rewards`, `grad_heads`,
  `expl_behavior`, `disag_target`, `expl_model_loss`; `disag_offset` below `dataset.length`;
  `rssm.std_act`;
- schedules (`actor_ent`, `actor_grad_mix`) parse (schedule.parse);
- `render_size` is two positive ints; floats are finite and in range (`discount` in (0, 1],
  learning rates > 0, ...);
- replay lengths fit the episodes: with `time_limit` T > 0 every episode has at most T agent
  steps (T + 1 transitions with the reset row), so `replay.minlen` (agent steps, as the
  authors count) > T would store no episode (prefill would never end) and `dataset.length`
  (transitions) > T + 1 would sample none; `dataset.length` >= 2;
- network sizes that cannot be built (image suites): encoder kernels larger than the image
  shrinks to, decoder kernels that do not produce `render_size` (`conv_sizes`, `deconv_size`).

No TensorFlow is imported here.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from dreamerv2_tf.config import ConfigError

# Keys that count something and must be >= 1.
POSITIVE_INTS = (
    'envs', 'action_repeat', 'steps', 'eval_eps', 'train_every', 'train_steps',
    'env_max_failures', 'replay.capacity', 'replay.minlen', 'dataset.batch', 'dataset.length',
    'rssm.hidden', 'rssm.deter', 'rssm.stoch',
    'encoder.cnn_depth', 'decoder.cnn_depth', 'reward_head.units', 'discount_head.units',
    'actor.units', 'critic.units', 'imag_horizon', 'slow_target_update', 'disag_models',
    'expl_head.units')
# Keys where 0 is meaningful (none, disabled, never) and only negatives are wrong.
NON_NEGATIVE_INTS = {
    'seed': 'seeds are non-negative integers',
    'prefill': '0 means no random prefill beyond one episode',
    'pretrain': '0 means no pretraining updates',
    'time_limit': '0 disables the time limit',
    'log_every': '0 never logs training metrics',
    'eval_every': '0 never evaluates during training',
    'dataset.prefetch': '0 disables prefetching',
    'rssm.discrete': 'classes per categorical latent, 0 for Gaussian latents',
    'cpu_devices': '0 or 1 keep the CPU whole, N >= 2 splits it into N logical devices',
    'reward_head.layers': 'hidden layers', 'discount_head.layers': 'hidden layers',
    'actor.layers': 'hidden layers', 'critic.layers': 'hidden layers',
    'expl_head.layers': 'hidden layers',
    'expl_until': '0 lets the explorer act for the whole run',
    'disag_offset': '0 predicts the same step',
}
CHOICES = {
    'precision': (16, 32, 'bf16'),
    'actor.dist': ('auto', 'onehot', 'trunc_normal'),
    'actor_grad': ('auto', 'reinforce', 'dynamics', 'both'),
    'clip_rewards': ('tanh', 'identity'),
    'gym_image': ('obs', 'render'),
    'strategy': ('default', 'mirrored', 'multi_worker'),
    'expl_behavior': ('greedy', 'plan2explore', 'model_loss', 'Plan2Explore', 'ModelLoss'),
    'disag_target': ('stoch', 'deter', 'feat', 'embed'),
    'expl_model_loss': ('kl',),
    'rssm.std_act': ('softplus', 'sigmoid', 'sigmoid2'),
    **{f'{net}.norm': ('none', 'layer') for net in (
        'rssm', 'encoder', 'decoder', 'reward_head', 'discount_head', 'actor', 'critic',
        'expl_head')},
}
SCHEDULES = ('actor_ent', 'actor_grad_mix')
GRAD_HEADS = ('decoder', 'reward', 'discount')
# Float ranges: (low, high, low inclusive, high inclusive); None is unbounded.
FLOAT_RANGES = {
    'discount': (0.0, 1.0, False, True),
    'discount_lambda': (0.0, 1.0, True, True),
    'atari_sticky': (0.0, 1.0, True, True),
    'kl.balance': (0.0, 1.0, True, True),
    'kl.free': (0.0, None, True, False),
    'slow_target_fraction': (0.0, 1.0, False, True),
    'model_opt.lr': (0.0, None, False, False),
    'actor_opt.lr': (0.0, None, False, False),
    'critic_opt.lr': (0.0, None, False, False),
    'expl_opt.lr': (0.0, None, False, False),
    'expl_reward_norm.momentum': (0.0, 1.0, True, True),
    'actor.min_std': (0.0, None, True, False),
    'rssm.min_std': (0.0, None, True, False),
    'progress_every_s': (0.0, None, True, False),
}


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
  return ConfigError(f"Config key '{key}' is {value!r}; {allowed}.")


def _leaves(config: Mapping[str, Any], prefix: str = ''):
  for key, value in config.items():
    if isinstance(value, Mapping):
      yield from _leaves(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def validate(config: Mapping[str, Any], check_task: bool = True) -> None:
  """Raises ConfigError for the first value of `config` that cannot work (module docstring).

  Args:
    config: a full Config (load_config / train_cli.build_config), keys as in configs.yaml.
    check_task: also check the task name (envs.check_task: suite, Atari game, DMC task).
  Raises:
    ConfigError: one line naming the key, the value and what is allowed.
  """
  for key in POSITIVE_INTS:
    if int(config[key]) < 1:
      raise _fail(key, config[key], 'it must be a positive integer (>= 1)')
  for key, meaning in NON_NEGATIVE_INTS.items():
    if int(config[key]) < 0:
      raise _fail(key, config[key], f'it must be >= 0 ({meaning})')
  if int(config['dmc_camera']) < -1:
    raise _fail('dmc_camera', config['dmc_camera'],
                'allowed: -1 (camera 2 for quadruped, 0 otherwise) or a camera id >= 0')
  for key, choices in CHOICES.items():
    if config[key] not in choices:
      raise _fail(key, config[key], f'allowed: {", ".join(map(str, choices))}')
  for key, value in _leaves(config):
    if isinstance(value, float) and not math.isfinite(value):
      raise _fail(key, value, 'it must be a finite number')
  for key, (low, high, low_in, high_in) in FLOAT_RANGES.items():
    value = float(config[key])
    if ((low is not None and (value < low or (value == low and not low_in))) or
        (high is not None and (value > high or (value == high and not high_in)))):
      interval = (f'{"[" if low_in else "("}{"-inf" if low is None else low}, '
                  f'{"inf" if high is None else high}{"]" if high_in else ")"}')
      raise _fail(key, value, f'it must lie in {interval}')
  from dreamerv2_tf import schedule  # pylint: disable=import-outside-toplevel
  for key in SCHEDULES:
    try:
      schedule.parse(config[key])
    except ValueError as e:
      raise ConfigError(f"Config key '{key}': {e}") from None
  size = config['render_size']
  if (len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                            for s in size)):
    raise _fail('render_size', size, 'it must be two positive integers [height, width], e.g. '
                '[64, 64]')
  unknown = [h for h in config['grad_heads'] if h not in GRAD_HEADS]
  if unknown:
    raise _fail('grad_heads', list(config['grad_heads']),
                f'allowed heads: {", ".join(GRAD_HEADS)}')
  for part in ('encoder', 'decoder'):
    kernels = config[f'{part}.cnn_kernels']
    if not kernels or any(int(k) < 1 for k in kernels):
      raise _fail(f'{part}.cnn_kernels', list(kernels), 'it must be a non-empty list of '
                  'positive kernel sizes')
  _check_keys(config)
  _check_lengths(config)
  _check_conv_sizes(config)
  if check_task:
    from dreamerv2_tf import envs  # pylint: disable=import-outside-toplevel
    try:
      envs.check_task(config['task'])
    except ValueError as e:
      raise ConfigError(str(e)) from None


def _check_keys(config: Mapping[str, Any]) -> None:
  """encoder/decoder `cnn_keys`/`mlp_keys` compile as regexes; `mlp_layers` are widths >= 1."""
  import re  # pylint: disable=import-outside-toplevel
  for part in ('encoder', 'decoder'):
    for kind in ('cnn_keys', 'mlp_keys'):
      key = f'{part}.{kind}'
      if key not in config:
        continue
      try:
        re.compile(config[key])
      except re.error as e:
        raise _fail(key, config[key], f'it must be a regular expression over observation keys '
                    f"(e.g. 'image', '.*', '$^' for none): {e}") from None
    key = f'{part}.mlp_layers'
    if key in config and any(int(w) < 1 for w in config[key]):
      raise _fail(key, list(config[key]), 'it must be a list of positive layer widths')


def _check_lengths(config: Mapping[str, Any]) -> None:
  """Replay lengths against the episodes' longest possible length (module docstring)."""
  limit = int(config['time_limit'])
  minlen, length = int(config['replay.minlen']), int(config['dataset.length'])
  capacity = int(config['replay.capacity'])
  if length < 2:
    raise ConfigError(
        f"Config key 'dataset.length' is {length}; training sequences need at least 2 "
        'transitions (the world model learns from what follows the first row).')
  offset = int(config['disag_offset'])
  if config['expl_behavior'] in ('plan2explore', 'Plan2Explore') and offset >= length:
    raise ConfigError(
        f"Config key 'disag_offset' is {offset}; it must be below dataset.length ({length}) so "
        'that the ensemble has a target for some step of each sequence.')
  if limit > 0 and minlen > limit:
    raise ConfigError(
        f"Config key 'replay.minlen' is {minlen} agent steps, but with time_limit {limit} every "
        f'episode has at most {limit} agent steps ({limit + 1} transitions with the reset row): '
        f'no episode would be stored and prefill would never end. Use replay.minlen <= {limit} '
        'or a larger time_limit.')
  if limit > 0 and length > limit + 1:
    raise ConfigError(
        f"Config key 'dataset.length' is {length} transitions, but with time_limit {limit} "
        f'every episode has at most {limit + 1}: no training sequence could be sampled. Use '
        f'dataset.length <= {limit + 1} or a larger time_limit.')
  for key, value in (('replay.minlen', minlen), ('dataset.length', length - 1)):
    if capacity < value:
      raise ConfigError(
          f"Config key 'replay.capacity' is {capacity} agent steps, less than {key} {value} "
          f"agent steps{' (a sequence of ' + str(length) + ' transitions)' if key == 'dataset.length' else ''}: "
          'no episode long enough could be held in memory.')


IMAGE_SUITES = ('atari', 'dmc', 'crafter')


def conv_sizes(size: int, kernels) -> list[int]:
  """Spatial sizes through the encoder's stride-2 'valid' convs: [size, (size - k) // 2 + 1, ...];
  a size below 1 means the layer cannot be built (docs/reference.md §3)."""
  sizes = [int(size)]
  for kernel in kernels:
    sizes.append((sizes[-1] - int(kernel)) // 2 + 1)
  return sizes


def deconv_size(kernels) -> int:
  """Image size the decoder's stride-2 'valid' transposed convs produce from 1x1: s -> 2(s-1)+k."""
  size = 1
  for kernel in kernels:
    size = (size - 1) * 2 + int(kernel)
  return size


def _check_conv_sizes(config: Mapping[str, Any]) -> None:
  """Encoder and decoder kernels against `render_size` for the image suites (Atari, DMC,
  Crafter): every encoder layer needs an input at least as large as its kernel, and the decoder
  must produce exactly the image size. The default kernels: 64 -> 31 -> 14 -> 6 -> 2 and
  1 -> 5 -> 13 -> 30 -> 64."""
  suite = str(config['task']).split('_', 1)[0]
  if suite not in IMAGE_SUITES:
    return
  height, width = (int(s) for s in config['render_size'])
  kernels = list(config['encoder.cnn_kernels'])
  for axis, size in (('height', height), ('width', width)):
    sizes = conv_sizes(size, kernels)
    if min(sizes) < 1:
      layer = next(i for i, s in enumerate(sizes) if s < 1) - 1
      shown = ' -> '.join(str(s) for s in sizes[:layer + 1])
      raise ConfigError(
          f"Config key 'encoder.cnn_kernels' is {kernels}: image {axis} {size} shrinks "
          f'{shown} through the stride-2 convs, smaller than kernel {kernels[layer]} of layer '
          f'{layer + 1}, so the encoder cannot be built. Use fewer or smaller kernels, or a '
          'larger render_size.')
  kernels = list(config['decoder.cnn_kernels'])
  produced = deconv_size(kernels)
  if (produced, produced) != (height, width):
    raise ConfigError(
        f"Config key 'decoder.cnn_kernels' is {kernels}: its stride-2 transposed convs turn "
        f'1x1 into {produced}x{produced} images, not the render_size {height}x{width} the '
        'decoder must reconstruct (the default [5, 5, 6, 6] gives 64x64).')
