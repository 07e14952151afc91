"""Any gymnasium environment as a DreamerV2 task: `gym_<id>` tasks and the Python API's envs.

Observation rules (`GymAdapter`; the result goes through `TransitionWrapper`, docs/reference.md §1):

  observation space                          transition keys
  Box uint8 (H, W, C) or (H, W)              image  uint8 (h, w, C) resized to `render_size`
  any other Box, MultiBinary                 vector float32 (n,), the values flattened
  Discrete(n)                                vector float32 (n,), one-hot
  Dict of the above                          its own keys, each converted as above
  anything else (MultiDiscrete, Text, Tuple, Graph, nested Dict, ...)  TypeError naming it

  With `image='render'` (config `gym_image: render`) the observation is ignored and the env's
  `render()` (render_mode 'rgb_array') is the `image`, resized to `render_size`: pixels-only
  learning on envs whose observation is a state vector (CartPole) or a symbolic grid (MiniGrid).

  The encoder takes the rank-3 keys matching `encoder.cnn_keys` and the rank-1 keys matching
  `encoder.mlp_keys` (regexes, configs.yaml); the decoder reconstructs those matching
  `decoder.cnn_keys` / `decoder.mlp_keys`.

Action rules:

  Discrete(n, start)   the agent sends one-hot vectors of size n; the env gets start + argmax
  Box, 1-D             the agent sends vectors in [-1, 1]; the env gets low + (a + 1) / 2 ·
                       (high − low) per dimension (dimensions with an infinite bound get a)
  anything else        TypeError naming the space

Episode ends: `terminated` → is_last and is_terminal; `truncated` (a time limit) → is_last only.
Config `time_limit` (agent steps, 0 = none) adds gymnasium's TimeLimit; `action_repeat` repeats
each action, summing the rewards and stopping at the episode's end.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Sequence

import cv2
import gymnasium as gym
import numpy as np

from dreamerv2_tf.envs.wrappers import TransitionWrapper

IMAGE_SOURCES = ('obs', 'render')
# Packages that register gymnasium ids when imported, by id prefix.
REGISTERING_PACKAGES = {'MiniGrid-': 'minigrid', 'BabyAI-': 'minigrid', 'ALE/': 'ale_py'}


def resize(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """uint8 (H, W, C) → (height, width, C), area interpolation when shrinking, linear else."""
  height, width = int(size[0]), int(size[1])
  if image.shape[:2] == (height, width):
    return image
  shrink = image.shape[0] > height or image.shape[1] > width
  method = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
  channels = [cv2.resize(np.ascontiguousarray(image[..., c]), (width, height),
                         interpolation=method) for c in range(image.shape[-1])]
  return np.stack(channels, -1).astype(np.uint8)


def _unsupported(key: str | None, space: gym.Space) -> TypeError:
  where = f"Observation key '{key}' has" if key else 'The observation has'
  return TypeError(
      f'{where} the unsupported space {space} ({type(space).__name__}). Supported: Box (uint8 '
      '(H, W, C) images, other Boxes as vectors), Discrete (one-hot), MultiBinary, and a Dict of '
      'those. Wrap the env (e.g. gymnasium.wrappers.FilterObservation or '
      'FlattenObservation) to turn it into one of these.')


class _Converter:
  """Converts one observation entry; `space` is the converted Box."""

  def __init__(self, key: str | None, space: gym.Space, size: Sequence[int]):
    self.size = tuple(int(s) for s in size)
    if isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) in (2, 3):
      channels = space.shape[2] if len(space.shape) == 3 else 1
      self.kind, self.space = 'image', gym.spaces.Box(0, 255, self.size + (channels,), np.uint8)
    elif isinstance(space, gym.spaces.Box):
      self.kind = 'vector'
      self.space = gym.spaces.Box(-np.inf, np.inf, (max(int(np.prod(space.shape)), 1),), np.float32)
    elif isinstance(space, gym.spaces.MultiBinary):
      self.kind = 'vector'
      self.space = gym.spaces.Box(0, 1, (int(np.prod(space.shape)),), np.float32)
    elif isinstance(space, gym.spaces.Discrete):
      self.kind, self.n, self.start = 'onehot', int(space.n), int(space.start)
      self.space = gym.spaces.Box(0, 1, (self.n,), np.float32)
    else:
      raise _unsupported(key, space)

  def __call__(self, value) -> np.ndarray:
    if self.kind == 'image':
      value = np.asarray(value, np.uint8)
      return resize(value[..., None] if value.ndim == 2 else value, self.size)
    if self.kind == 'vector':
      return np.asarray(value, np.float32).reshape(self.space.shape)
    out = np.zeros(self.n, np.float32)
    out[int(value) - self.start] = 1
    return out


class GymAdapter(gym.Wrapper):
  """A gymnasium env with the observation and action rules of the module docstring.

  Args:
    env: any gymnasium env.
    size: (height, width) of images in pixels (config `render_size`).
    image: 'obs' (images from the observation) or 'render' (only `env.render()`).
    action_repeat: env steps per agent step (>= 1).

  Raises:
    TypeError: an unsupported observation or action space, naming it; an env that is not a
      gymnasium Env.
    ValueError: a bad `image` or `action_repeat`, or `image='render'` on an env whose
      render_mode is not 'rgb_array'.
  """

  def __init__(self, env: gym.Env, size: Sequence[int] = (64, 64), image: str = 'obs',
               action_repeat: int = 1):
    if not isinstance(env, gym.Env):
      raise TypeError(f'Expected a gymnasium.Env, got {type(env).__name__}: {env!r}.')
    super().__init__(env)
    if image not in IMAGE_SOURCES:
      raise ValueError(f"image is {image!r}; allowed: {', '.join(IMAGE_SOURCES)}.")
    if int(action_repeat) < 1:
      raise ValueError(f'action_repeat must be >= 1, got {action_repeat}.')
    self._size, self._image, self._repeat = tuple(int(s) for s in size), image, int(action_repeat)
    self._setup_observation(env.observation_space)
    self._setup_action(env.action_space)

  def _setup_observation(self, space: gym.Space) -> None:
    if self._image == 'render':
      if self.env.render_mode != 'rgb_array':
        raise ValueError(
            f"Images from render() need render_mode='rgb_array'; this env has render_mode "
            f'{self.env.render_mode!r} (gymnasium.make(id, render_mode="rgb_array")).')
      self._converters = {}
      self.observation_space = gym.spaces.Box(0, 255, self._size + (3,), np.uint8)
      return
    self._single = not isinstance(space, gym.spaces.Dict)
    if not self._single:
      for key, sub in space.spaces.items():
        if isinstance(sub, gym.spaces.Dict):
          raise _unsupported(key, sub)
      self._converters = {k: _Converter(k, sub, self._size) for k, sub in space.spaces.items()}
    else:
      converter = _Converter(None, space, self._size)
      self._converters = {'image' if converter.kind == 'image' else 'vector': converter}
    self.observation_space = gym.spaces.Dict(
        {k: c.space for k, c in self._converters.items()})

  def _setup_action(self, space: gym.Space) -> None:
    if isinstance(space, gym.spaces.Discrete):
      self._start = int(space.start)
      self.action_space = gym.spaces.Discrete(int(space.n))
      self._low = self._high = None
    elif isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
      low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
      self._finite = np.isfinite(low) & np.isfinite(high)
      self._low, self._high = np.where(self._finite, low, -1), np.where(self._finite, high, 1)
      self._dtype = space.dtype
      self.action_space = gym.spaces.Box(-1, 1, space.shape, np.float32)
    else:
      raise TypeError(
          f'Unsupported action space {space} ({type(space).__name__}). Supported: Discrete '
          '(one-hot actions) and a 1-D Box (actions in [-1, 1], rescaled to its bounds).')

  def _observe(self, obs) -> Any:
    if self._image == 'render':
      frame = np.asarray(self.env.render(), np.uint8)[..., :3]
      return resize(frame, self._size)
    if self._single:
      (key, convert), = self._converters.items()
      return {key: convert(obs)}
    return {k: convert(obs[k]) for k, convert in self._converters.items()}

  def _inner_action(self, action):
    if self._low is None:
      return self._start + int(action)
    action = np.asarray(action, np.float64)
    scaled = self._low + (action + 1) / 2 * (self._high - self._low)
    return np.where(self._finite, scaled, action).astype(self._dtype)

  def reset(self, *, seed: int | None = None, options: dict | None = None):
    obs, info = self.env.reset(seed=seed, options=options)
    return self._observe(obs), info

  def step(self, action):
    inner = self._inner_action(action)
    total = 0.0
    for _ in range(self._repeat):
      obs, reward, terminated, truncated, info = self.env.step(inner)
      total += float(reward)
      if terminated or truncated:
        break
    return self._observe(obs), total, terminated, truncated, info


def wrap(env: gym.Env, size: Sequence[int] = (64, 64), image: str = 'obs',
         action_repeat: int = 1, time_limit: int = 0) -> TransitionWrapper:
  """`env` as a docs/reference.md §1 transition env (GymAdapter, then TimeLimit if `time_limit` > 0
  agent steps, then TransitionWrapper)."""
  env = GymAdapter(env, size, image, action_repeat)
  if time_limit:
    env = gym.wrappers.TimeLimit(env, max_episode_steps=int(time_limit))
  return TransitionWrapper(env)


def build_user(env_fn: Callable[[], gym.Env], size: Sequence[int], image: str,
               action_repeat: int, time_limit: int) -> TransitionWrapper:
  """Calls the zero-argument `env_fn` and wraps its env (see `wrap`).

  Raises:
    TypeError: when `env_fn` does not return a gymnasium Env, or its spaces are unsupported.
  """
  env = env_fn()
  if not isinstance(env, gym.Env):
    raise TypeError(f'The env factory {env_fn!r} returned {type(env).__name__}, not a '
                    'gymnasium.Env.')
  return wrap(env, size, image, action_repeat, time_limit)


def _import_registering(env_id: str) -> None:
  for prefix, module in REGISTERING_PACKAGES.items():
    if env_id.startswith(prefix):
      try:
        mod = importlib.import_module(module)
      except ImportError as e:
        raise ValueError(f"Task 'gym_{env_id}' needs the package {module!r} "
                         f'(pip install {module}): {e}') from None
      if module == 'ale_py':
        gym.register_envs(mod)


def check_id(env_id: str) -> None:
  """Checks that `env_id` is a registered gymnasium id (importing minigrid or ale-py first
  for their ids; 'module:Id' imports the module as gymnasium.make does).

  Raises:
    ValueError: for an unknown id, naming the closest registered ids.
  """
  _import_registering(env_id)
  module, _, name = env_id.rpartition(':')
  if module:
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise ValueError(f"Task 'gym_{env_id}': cannot import {module!r} ({e}).") from None
  if name in gym.registry:
    return
  close = difflib.get_close_matches(name, list(gym.registry), n=3, cutoff=0.6)
  hint = f' Did you mean: {", ".join("gym_" + c for c in close)}?' if close else ''
  raise ValueError(f"Unknown gymnasium id '{name}' (task 'gym_{env_id}').{hint} Any id of "
                   'gymnasium.registry works, e.g. gym_CartPole-v1, gym_MiniGrid-Empty-5x5-v0.')


def build_task(env_id: str, size: Sequence[int], image: str, action_repeat: int,
               time_limit: int) -> TransitionWrapper:
  """`gym_<env_id>`: gymnasium.make(env_id) (render_mode 'rgb_array' when images come from
  render()), wrapped as in `wrap`."""
  check_id(env_id)
  kwargs = {'render_mode': 'rgb_array'} if image == 'render' else {}
  return wrap(gym.make(env_id, **kwargs), size, image, action_repeat, time_limit)
