"""Environment factory: task name + config -> environments yielding docs/reference.md §1 transitions.

Interfaces (see wrappers.py for the transition format and its time alignment):

  make_env(task, config, mode='train', seed=None, env_fn=None) -> Env
      one environment; Atari, Crafter and API envs run in this process, DMC and `gym_<id>`
      in a TF-free worker process.
  make_vec_env(task, config, mode='train', num=1, seed=None, env_fn=None) -> VecEnv
      `num` environments; num > 1 uses gymnasium's AsyncVectorEnv (one worker process each,
      started with 'spawn' and without the parent's __main__ module, so workers never import
      TensorFlow; `env_fn` is sent to them with cloudpickle), num == 1 wraps make_env's Env.

  Env.reset() -> {key: array}            Env.step(action [A] float32) -> {key: array}
  VecEnv.reset() -> {key: array [N, ...]} VecEnv.step(actions [N, A]) -> {key: array [N, ...]}

Auto-reset rule of VecEnv: an env whose previous transition had is_last True ignores its action
and returns its reset transition (is_first True, reward 0, action zeros) instead.

Tasks:
  atari_<game>        atari.py; image 64x64x1, one-hot actions, 4 frames per agent step,
                      27,000-step time limit from config `time_limit`.
  dmc_<domain>_<task> dmc.py; image 64x64x3 plus the task's proprioceptive vectors (used by
                      the `dmc_proprio` overlay), actions in [-1, 1], `action_repeat`.
  crafter_reward, crafter_noreward   crafter.py; image 64x64x3, 17 one-hot actions, achievements
                      logged as log_achievement_*.
  gym_<id>            gym_env.py; any registered gymnasium id (gym_CartPole-v1,
                      gym_MiniGrid-Empty-5x5-v0): images and vectors of the observation, or
                      only render() with config `gym_image: render`.
  custom_<name>       an env given as `env_fn` (a zero-argument callable returning a gymnasium
                      Env; the Python API's `dreamerv2_tf.train(env, ...)`), wrapped by gym_env.py.
`env_fn`, when given, is used whatever the task's suite (the task then only names the run).
Config keys read: render_size, dmc_camera, atari_grayscale, atari_sticky,
atari_full_action_space, time_limit, action_repeat, gym_image, seed.

Seeds: environment `index` of mode `mode` in a run with seed `s` gets
`env_seed(s, mode, index)` = the first 32-bit word of numpy's SeedSequence([s, mode id
(train 0, eval 1), index]). It seeds the env on its first reset only (ALE sticky-action RNG and
no-op count; dm_control's initial-state RNG; gymnasium's `reset(seed=...)`); later resets
continue those streams, so a seed gives one fixed sequence of episodes for a fixed sequence of
actions. `seed=None` means `config.seed`. `make_env` is index 0; `make_vec_env` uses indices
0..num-1.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np

from dreamerv2_tf.envs.wrappers import (
    ActSpace, Env, LazyEnv, ProcessEnv, TransitionWrapper, act_space_of, check_action,
    hidden_main_module, obs_space_of)
from dreamerv2_tf.seeding import MODES, env_seed

__all__ = [
    'SUITES', 'MODES', 'ActSpace', 'Env', 'VecEnv', 'make_env', 'make_vec_env', 'env_seed',
    'check_action', 'check_task', 'parse_task']

SUITES = ['atari', 'dmc', 'crafter', 'gym', 'custom']
EnvFn = Callable[[], gym.Env]


def parse_task(task: str) -> tuple[str, str]:
  """'atari_pong' -> ('atari', 'pong'); 'dmc_walker_walk' -> ('dmc', 'walker_walk');
  'gym_CartPole-v1' -> ('gym', 'CartPole-v1').

  Raises:
    ValueError: for a task whose suite is unknown, listing valid suites and examples.
  """
  suite, _, name = str(task).partition('_')
  if suite not in SUITES or not name:
    raise ValueError(
        f"Unknown task '{task}': expected <suite>_<name> with suite in {SUITES}, e.g. "
        f"atari_pong, atari_james_bond, dmc_walker_walk, dmc_cheetah_run, crafter_reward, "
        f"gym_CartPole-v1, gym_MiniGrid-Empty-5x5-v0.")
  return suite, name


def check_task(task: str) -> None:
  """Checks a task name without building anything (no emulator, no dm_control import): the
  suite, then the Atari game (ale-py's ROM ids), the DMC domain and task (`dmc.TASKS`), the
  Crafter variant or the gymnasium id (importing minigrid or ale-py for their ids).

  Raises:
    ValueError: naming the task and the valid or closest names.
  """
  # pylint: disable=g-import-not-at-top
  from dreamerv2_tf.envs import atari, crafter, dmc
  from dreamerv2_tf.envs import gym_env as gym_lib
  suite, name = parse_task(task)
  if suite == 'atari':
    atari.rom_id(name)
  elif suite == 'dmc':
    dmc.check_task(name)
  elif suite == 'crafter':
    crafter.check_task(name)
  elif suite == 'gym':
    gym_lib.check_id(name)


def _settings(config: Mapping[str, Any]) -> dict[str, Any]:
  """The config values the env builders need, as plain picklable values."""
  return dict(
      size=tuple(int(s) for s in config['render_size']),
      camera=int(config['dmc_camera']),
      grayscale=bool(config['atari_grayscale']),
      sticky=float(config['atari_sticky']),
      full_action_space=bool(config['atari_full_action_space']),
      time_limit=int(config['time_limit']),
      action_repeat=int(config['action_repeat']),
      gym_image=str(config['gym_image']) if 'gym_image' in config else 'obs',
  )


def _build(suite: str, name: str, settings: dict[str, Any], spaces=None,
           env_fn: EnvFn | None = None) -> TransitionWrapper:
  """Builds one transition env in this process (worker-side for DMC and gym_ tasks)."""
  # pylint: disable=g-import-not-at-top
  from dreamerv2_tf.envs import atari, crafter, dmc
  from dreamerv2_tf.envs import gym_env as gym_lib
  s = settings
  if env_fn is not None:
    return gym_lib.build_user(env_fn, s['size'], s['gym_image'], s['action_repeat'],
                              s['time_limit'])
  if suite == 'atari':
    return atari.make_atari(
        name, s['size'], s['grayscale'], s['sticky'], s['full_action_space'],
        s['action_repeat'], s['time_limit'])
  if suite == 'dmc':
    return dmc.build_dmc(
        name, s['size'], s['camera'], s['action_repeat'], s['time_limit'], spaces)
  if suite == 'crafter':
    return crafter.build_crafter(name, s['size'], s['time_limit'])
  if suite == 'gym':
    return gym_lib.build_task(name, s['size'], s['gym_image'], s['action_repeat'],
                              s['time_limit'])
  raise ValueError(f"Task '{suite}_{name}' is a custom env: pass it to dreamerv2_tf.train(env, "
                   'config, logdir) (or make_env(..., env_fn=...)).')


def _in_worker(suite: str, env_fn: EnvFn | None) -> bool:
  """DMC and gym_ tasks run in a worker process even alone (MuJoCo/Mesa and TF crash in one
  process, STACK.md); Atari, Crafter and API envs run in this process."""
  return env_fn is None and suite in ('dmc', 'gym')


def make_env(task: str, config: Mapping[str, Any], mode: str = 'train',
             seed: int | None = None, env_fn: EnvFn | None = None) -> Env:
  """One environment for `task` (docs/reference.md §1, §2). See the module docstring.

  Args:
    task: e.g. 'atari_pong', 'dmc_walker_walk', 'crafter_reward', 'gym_CartPole-v1'.
    config: the run config (keys listed in the module docstring).
    mode: 'train' or 'eval' (only changes the derived seed).
    seed: the run's seed; None uses config.seed. The env gets env_seed(seed, mode, 0).
    env_fn: a zero-argument callable returning a gymnasium Env, used instead of the task.

  Raises:
    ValueError: unknown suite, game, domain, task or id, or a bad config value.
    TypeError: an env whose observation or action space is not supported (gym_env.py), naming it.
  """
  suite, name = parse_task(task)
  seed = int(config['seed']) if seed is None else int(seed)
  settings = _settings(config)
  if env_fn is None:
    check_task(task)
  build = functools.partial(_build, suite, name, settings, None, env_fn)
  if _in_worker(suite, env_fn):
    gym_env = ProcessEnv(build)
    act_space = act_space_of(gym_env.action_space)
  else:
    gym_env = build()
    act_space = gym_env.act_space
  return Env(gym_env, act_space, env_seed(seed, mode, 0))


def _vec_builders(suite: str, name: str, settings: dict[str, Any], num: int,
                  env_fn: EnvFn | None) -> list[Callable[[], gym.Env]]:
  """Picklable builders of the `num` worker envs; DMC and gym_ envs are lazy (their spaces read
  once in a worker), so the parent's throwaway copy builds nothing."""
  if env_fn is None and suite == 'dmc':
    from dreamerv2_tf.envs import dmc  # pylint: disable=g-import-not-at-top
    spaces = dmc.probe_spaces(name, settings['size'], settings['camera'],
                              settings['action_repeat'])
    return [functools.partial(_build, suite, name, settings, spaces) for _ in range(num)]
  build = functools.partial(_build, suite, name, settings, None, env_fn)
  if _in_worker(suite, env_fn):
    probe = ProcessEnv(build)
    spaces = probe.observation_space, probe.action_space
    probe.close()
    return [functools.partial(LazyEnv, build, spaces) for _ in range(num)]
  return [build] * num


class VecEnv:
  """`num` environments stepped together; arrays are batch-major [N, ...].

  Attributes:
    num: number of environments.
    obs_space: {key: (shape, dtype)} of one environment's transition.
    act_space: ActSpace of one environment.
  """

  def __init__(self, task: str, config: Mapping[str, Any], mode: str = 'train', num: int = 1,
               seed: int | None = None, env_fn: EnvFn | None = None):
    if int(num) < 1:
      raise ValueError(f'Number of environments must be >= 1, got {num}.')
    self.num = int(num)
    suite, name = parse_task(task)
    seed = int(config['seed']) if seed is None else int(seed)
    self._seeds = [env_seed(seed, mode, i) for i in range(self.num)]
    self._last = np.zeros(self.num, bool)
    self._seeded = False
    if self.num == 1:
      self._env = make_env(task, config, mode, seed, env_fn)
      self._vec = None
      self.obs_space, self.act_space = self._env.obs_space, self._env.act_space
      return
    if env_fn is None:
      check_task(task)
    fns = _vec_builders(suite, name, _settings(config), self.num, env_fn)
    with hidden_main_module():
      self._vec = gym.vector.AsyncVectorEnv(
          fns, context='spawn', autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    self._env = None
    self.obs_space = obs_space_of(self._vec.single_observation_space)
    self.act_space = act_space_of(self._vec.single_action_space)

  def reset(self) -> dict[str, np.ndarray]:
    """Resets every env; returns their first transitions, {key: [N, ...]}."""
    if self._vec is None:
      obs = self._env.reset()
      batch = {k: np.asarray(v)[None] for k, v in obs.items()}
    else:
      seeds = None if self._seeded else self._seeds
      obs, _ = self._vec.reset(seed=seeds)
      batch = dict(obs)
    self._seeded = True
    self._last = np.array(batch['is_last'], bool)
    return batch

  def step(self, actions: np.ndarray) -> dict[str, np.ndarray]:
    """Steps every env with actions [N, A]; returns the next transitions, {key: [N, ...]}.

    An env whose previous transition was last returns its reset transition (auto-reset).

    Raises:
      ValueError: for actions of the wrong shape, or an invalid action (see check_action).
    """
    actions = np.asarray(actions, np.float32)
    if actions.shape != (self.num, self.act_space.size):
      raise ValueError(
          f'Actions have shape {actions.shape}; expected ({self.num}, {self.act_space.size}).')
    if self._vec is None:
      obs = self._env.reset() if self._last[0] else self._env.step(actions[0])
      batch = {k: np.asarray(v)[None] for k, v in obs.items()}
    else:
      for i in np.flatnonzero(~self._last):  # check in the parent: clearer errors
        check_action(actions[i], self.act_space)
      obs, _, _, _, _ = self._vec.step(actions)
      batch = dict(obs)
    self._last = np.array(batch['is_last'], bool)
    return batch

  def close(self) -> None:
    if self._vec is not None:
      self._vec.close()
    if self._env is not None:
      self._env.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def make_vec_env(task: str, config: Mapping[str, Any], mode: str = 'train', num: int = 1,
                 seed: int | None = None, env_fn: EnvFn | None = None) -> VecEnv:
  """`num` environments for `task`, or built by `env_fn` (a zero-argument callable returning a
  gymnasium Env; for num > 1 it must be cloudpicklable and must not need TensorFlow). See
  VecEnv and the module docstring for seeds and the observation rules."""
  return VecEnv(task, config, mode, num, seed, env_fn)
