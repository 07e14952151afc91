"""Shared environment pieces: the docs/reference.md §1 transition format, action checks, worker processes.

Every environment of this package is a gymnasium env with the usual `(obs, reward, terminated,
truncated, info)` protocol, wrapped by `TransitionWrapper`, whose observations are the docs/reference.md §1
transition dicts:

  key          dtype    shape       meaning
  image        uint8    (H, W, C)   observation
  reward       float32  ()          reward received on entering this step (0 on reset)
  is_first     bool     ()          True on the reset step
  is_last      bool     ()          True on the final step (terminal or time limit)
  is_terminal  bool     ()          True only when the episode really ended
  action       float32  (A,)        the action that LED to this observation; zeros on reset
  <obs key>    any      any         further observations of a Dict observation space (e.g. DMC's
                                    proprioceptive vectors); `image` is absent when the env has none
  log_<name>   float32  ()          per-step values logged, never trained on (e.g. Crafter's)

Time alignment, one row per call:

  reset()        -> image_0, reward 0,   action zeros,  is_first True
  step(a_0)      -> image_1, reward r_1, action a_0
  ...
  step(a_{L-2})  -> image_{L-1}, ..., is_last True (is_terminal True only on a real game over)

Because the reward, `is_last` and `terminated`/`truncated` are also returned the gymnasium way,
gymnasium's vector API (AsyncVectorEnv, autoreset mode NEXT_STEP) works on these envs unchanged:
the step after an `is_last` step ignores its action and returns the reset transition.

`Env` is the single-environment object the rest of the package uses; `ProcessEnv` runs an env in a
worker process started without the parent's `__main__` module, so that the worker never imports
TensorFlow (TensorFlow and Mesa's renderer crash in one process, STACK.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import sys
import traceback
import types
from typing import Any, Callable

import gymnasium as gym
import numpy as np

TRANSITION_KEYS = ('image', 'reward', 'is_first', 'is_last', 'is_terminal', 'action')  # Atari/DMC

# Tolerance for actions that come from float32 network outputs (a straight-through one-hot
# sample is `sample + probs - stop_gradient(probs)`, which may be off by a few ulps).
ACTION_ATOL = 1e-3


@dataclasses.dataclass(frozen=True)
class ActSpace:
  """Action space of an environment as the agent sees it.

  Attributes:
    discrete: True for a one-hot action over `size` choices, False for a vector in [-1, 1].
    size: number of actions (discrete) or action dimensions (continuous).
  """
  discrete: bool
  size: int


def check_action(action: Any, act_space: ActSpace) -> np.ndarray:
  """Validates an agent action and returns it as a clean float32 vector of shape (A,).

  Discrete actions must be one-hot: every entry within ACTION_ATOL of 0 or 1 and exactly one
  near 1; the exact one-hot vector is returned. Continuous actions must lie in [-1, 1] (within
  ACTION_ATOL; returned clipped to [-1, 1]).

  Raises:
    ValueError: naming the action, when its shape is not (A,), it holds NaN or infinity, it is
      not one-hot (discrete), or it is out of [-1, 1] (continuous).
  """
  try:
    array = np.asarray(action, dtype=np.float32)
  except (TypeError, ValueError):
    raise ValueError(f'Action {action!r} is not a numeric array of shape ({act_space.size},).')
  if array.shape != (act_space.size,):
    raise ValueError(
        f'Action {array!r} has shape {array.shape}; expected ({act_space.size},) '
        f'({"one-hot over" if act_space.discrete else "vector of"} {act_space.size} '
        f'{"actions" if act_space.discrete else "dimensions"}).')
  # Fast path first (this runs on every agent step); the reason is worked out on failure.
  if act_space.discrete:
    index = int(array.argmax())
    clean = np.zeros(act_space.size, np.float32)
    clean[index] = 1
    if np.abs(array - clean).max() <= ACTION_ATOL:
      return clean
  elif np.abs(array).max() <= 1 + ACTION_ATOL:
    return np.clip(array, -1, 1)
  if not np.all(np.isfinite(array)):
    raise ValueError(f'Action {array!r} contains NaN or infinity.')
  if act_space.discrete:
    raise ValueError(
        f'Action {array!r} is not one-hot: a discrete action must have one entry 1 and the '
        f'other {act_space.size - 1} entries 0.')
  raise ValueError(f'Action {array!r} is out of range: continuous actions must lie in [-1, 1].')


RESERVED_KEYS = ('reward', 'is_first', 'is_last', 'is_terminal', 'action')


def observation_spaces(space: gym.Space) -> dict[str, gym.spaces.Box]:
  """{key: Box} of an inner env's observation: an (H, W, C) uint8 Box is {'image': space}; a
  Dict gives its own keys (each a Box, e.g. an image and vectors).

  Raises:
    TypeError: for any other space, or a Dict entry that is not a Box, naming it.
    ValueError: for a Dict key that is one of RESERVED_KEYS or starts with 'log_'.
  """
  if isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3:
    return {'image': space}
  if not isinstance(space, gym.spaces.Dict):
    raise TypeError(
        f'TransitionWrapper needs an (H, W, C) uint8 image observation or a Dict of Boxes, got '
        f'{space}.')
  spaces = {}
  for key, sub in space.spaces.items():
    if not isinstance(sub, gym.spaces.Box):
      raise TypeError(f"Observation key '{key}' has the space {sub}; only Boxes are allowed.")
    if key in RESERVED_KEYS or key.startswith('log_'):
      raise ValueError(
          f"Observation key '{key}' is reserved for the transition format (docs/reference.md §1: "
          f"{', '.join(RESERVED_KEYS)}, log_*); rename it.")
    spaces[key] = sub
  return spaces


def act_space_of(action_space: gym.spaces.Box) -> ActSpace:
  """The ActSpace of a transition env's `action_space`: Box(0, 1, (n,)) is one-hot over n
  actions (TransitionWrapper's encoding of Discrete), Box(-1, 1, (A,)) continuous."""
  low = np.asarray(action_space.low)
  return ActSpace(bool(np.all(low == 0)), int(action_space.shape[0]))


class TransitionWrapper(gym.Wrapper):
  """Turns a gymnasium env into one that yields docs/reference.md §1 transition dicts.

  The inner env's observation must be a uint8 Box of shape (H, W, C) (stored as `image`) or a
  Dict of Boxes (each key stored as is, e.g. `image` and proprioceptive vectors; keys that are
  transition fields are refused); its action space a Discrete(n) (the agent then sends one-hot
  vectors of size n) or a Box in [-1, 1] (vectors). The returned reward, `terminated` and
  `truncated` are the inner env's, unchanged, so time limits and gymnasium's vector autoreset
  keep working; `is_last = terminated or truncated`, `is_terminal = terminated`.

  `log_keys`: names of per-step log values the inner env puts in its `info` dict (e.g.
  Crafter's `log_achievement_*`); they become float32 scalar transition keys (0 on reset and
  whenever the info lacks them). The driver sums them over an episode.

  Raises:
    TypeError: if the inner env's spaces are not of those kinds.
    ValueError: an observation key that is reserved.
  """

  def __init__(self, env: gym.Env, log_keys: tuple[str, ...] = ()):
    super().__init__(env)
    self._obs_spaces = observation_spaces(env.observation_space)
    self._single = not isinstance(env.observation_space, gym.spaces.Dict)
    space = env.action_space
    if isinstance(space, gym.spaces.Discrete):
      self.act_space = ActSpace(True, int(space.n))
      action_box = gym.spaces.Box(0, 1, (int(space.n),), np.float32)
    elif isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
      if not (np.all(space.low == -1) and np.all(space.high == 1)):
        raise TypeError(f'Continuous actions must be a Box in [-1, 1], got {space}.')
      self.act_space = ActSpace(False, int(space.shape[0]))
      action_box = gym.spaces.Box(-1, 1, space.shape, np.float32)
    else:
      raise TypeError(f'TransitionWrapper needs a Discrete or 1-D Box action space, got {space}.')
    self.log_keys = tuple(log_keys)
    self.action_space = action_box
    self.observation_space = gym.spaces.Dict({
        **self._obs_spaces,
        'reward': gym.spaces.Box(-np.inf, np.inf, (), np.float32),
        'is_first': gym.spaces.Box(0, 1, (), bool),
        'is_last': gym.spaces.Box(0, 1, (), bool),
        'is_terminal': gym.spaces.Box(0, 1, (), bool),
        'action': action_box,
        **{k: gym.spaces.Box(-np.inf, np.inf, (), np.float32) for k in self.log_keys},
    })
    self._zeros = np.zeros(self.act_space.size, np.float32)

  def _observation(self, obs, info) -> dict:
    obs = {'image': obs} if self._single else {k: obs[k] for k in self._obs_spaces}
    for key in self.log_keys:
      obs[key] = np.float32(info.get(key, 0.0))
    return obs

  def reset(self, *, seed: int | None = None, options: dict | None = None):
    raw, info = self.env.reset(seed=seed, options=options)
    obs = self._observation(raw, {})
    obs.update(reward=np.float32(0), is_first=_TRUE, is_last=_FALSE, is_terminal=_FALSE,
               action=self._zeros.copy())
    return obs, info

  def step(self, action):
    action = check_action(action, self.act_space)
    inner = int(action.argmax()) if self.act_space.discrete else action
    raw, reward, terminated, truncated, info = self.env.step(inner)
    obs = self._observation(raw, info)
    obs.update(reward=np.float32(reward), is_first=_FALSE,
               is_last=np.bool_(terminated or truncated), is_terminal=np.bool_(terminated),
               action=action)
    return obs, reward, terminated, truncated, info


_TRUE, _FALSE = np.bool_(True), np.bool_(False)


def obs_space_of(space: gym.spaces.Dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """{key: (shape, dtype)} of a transition Dict space."""
  return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in space.spaces.items()}


class Env:
  """One environment yielding docs/reference.md §1 transition dicts (see the module docstring).

  Wraps a gymnasium env whose observations are already transition dicts (a `TransitionWrapper`
  or a `ProcessEnv` around one). The first `reset()` seeds the env with `seed`; later resets
  continue its random streams, so one seed gives one fixed sequence of episodes.

  Attributes:
    obs_space: {key: (shape, dtype)}, e.g. {'image': ((64, 64, 1), uint8), 'reward': ((),
      float32), ..., 'action': ((A,), float32)}.
    act_space: ActSpace.
    gym_env: the wrapped gymnasium env (tests reach the ALE through `gym_env.unwrapped`).
  """

  def __init__(self, gym_env: gym.Env, act_space: ActSpace, seed: int | None = None):
    self.gym_env = gym_env
    self.act_space = act_space
    self.obs_space = obs_space_of(gym_env.observation_space)
    self._seed = seed
    self._seeded = False
    self._closed = False
    self._needs_reset = True

  def reset(self) -> dict[str, np.ndarray]:
    """Starts an episode; returns its first transition (is_first True, reward 0, action zeros)."""
    seed = None if self._seeded else self._seed
    self._seeded = True
    obs, _ = self.gym_env.reset(seed=seed)
    self._needs_reset = False
    return obs

  def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
    """Applies `action` (float32 (A,): one-hot or in [-1, 1]); returns the next transition.

    Raises:
      ValueError: for an invalid action (see `check_action`).
      RuntimeError: before the first reset() or after an is_last transition.
    """
    if self._needs_reset:
      raise RuntimeError('Env.step() called before reset() or after an is_last transition; '
                         'call reset() to start the next episode.')
    obs, _, _, _, _ = self.gym_env.step(action)
    self._needs_reset = bool(obs['is_last'])
    return obs

  def close(self) -> None:
    if not self._closed:
      self._closed = True
      self.gym_env.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


@contextlib.contextmanager
def hidden_main_module():
  """Starts 'spawn' processes without re-importing the parent's `__main__` script.

  multiprocessing's spawn (and forkserver) start method re-runs the parent's main script in the
  child. A training script with a top-level `import tensorflow` would then load TensorFlow in
  the environment worker, which crashes as soon as Mesa renders (STACK.md). While this context
  is active `sys.modules['__main__']` is a blank module, so processes started in it import only
  what their target needs. Functions sent to them must live in importable modules.
  """
  main = sys.modules.get('__main__')
  sys.modules['__main__'] = types.ModuleType('__main__')
  try:
    yield
  finally:
    if main is not None:
      sys.modules['__main__'] = main


def spawn_context() -> multiprocessing.context.BaseContext:
  return multiprocessing.get_context('spawn')


def _worker(conn, env_fn: Callable[[], gym.Env]) -> None:
  """Worker process loop of ProcessEnv: builds the env, then serves reset/step/close."""
  try:
    env = env_fn()
    conn.send(('ok', (env.observation_space, env.action_space)))
  except BaseException:  # noqa: BLE001 (reported to the parent)
    conn.send(('error', traceback.format_exc()))
    conn.close()
    return
  try:
    while True:
      try:
        command, payload = conn.recv()
      except EOFError:
        break
      try:
        if command == 'reset':
          result = env.reset(seed=payload)
        elif command == 'step':
          result = env.step(payload)
        elif command == 'close':
          break
        else:
          raise ValueError(f'Unknown worker command {command!r}.')
        conn.send(('ok', result))
      except Exception as e:  # noqa: BLE001 (reported to the parent)
        conn.send(('raise', (e, traceback.format_exc())))
  finally:
    env.close()
    conn.close()


class WorkerError(RuntimeError):
  """An environment worker process failed; the message holds the worker's traceback."""


class ProcessEnv(gym.Env):
  """A gymnasium env that runs `env_fn()` in its own worker process (spawn, blank `__main__`).

  `env_fn` must be picklable (a module-level function or functools.partial of one) and return a
  gymnasium env. Errors raised by the env's `step`/`reset` (e.g. an invalid action) are
  re-raised here with their original type; a crashed worker raises WorkerError.

  Args:
    env_fn: builds the env inside the worker.
    timeout: seconds to wait for the worker to build the env.
  """

  def __init__(self, env_fn: Callable[[], gym.Env], timeout: float = 120.0):
    ctx = spawn_context()
    self._conn, child = ctx.Pipe()
    with hidden_main_module():
      self._process = ctx.Process(target=_worker, args=(child, env_fn), daemon=True)
      self._process.start()
    child.close()
    if not self._conn.poll(timeout):
      self._process.kill()
      raise WorkerError(f'Environment worker did not start within {timeout} s.')
    self.observation_space, self.action_space = self._receive()

  def _receive(self):
    try:
      status, payload = self._conn.recv()
    except EOFError:
      self._process.join(1)
      raise WorkerError(
          f'Environment worker died (exit code {self._process.exitcode}).') from None
    if status == 'error':
      raise WorkerError(f'Environment worker failed:\n{payload}')
    if status == 'raise':
      error, trace = payload
      raise error
    return payload

  def reset(self, *, seed: int | None = None, options: dict | None = None):
    self._conn.send(('reset', seed))
    return self._receive()

  def step(self, action):
    self._conn.send(('step', np.asarray(action)))
    return self._receive()

  def close(self):
    if self._process.is_alive():
      try:
        self._conn.send(('close', None))
      except (BrokenPipeError, OSError):
        pass
      self._process.join(10)
      if self._process.is_alive():
        self._process.kill()
        self._process.join()
    self._conn.close()


class LazyEnv(gym.Env):
  """An env whose spaces are known up front and which builds `env_fn()` on its first reset.

  gymnasium's AsyncVectorEnv builds one throwaway copy of each env in the parent process to read
  its spaces; with LazyEnv that copy costs nothing (no emulator, renderer or GL context in the
  parent). `env_fn` must be picklable; `spaces` = (observation_space, action_space) of the env it
  builds (e.g. read once by a `ProcessEnv`).
  """

  def __init__(self, env_fn: Callable[[], gym.Env], spaces: tuple[gym.Space, gym.Space]):
    self._env_fn = env_fn
    self._env = None
    self.observation_space, self.action_space = spaces

  def reset(self, *, seed: int | None = None, options: dict | None = None):
    if self._env is None:
      self._env = self._env_fn()
    return self._env.reset(seed=seed, options=options)

  def step(self, action):
    return self._env.step(action)

  def close(self):
    if self._env is not None:
      self._env.close()
      self._env = None
