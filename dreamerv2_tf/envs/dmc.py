"""DeepMind Control Suite with pixel observations (docs/reference.md §2), rendered in a TF-free process.

`dmc_<domain>_<task>` (e.g. `dmc_walker_walk`, `dmc_ball_in_cup_catch`): the dm_control suite
task, action repeat 2 (config `action_repeat`; rewards summed over the repeats, the image
rendered after the last one), 64x64 RGB from camera 2 for quadruped and 0 otherwise (config
`dmc_camera` >= 0 overrides), actions in [-1, 1] rescaled to the task's bounds. The suite's own
1,000-physics-step limit ends episodes after 500 agent steps as `truncated` (is_last True,
is_terminal False); a step with discount 0 (no suite task has one) would be a terminal.

Rendering is headless through Mesa: MUJOCO_GL defaults to 'egl' (libegl1 + libegl-mesa0, on the
base image; set MUJOCO_GL=osmesa to use libosmesa6 instead). TensorFlow and Mesa crash in one
process (STACK.md), so dm_control is only ever imported inside worker processes: this module
does not import it at top level, `DMCEnv` loads it lazily, and the factory (`make_env`,
`make_vec_env`) builds it only inside worker processes.
Rendering is sped up by `vis.quality.offsamples = 0` (no multisampling) and `shadowsize = 0`
(no shadow map), set before the first render.
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
from typing import Sequence

import gymnasium as gym
import numpy as np

from dreamerv2_tf.envs.wrappers import ProcessEnv, TransitionWrapper

# Domains of the dm_control suite, to split `<domain>_<task>` where either part has underscores.
DOMAINS = (
    'acrobot', 'ball_in_cup', 'cartpole', 'cheetah', 'dog', 'finger', 'fish', 'hopper',
    'humanoid_CMU', 'humanoid', 'lqr', 'manipulator', 'pendulum', 'point_mass', 'quadruped',
    'reacher', 'stacker', 'swimmer', 'walker')


# Tasks of dm_control 1.0.50's suite (`suite.ALL_TASKS`), so a task name can be checked in a
# process that must not import dm_control (tests/test_config.py compares it with the suite).
TASKS = {
    'acrobot': ('swingup', 'swingup_sparse'),
    'ball_in_cup': ('catch',),
    'cartpole': ('balance', 'balance_sparse', 'swingup', 'swingup_sparse', 'three_poles',
                 'two_poles'),
    'cheetah': ('run',),
    'dog': ('fetch', 'run', 'stand', 'trot', 'walk'),
    'finger': ('spin', 'turn_easy', 'turn_hard'),
    'fish': ('swim', 'upright'),
    'hopper': ('hop', 'stand'),
    'humanoid': ('run', 'run_pure_state', 'stand', 'walk'),
    'humanoid_CMU': ('run', 'stand', 'walk'),
    'lqr': ('lqr_2_1', 'lqr_6_2'),
    'manipulator': ('bring_ball', 'bring_peg', 'insert_ball', 'insert_peg'),
    'pendulum': ('swingup',),
    'point_mass': ('easy', 'hard'),
    'quadruped': ('escape', 'fetch', 'run', 'walk'),
    'reacher': ('easy', 'hard'),
    'stacker': ('stack_2', 'stack_4'),
    'swimmer': ('swimmer15', 'swimmer6'),
    'walker': ('run', 'stand', 'walk'),
}


def check_task(name: str) -> tuple[str, str]:
  """Checks `<domain>_<task>` against the suite's tasks (`TASKS`) without importing dm_control;
  returns (domain, task).

  Raises:
    ValueError: an unknown domain (lists the domains) or task (lists the domain's tasks and
      the closest names).
  """
  domain, task = split_task(name)
  tasks = TASKS.get(domain, ())
  if task not in tasks:
    every = [f'dmc_{d}_{t}' for d, ts in TASKS.items() for t in ts]
    close = difflib.get_close_matches(f'dmc_{name}', every, n=3, cutoff=0.6)
    hint = f' Did you mean: {", ".join(close)}?' if close else ''
    raise ValueError(
        f"Unknown DMC task 'dmc_{name}'.{hint} Tasks of the domain {domain}: "
        f"{', '.join(f'dmc_{domain}_{t}' for t in tasks)}.")
  return domain, task


def split_task(name: str) -> tuple[str, str]:
  """'ball_in_cup_catch' -> ('ball_in_cup', 'catch').

  Raises:
    ValueError: if the name starts with no known domain.
  """
  for domain in sorted(DOMAINS, key=len, reverse=True):
    if name.startswith(domain + '_') and len(name) > len(domain) + 1:
      return domain, name[len(domain) + 1:]
  raise ValueError(
      f"Unknown DMC task 'dmc_{name}': expected dmc_<domain>_<task> with a domain among "
      f"{', '.join(DOMAINS)}, e.g. dmc_walker_walk, dmc_cheetah_run, dmc_ball_in_cup_catch.")


def default_camera(domain: str, camera: int = -1) -> int:
  """Camera id: `camera` if >= 0, else 2 for quadruped and 0 otherwise (docs/reference.md §2)."""
  if camera >= 0:
    return int(camera)
  return 2 if domain == 'quadruped' else 0


class DMCEnv(gym.Env):
  """A dm_control suite task as a gymnasium env with a Dict observation: `image` uint8
  (H, W, 3) rendered, plus the task's own observations as float32 arrays of their spec shapes
  (walker: orientations (14,), height (), velocity (9,)), empty ones left out. Rank-1 entries
  feed the MLP encoder of `dmc_proprio` (scalars such as walker's height are never encoded, as
  in the authors' release); `dmc_vision` encodes the image only.

  dm_control is imported and the task loaded on the first `reset` (or at construction when
  `spaces` is None, which needs the task to read its action bounds). Build it only in a process
  that has not imported TensorFlow; it refuses otherwise rather than crash.

  Args:
    domain, task: suite names, e.g. 'walker', 'walk'.
    size: (height, width) of the rendered image in pixels.
    camera: camera id for rendering.
    action_repeat: physics control steps per agent step (2).
    spaces: (observation_space, action_space) if already known (lazy construction, used by the
      vector env, whose parent process builds a throwaway copy of each env).

  Raises:
    RuntimeError: if TensorFlow is loaded in this process when dm_control is needed.
    ValueError: unknown domain/task, or action_repeat < 1.
  """

  metadata = {'render_modes': []}

  def __init__(self, domain: str, task: str, size: Sequence[int] = (64, 64), camera: int = 0,
               action_repeat: int = 2, spaces: tuple[gym.Space, gym.Space] | None = None):
    if int(action_repeat) < 1:
      raise ValueError(f'action_repeat must be >= 1 control steps per agent step, got {action_repeat}.')
    self._domain, self._task = domain, task
    self._size = tuple(int(s) for s in size)
    self._camera = int(camera)
    self._repeat = int(action_repeat)
    self._env = None
    if spaces is None:
      self._load(seed=None)
    else:
      self.observation_space, self.action_space = spaces

  def _load(self, seed: int | None) -> None:
    if 'tensorflow' in sys.modules:
      raise RuntimeError(
          'dm_control must not be loaded in a process that imported TensorFlow (Mesa rendering '
          'crashes there, STACK.md); DMC envs run in worker processes (make_env / make_vec_env).')
    os.environ.setdefault('MUJOCO_GL', 'egl')
    from dm_control import suite  # pylint: disable=g-import-not-at-top
    if (self._domain, self._task) not in suite.ALL_TASKS:
      tasks = [f'dmc_{d}_{t}' for d, t in suite.ALL_TASKS if d == self._domain]
      raise ValueError(
          f"Unknown DMC task 'dmc_{self._domain}_{self._task}'. Tasks of this domain: "
          f"{', '.join(tasks) or 'none (unknown domain)'}.")
    if self._env is not None:
      self._env.close()
    self._env = suite.load(self._domain, self._task, task_kwargs={'random': seed})
    quality = self._env.physics.model.vis.quality
    quality.offsamples = 0
    quality.shadowsize = 0
    spec = self._env.action_spec()
    self._low = np.asarray(spec.minimum, np.float64) * np.ones(spec.shape)
    self._high = np.asarray(spec.maximum, np.float64) * np.ones(spec.shape)
    spaces = {'image': gym.spaces.Box(0, 255, self._size + (3,), np.uint8)}
    for key, value in self._env.observation_spec().items():
      if value.shape != (0,):  # empty entries carry nothing (the authors skip them too)
        spaces[key] = gym.spaces.Box(-np.inf, np.inf, tuple(value.shape), np.float32)
    self.observation_space = gym.spaces.Dict(spaces)
    self.action_space = gym.spaces.Box(-1, 1, spec.shape, np.float32)

  def _observe(self, time_step) -> dict[str, np.ndarray]:
    height, width = self._size
    obs = {'image': self._env.physics.render(height, width, camera_id=self._camera)}
    for key in self.observation_space.spaces:
      if key != 'image':
        obs[key] = np.asarray(time_step.observation[key], np.float32)
    return obs

  def reset(self, *, seed: int | None = None, options: dict | None = None):
    super().reset(seed=seed)
    if self._env is None or seed is not None:
      self._load(seed)
    return self._observe(self._env.reset()), {}

  def step(self, action):
    action = np.asarray(action, np.float64)
    scaled = self._low + (action + 1) / 2 * (self._high - self._low)
    reward = 0.0
    for _ in range(self._repeat):
      time_step = self._env.step(scaled)
      reward += time_step.reward or 0.0
      if time_step.last():
        break
    terminated = bool(time_step.last() and time_step.discount == 0)
    truncated = bool(time_step.last() and not terminated)
    return self._observe(time_step), reward, terminated, truncated, {}

  def close(self):
    if self._env is not None:
      self._env.close()
      self._env = None


def build_dmc(name: str, size: Sequence[int] = (64, 64), camera: int = -1,
              action_repeat: int = 2, time_limit: int = 0,
              spaces: tuple[gym.Space, gym.Space] | None = None) -> TransitionWrapper:
  """The DMC env wrapped to docs/reference.md §1 transitions, in this process (a worker's job).

  `name` is `<domain>_<task>`; `time_limit` (agent steps, 0 = the suite's own limit only);
  `spaces` are the inner DMCEnv's spaces for lazy construction.
  """
  domain, task = split_task(name)
  env = DMCEnv(domain, task, size, default_camera(domain, camera), action_repeat, spaces)
  if time_limit:
    env = gym.wrappers.TimeLimit(env, max_episode_steps=int(time_limit))
  return TransitionWrapper(env)


def _probe(name: str, size: Sequence[int], camera: int, action_repeat: int):
  env = build_dmc(name, size, camera, action_repeat)
  inner = env.env.unwrapped
  spaces = (inner.observation_space, inner.action_space)
  env.close()
  return spaces


@functools.lru_cache(maxsize=None)
def probe_spaces(name: str, size: tuple[int, ...], camera: int,
                 action_repeat: int) -> tuple[gym.Space, gym.Space]:
  """Inner (image, action) spaces of a DMC task, read in a short-lived TF-free worker process."""
  check_task(name)  # fail fast on a bad name, before starting a process
  probe = ProcessEnv(functools.partial(_ProbeEnv, name, size, camera, action_repeat))
  spaces = probe.observation_space, probe.action_space
  probe.close()
  return spaces


class _ProbeEnv(gym.Env):
  """Worker-side helper of probe_spaces: reports the inner DMCEnv spaces as its own."""

  def __init__(self, name, size, camera, action_repeat):
    self.observation_space, self.action_space = _probe(name, size, camera, action_repeat)

