"""Atari through gymnasium + ale-py, preprocessed as in docs/reference.md §2.

Chain built by `make_atari` (innermost first):

  gymnasium.make('ALE/<Game>-v5', frameskip=1, repeat_action_probability=sticky (0.25),
                 full_action_space=False, max_num_frames_per_episode=0, obs_type='ram')
      the v5 registration's 108,000-frame cap is disabled (0 = no cap in the ALE), so only the
      agent-step time limit below ends long episodes; obs_type 'ram' only because the wrapper
      reads the screen from the ALE itself (saves a screen copy on every frame);
  AtariPreprocessing(noop_max=30, frame_skip=action_repeat (4), screen_size=64, grayscale,
                     INTER_AREA resize, terminal_on_life_loss=False, scale_obs=False)
      gymnasium's own wrapper: up to 30 no-ops on reset, each agent step = 4 ALE frames with the
      max over the last two; subclassed only to return the true last frame on a game over;
  TimeLimit(time_limit agent steps, 27,000 for Atari; 0 = none)
      a time-limit end is `truncated` -> is_last True, is_terminal False;
  TransitionWrapper
      docs/reference.md §1 dicts; one-hot actions of size = number of actions (6 for Pong).

Rewards are the raw game score summed over the frames of one agent step (no clipping here).
Task names: `atari_<game>` with <game> in snake_case: every ROM id of ale-py
(`ale_py.roms.get_all_rom_ids()`) plus the aliases of the published score files
(`james_bond` -> ALE's `jamesbond`).
"""

from __future__ import annotations

import difflib
from typing import Sequence

import ale_py
import ale_py.roms
import gymnasium as gym
import numpy as np
from gymnasium.wrappers import AtariPreprocessing, TimeLimit

from dreamerv2_tf.envs.wrappers import TransitionWrapper

gym.register_envs(ale_py)

# snake_case names used by the published score files that differ from ale-py's ROM ids.
ALIASES = {'james_bond': 'jamesbond'}


def rom_id(game: str) -> str:
  """ale-py ROM id of a snake_case game name, e.g. 'james_bond' -> 'jamesbond'.

  Raises:
    ValueError: for an unknown game, naming it and the closest valid names.
  """
  rom = ALIASES.get(game, game)
  roms = ale_py.roms.get_all_rom_ids()
  if rom not in roms:
    close = difflib.get_close_matches(game, list(roms) + list(ALIASES), n=4, cutoff=0.6)
    hint = f' Did you mean: {", ".join("atari_" + c for c in close)}?' if close else ''
    raise ValueError(
        f"Unknown Atari game '{game}' (task 'atari_{game}').{hint} Valid games are the ROM ids "
        f"of ale-py in snake_case, e.g. atari_pong, atari_james_bond, atari_montezuma_revenge.")
  return rom


def ale_env_id(game: str) -> str:
  """Gymnasium id of the game's v5 environment, e.g. 'james_bond' -> 'ALE/Jamesbond-v5'."""
  rom = rom_id(game)
  return f'ALE/{rom.title().replace("_", "")}-v5'


class _AtariPreprocessing(AtariPreprocessing):
  """gymnasium's AtariPreprocessing, returning the true last frame when the game ends.

  The base wrapper stops its frame loop on game over before reading the screen and returns the
  previous step's frame again (as old gym did). The authors' release inherited that; docs/reference.md §8
  lists it as a bug not to reproduce, so on `terminated` the observation is rebuilt from the
  final screen.
  """

  def __init__(self, env: gym.Env, **kwargs):
    super().__init__(env, **kwargs)
    # The frames are read straight from the ALE, whatever the inner env's observation type (the
    # factory uses obs_type='ram' so that no full screen is copied on every skipped frame).
    height, width = self.ale.getScreenDims()
    shape = (height, width) if self.grayscale_obs else (height, width, 3)
    self.obs_buffer = [np.empty(shape, np.uint8), np.empty(shape, np.uint8)]

  def step(self, action):
    obs, reward, terminated, truncated, info = super().step(action)
    if terminated or truncated:
      if self.grayscale_obs:
        self.ale.getScreenGrayscale(self.obs_buffer[0])
      else:
        self.ale.getScreenRGB(self.obs_buffer[0])
      self.obs_buffer[1].fill(0)
      obs = self._get_obs()
    return obs, reward, terminated, truncated, info


def wrap_atari(env: gym.Env, size: Sequence[int] = (64, 64), grayscale: bool = True,
               action_repeat: int = 4, time_limit: int = 27000,
               noop_max: int = 30) -> TransitionWrapper:
  """Applies docs/reference.md §2 preprocessing to an ALE gymnasium env created with frameskip=1.

  Args:
    env: an ALE env (`gym.make('ALE/<Game>-v5', frameskip=1, ...)`).
    size: (height, width) of the observation in pixels.
    grayscale: (H, W, 1) grayscale if True, else (H, W, 3) RGB.
    action_repeat: ALE frames per agent step (4).
    time_limit: agent steps per episode (27,000 = 108,000 frames); 0 disables.
    noop_max: maximum no-op frames on reset (drawn uniformly from 1..noop_max).

  Raises:
    ValueError: if the env's own frameskip is not 1 (it would repeat actions twice over),
      or for a non-positive action_repeat / negative time_limit.
  """
  frameskip = getattr(env.unwrapped, '_frameskip', None)
  if frameskip != 1:
    raise ValueError(
        f'The Atari env has its own frameskip={frameskip!r}; create it with frameskip=1 so that '
        f'only AtariPreprocessing repeats actions (action_repeat={action_repeat} frames per step).')
  if int(action_repeat) < 1:
    raise ValueError(f'action_repeat must be >= 1 ALE frames per agent step, got {action_repeat}.')
  if int(time_limit) < 0:
    raise ValueError(f'time_limit must be >= 0 agent steps (0 disables), got {time_limit}.')
  height, width = (int(s) for s in size)
  env = _AtariPreprocessing(
      env, noop_max=noop_max, frame_skip=int(action_repeat), screen_size=(width, height),
      terminal_on_life_loss=False, grayscale_obs=grayscale, grayscale_newaxis=True,
      scale_obs=False)
  if time_limit:
    env = TimeLimit(env, max_episode_steps=int(time_limit))
  return TransitionWrapper(env)


def make_atari(game: str, size: Sequence[int] = (64, 64), grayscale: bool = True,
               sticky: float = 0.25, full_action_space: bool = False, action_repeat: int = 4,
               time_limit: int = 27000) -> TransitionWrapper:
  """Builds the docs/reference.md §2 Atari env for a snake_case game name (see the module docstring).

  Seeding happens on the first `reset(seed=...)`: it seeds both the ALE (sticky actions) and
  the no-op count.

  Raises:
    ValueError: unknown game, or sticky not in [0, 1].
  """
  if not 0.0 <= float(sticky) <= 1.0:
    raise ValueError(f'atari_sticky must be a probability in [0, 1], got {sticky}.')
  env = gym.make(
      ale_env_id(game), frameskip=1, repeat_action_probability=float(sticky),
      full_action_space=bool(full_action_space), max_num_frames_per_episode=0,
      obs_type='ram', disable_env_checker=True)
  return wrap_atari(env, size, grayscale, action_repeat, time_limit)

