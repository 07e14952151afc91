"""Crafter (Hafner, 2021) as a DreamerV2 task: `crafter_reward` and `crafter_noreward`.

The `crafter` package's env (64×64×3 uint8 images at `render_size`, 17 discrete actions, episodes
of at most 10,000 agent steps, action repeat 1) behind the gymnasium API: death is `terminated`
(is_terminal True), the 10,000-step limit `truncated` (is_last only). `crafter_noreward` gives
reward 0 on every step (the unsupervised setting); both log the task reward as `log_reward`.

Logs, as transition keys (float32 scalars, summed over an episode by the driver):
  log_reward               the task reward of the step (also in crafter_noreward)
  log_achievement_<name>   how many times the achievement <name> was unlocked on this step, so
                           the episode sum is the count of the authors' `log_keys_max` (their
                           per-episode max of the running count) and > 0 means unlocked
for the 22 achievements of `crafter.constants.achievements`.

Seeds: crafter seeds its world generator at construction; `reset(seed=s)` restarts it at `s`
(episode i of the stream then uses the world seed hash((s, i))), later resets continue.
"""

from __future__ import annotations

from typing import Sequence

import gymnasium as gym
import numpy as np

from dreamerv2_tf.envs.wrappers import TransitionWrapper

TASKS = ('reward', 'noreward')
LENGTH = 10000  # agent steps per episode at most (crafter's default)


def check_task(name: str) -> None:
  """Raises ValueError unless `name` is 'reward' or 'noreward' (the part after 'crafter_')."""
  if name not in TASKS:
    raise ValueError(f"Unknown Crafter task 'crafter_{name}'; allowed: "
                     f"{', '.join('crafter_' + t for t in TASKS)}.")


def achievement_keys() -> tuple[str, ...]:
  """('log_achievement_collect_coal', ...): the 22 achievements of the crafter package."""
  import crafter  # pylint: disable=import-outside-toplevel
  return tuple(f'log_achievement_{name}' for name in crafter.constants.achievements)


class CrafterEnv(gym.Env):
  """The crafter package's Env as a gymnasium env (image observation, Discrete(17) actions).

  Args:
    reward: False for crafter_noreward (reward 0 on every step).
    size: (height, width) of the image in pixels.
    length: agent steps per episode at most.

  Raises:
    ValueError: when the crafter package is not installed (pip install crafter).
  """

  metadata = {'render_modes': []}

  def __init__(self, reward: bool = True, size: Sequence[int] = (64, 64), length: int = LENGTH):
    try:
      import crafter  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ValueError(f'Crafter tasks need the crafter package (pip install crafter): {e}') from None
    self._env = crafter.Env(size=tuple(int(s) for s in size), reward=bool(reward),
                            length=int(length), seed=0)
    self._names = tuple(crafter.constants.achievements)
    self.observation_space = gym.spaces.Box(0, 255, tuple(int(s) for s in size) + (3,), np.uint8)
    self.action_space = gym.spaces.Discrete(int(self._env.action_space.n))
    self._counts = dict.fromkeys(self._names, 0)

  def reset(self, *, seed: int | None = None, options: dict | None = None):
    super().reset(seed=seed)
    if seed is not None:
      # The world seed of episode i is hash((env._seed, i)); restart that stream at `seed`.
      self._env._seed = int(seed)  # pylint: disable=protected-access
      self._env._episode = 0  # pylint: disable=protected-access
    image = self._env.reset()
    self._counts = dict.fromkeys(self._names, 0)
    return image, {}

  def step(self, action):
    image, reward, done, info = self._env.step(int(action))
    terminated = bool(info['discount'] == 0)
    truncated = bool(done and not terminated)
    logs = {'log_reward': float(info['reward'])}
    for name in self._names:
      count = int(info['achievements'].get(name, 0))
      logs[f'log_achievement_{name}'] = float(count - self._counts[name])
      self._counts[name] = count
    return image, float(reward), terminated, truncated, logs


def build_crafter(name: str, size: Sequence[int] = (64, 64), time_limit: int = 0
                  ) -> TransitionWrapper:
  """`crafter_<name>` wrapped to docs/reference.md §1 transitions with the log keys of the module
  docstring; `time_limit` > 0 (agent steps) ends episodes earlier as truncated."""
  check_task(name)
  env = CrafterEnv(name == 'reward', size)
  if time_limit:
    env = gym.wrappers.TimeLimit(env, max_episode_steps=int(time_limit))
  return TransitionWrapper(env, log_keys=('log_reward',) + achievement_keys())
