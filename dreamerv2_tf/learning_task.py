"""The learning check's task, evaluation loop and return curves, without TensorFlow.

This module imports only numpy and gymnasium (and minigrid when a task is built), so that the
authors' release, which runs in its own virtual environment with TensorFlow 2.15, can load it
by file path (`scripts/peer_learning_check.py`) and play exactly the same episodes.

Task (`make_task`): a MiniGrid grid world (Chevalier-Boisvert et al., the Farama `minigrid`
package), by default `MiniGrid-Empty-5x5-v0`: the agent starts in the top-left cell facing
right and must reach the green goal square in the bottom-right; the shortest path takes 5 agent
steps (forward, forward, turn right, forward, forward). Observation: the whole grid rendered as
RGB (`RGBImgObsWrapper`, 8 pixels per cell, 40×40 for the 5×5 grid) enlarged to 64×64×3 uint8
by nearest neighbour. Actions: Discrete(3) = turn left, turn right, move forward (MiniGrid's
actions 0, 1, 2; pick up, drop, toggle and done do nothing in this task and are left out).
Reward: MiniGrid's `1 - 0.9 * (steps taken / max_steps)` on reaching the goal (the episode then
terminates), 0 otherwise; the episode is truncated after `max_steps` agent steps. With
`max_steps=30`, the optimum is 1 - 0.9 * 5 / 30 = 0.85 and a uniform random policy reaches the
goal in about 31% of episodes (mean return about 0.13). No action repeat: 1 frame per agent step.

Units: every count here is in agent steps (= frames for this task).
"""

from __future__ import annotations

import pathlib
from typing import Callable, Sequence

import gymnasium as gym
import numpy as np

DEFAULT_TASK = 'MiniGrid-Empty-5x5-v0'
DEFAULT_MAX_STEPS = 30
IMAGE_SIZE = 64
TILE_SIZE = 8
NUM_ACTIONS = 3  # turn left, turn right, move forward


def optimal_return(max_steps: int = DEFAULT_MAX_STEPS, shortest: int = 5) -> float:
  """MiniGrid's reward for reaching the goal after `shortest` agent steps (5 in Empty-5x5)."""
  return 1.0 - 0.9 * shortest / max_steps


class FirstActions(gym.ActionWrapper):
  """Restricts a Discrete(n) action space to its first `num` actions (identity mapping)."""

  def __init__(self, env: gym.Env, num: int):
    super().__init__(env)
    if not 1 <= num <= env.action_space.n:
      raise ValueError(f'num actions must be in [1, {env.action_space.n}], got {num}.')
    self.action_space = gym.spaces.Discrete(num)

  def action(self, action):
    action = int(action)
    if not 0 <= action < self.action_space.n:
      raise ValueError(f'Action {action} is out of range [0, {self.action_space.n}).')
    return action


def enlarge(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
  """Nearest-neighbour resize of an [H, W, C] uint8 image to [size, size, C] uint8."""
  rows = np.arange(size) * image.shape[0] // size
  cols = np.arange(size) * image.shape[1] // size
  return np.ascontiguousarray(image[rows][:, cols])


def make_task(task: str = DEFAULT_TASK, max_steps: int = DEFAULT_MAX_STEPS,
              size: int = IMAGE_SIZE) -> gym.Env:
  """A gymnasium env: obs uint8 [size, size, 3] (whole grid), Discrete(3) actions.

  Args:
    task: a registered MiniGrid id, e.g. 'MiniGrid-Empty-5x5-v0'.
    max_steps: agent steps before truncation (MiniGrid's `max_steps`; also scales its reward).
    size: output image height and width in pixels.

  Raises:
    ValueError: for a task id that is not a registered MiniGrid env, or max_steps < 1.
  """
  import minigrid  # pylint: disable=import-outside-toplevel,unused-import  (registers the ids)
  from minigrid.wrappers import ImgObsWrapper, RGBImgObsWrapper  # pylint: disable=import-outside-toplevel
  if int(max_steps) < 1:
    raise ValueError(f'max_steps must be >= 1 agent steps, got {max_steps}.')
  if task not in gym.registry or not task.startswith('MiniGrid-'):
    known = sorted(k for k in gym.registry if k.startswith('MiniGrid-Empty'))
    raise ValueError(f"Unknown MiniGrid task '{task}'; e.g. {', '.join(known)}.")
  env = gym.make(task, max_steps=int(max_steps))
  env = ImgObsWrapper(RGBImgObsWrapper(env, tile_size=TILE_SIZE))
  space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
  env = gym.wrappers.TransformObservation(env, lambda obs: enlarge(obs, size), space)
  return FirstActions(env, NUM_ACTIONS)


def play(env: gym.Env, policy: Callable[[dict], int], episodes: int,
         seed: int) -> tuple[list[float], list[int]]:
  """Plays `episodes` episodes; returns (returns, lengths in agent steps).

  `policy(transition) -> action index` sees transitions shaped like docs/reference.md §1 (image, reward,
  is_first, is_last, is_terminal); it is called once per agent step, first with the reset
  transition (is_first True). The env is seeded once, with `seed`, on the first reset.
  """
  returns, lengths = [], []
  for episode in range(int(episodes)):
    obs, _ = env.reset(seed=int(seed) if episode == 0 else None)
    tran = dict(image=obs, reward=0.0, is_first=True, is_last=False, is_terminal=False)
    total, steps = 0.0, 0
    while True:
      obs, reward, terminated, truncated, _ = env.step(policy(tran))
      total, steps = total + float(reward), steps + 1
      if terminated or truncated:
        break
      tran = dict(image=obs, reward=float(reward), is_first=False, is_last=False,
                  is_terminal=False)
    returns.append(total)
    lengths.append(steps)
  return returns, lengths


def random_policy(seed: int) -> Callable[[dict], int]:
  """Uniform random actions over NUM_ACTIONS from numpy's default_rng(seed)."""
  rng = np.random.default_rng(seed)
  return lambda tran: int(rng.integers(NUM_ACTIONS))


def episode_curve(directory: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Training-episode returns in the order they were saved, from a replay folder of `.npz`
  episode files (this project's and the authors' file names both start with a timestamp and
  end in `-<transitions>.npz`).

  Returns:
    (steps, returns): float64 [E] each; steps = cumulative agent steps at the end of each episode
    (an episode of L transitions has L - 1 agent steps), returns = sum of its rewards.
  """
  files = sorted(pathlib.Path(directory).glob('*.npz'))
  returns, lengths = [], []
  for path in files:
    with np.load(path) as data:
      reward = np.asarray(data['reward'], np.float64)
    returns.append(float(reward.sum()))
    lengths.append(len(reward) - 1)
  return np.cumsum(np.asarray(lengths, np.float64)), np.asarray(returns, np.float64)


def binned(steps: np.ndarray, values: np.ndarray, every: int,
           total: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Mean of `values` whose `steps` fall in each bin [k*every, (k+1)*every); empty bins NaN.

  Returns (bin end steps [K], means [K]) with K = ceil(total / every), total defaulting to the
  last step.
  """
  total = int(steps[-1]) if total is None and len(steps) else int(total or 0)
  count = max(1, -(-total // int(every)))
  index = np.minimum((np.asarray(steps) - 1) // int(every), count - 1).astype(int)
  sums = np.bincount(index, values, minlength=count)[:count]
  counts = np.bincount(index, minlength=count)[:count]
  with np.errstate(invalid='ignore', divide='ignore'):
    means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
  return (np.arange(count) + 1) * int(every), means


def summarize(values: Sequence[float]) -> dict[str, float]:
  """{'mean', 'std' (population), 'success' (fraction > 0)} of a list of returns."""
  values = np.asarray(values, np.float64)
  return dict(mean=float(values.mean()), std=float(values.std()),
              success=float((values > 0).mean()))
