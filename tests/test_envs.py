"""Environments against the real ALE and dm_control (issue 3; docs/reference.md §1, §2)."""

from __future__ import annotations

import json
import pathlib

import ale_py
import ale_py.roms
import gymnasium as gym
import numpy as np
import pytest

from dreamerv2_tf.config import load_config
from dreamerv2_tf.envs import (
    SUITES, ActSpace, Env, check_action, env_seed, make_env, make_vec_env, parse_task)
from dreamerv2_tf.envs import atari, dmc
from dreamerv2_tf.envs.wrappers import TransitionWrapper

PONG = np.eye(6, dtype=np.float32)


def atari_config(**overrides):
  return load_config(['atari'], overrides)


@pytest.fixture(scope='module')
def pong():
  env = make_env('atari_pong', atari_config())
  yield env
  env.close()


def test_pong_spaces_frames_and_sticky(pong):
  assert pong.act_space == ActSpace(discrete=True, size=6)
  assert pong.obs_space['image'] == ((64, 64, 1), np.uint8)
  first = pong.reset()
  assert first['image'].shape == (64, 64, 1) and first['image'].dtype == np.uint8
  assert first['reward'] == 0 and first['is_first'] and not first['is_last']
  assert not first['is_terminal'] and np.all(first['action'] == 0)
  assert first['action'].shape == (6,) and first['action'].dtype == np.float32
  ale = pong.gym_env.unwrapped.ale
  assert ale.getFloat('repeat_action_probability') == pytest.approx(0.25)
  assert ale.getInt('max_num_frames_per_episode') == 0  # the v5 108k-frame cap is off
  for action in (0, 3, 5):
    before = ale.getEpisodeFrameNumber()
    step = pong.step(PONG[action])
    assert ale.getEpisodeFrameNumber() - before == 4
    assert not step['is_first'] and np.array_equal(step['action'], PONG[action])


def test_frameskip_other_than_one_is_refused():
  env = gym.make('ALE/Pong-v5')  # the registration's own frameskip is 4
  with pytest.raises(ValueError, match='frameskip=4'):
    atari.wrap_atari(env)
  env.close()


def test_noop_randomisation_depends_on_seed():
  # Pong's screen is static for its first 58 frames, so the reset frames after 1..30 no-ops are
  # identical (only a single no-op differs); the no-op count shows in the ALE frame counter and
  # in the frames once play starts (16 agent steps = 64 frames later).
  config = atari_config()
  noops, frames = {}, {}
  for seed in (0, 1, 2, 3, 0):
    env = make_env('atari_pong', config, seed=seed)
    env.reset()
    count = env.gym_env.unwrapped.ale.getEpisodeFrameNumber()
    for _ in range(16):
      frame = env.step(PONG[0])['image']
    env.close()
    assert 1 <= count <= 30
    if seed in noops:  # one seed twice: identical
      assert count == noops[seed]
      np.testing.assert_array_equal(frame, frames[seed])
    noops.setdefault(seed, count)
    frames.setdefault(seed, frame)
  assert len(set(noops.values())) > 1
  differ = [s for s in (1, 2, 3) if noops[s] != noops[0]]
  assert all(not np.array_equal(frames[0], frames[s]) for s in differ)


def test_same_seed_same_episode():
  config = atari_config()
  actions = np.random.default_rng(0).integers(6, size=60)
  runs = []
  for _ in range(2):
    env = make_env('atari_pong', config, seed=7)
    images = [env.reset()['image']] + [env.step(PONG[a])['image'] for a in actions]
    env.close()
    runs.append(np.stack(images))
  np.testing.assert_array_equal(runs[0], runs[1])


def test_time_limit_is_last_not_terminal():
  env = make_env('atari_pong', atari_config(time_limit=10))
  env.reset()
  steps = [env.step(PONG[1]) for _ in range(10)]
  env.close()
  assert [bool(s['is_last']) for s in steps] == [False] * 9 + [True]
  assert not any(bool(s['is_terminal']) for s in steps)


def test_game_over_is_last_and_terminal(pong):
  # Pong with a random policy ends after about a thousand agent steps (21 points lost).
  previous = pong.reset()
  rng = np.random.default_rng(0)
  for count in range(1, 20000):
    step = pong.step(PONG[rng.integers(6)])
    if step['is_last']:
      break
    previous = step
  assert step['is_last'] and step['is_terminal']
  assert pong.gym_env.unwrapped.ale.game_over()
  assert 500 < count < 5000
  # The final frame is the real last screen (the opponent's 21st point), not a repeat of the
  # previous frame as gymnasium's AtariPreprocessing (and old gym) would return.
  assert not np.array_equal(step['image'], previous['image'])


class IndexRewardEnv(gym.Env):
  """Reward = index of the action taken; image = step count."""

  observation_space = gym.spaces.Box(0, 255, (4, 4, 1), np.uint8)
  action_space = gym.spaces.Discrete(4)

  def reset(self, *, seed=None, options=None):
    super().reset(seed=seed)
    self.t = 0
    return np.zeros((4, 4, 1), np.uint8), {}

  def step(self, action):
    self.t += 1
    return np.full((4, 4, 1), self.t, np.uint8), float(action), False, False, {}


def test_reward_and_action_alignment():
  env = Env(TransitionWrapper(IndexRewardEnv()), ActSpace(True, 4), seed=0)
  rows = [env.reset()] + [env.step(np.eye(4, dtype=np.float32)[a]) for a in (2, 0, 3)]
  expected = [(np.zeros(4), 0), (np.eye(4)[2], 2), (np.eye(4)[0], 0), (np.eye(4)[3], 3)]
  for t, (row, (action, reward)) in enumerate(zip(rows, expected)):
    np.testing.assert_array_equal(row['action'], action)
    assert row['reward'] == reward and row['reward'].dtype == np.float32
    assert row['image'][0, 0, 0] == t
    assert bool(row['is_first']) == (t == 0)


@pytest.mark.parametrize('action, message', [
    ([0, 1, 1, 0], 'not one-hot'),
    ([0, 0.5, 0, 0], 'not one-hot'),
    ([0, 0, 0, 0], 'not one-hot'),
    ([0, np.nan, 1, 0], 'NaN'),
    ([1, 0, 0], 'shape'),
])
def test_invalid_discrete_actions_are_refused(action, message):
  with pytest.raises(ValueError, match=message):
    check_action(np.array(action, np.float32), ActSpace(True, 4))


def test_actions_checked_in_env_and_continuous_range():
  env = Env(TransitionWrapper(IndexRewardEnv()), ActSpace(True, 4))
  env.reset()
  with pytest.raises(ValueError, match=r'not one-hot'):
    env.step(np.array([0.3, 0.7, 0, 0], np.float32))
  space = ActSpace(False, 2)
  with pytest.raises(ValueError, match=r'out of range.*\[-1, 1\]'):
    check_action(np.array([0.5, 1.5]), space)
  with pytest.raises(ValueError, match='NaN'):
    check_action(np.array([np.inf, 0]), space)
  np.testing.assert_array_equal(check_action([1.0000001, -1], space), [1, -1])
  # float32 round-off of a straight-through one-hot sample is accepted and cleaned.
  np.testing.assert_array_equal(check_action([1e-7, 0.9999999, 0, 0], ActSpace(True, 4)),
                                [0, 1, 0, 0])


def test_unknown_tasks_name_the_valid_choices():
  with pytest.raises(ValueError, match=r"Unknown task 'minecraft_x'.*\['atari', 'dmc', 'crafter'"):
    parse_task('minecraft_x')
  assert SUITES == ['atari', 'dmc', 'crafter', 'gym', 'custom']
  with pytest.raises(ValueError, match="Unknown Atari game 'pongg'.*atari_pong"):
    make_env('atari_pongg', atari_config())
  with pytest.raises(ValueError, match='dmc_walker_walk'):
    dmc.split_task('walkerr_walk')
  with pytest.raises(ValueError, match='mode'):
    make_env('atari_pong', atari_config(), mode='test')


def test_all_published_games_resolve_to_roms():
  from dreamerv2_tf.parity import scores as scores_lib  # the package's copy of the published scores
  games = sorted(scores_lib.load_curves(scores_lib.resolve('atari-dreamerv2.json', '')))
  assert len(games) == 55
  gym.register_envs(ale_py)
  for task in games:
    suite, game = parse_task(task)
    assert suite == 'atari'
    env_id = atari.ale_env_id(game)
    assert env_id in gym.registry, (task, env_id)
    assert pathlib.Path(ale_py.roms.get_rom_path(atari.rom_id(game))).exists()
  assert atari.ale_env_id('james_bond') == 'ALE/Jamesbond-v5'
  assert atari.ale_env_id('montezuma_revenge') == 'ALE/MontezumaRevenge-v5'
  assert atari.ale_env_id('private_eye') == 'ALE/PrivateEye-v5'


def test_env_seeds_are_derived_and_distinct():
  seeds = {env_seed(0, mode, i) for mode in ('train', 'eval') for i in range(4)}
  assert len(seeds) == 8
  assert env_seed(3, 'train', 1) == env_seed(3, 'train', 1) != env_seed(4, 'train', 1)


def test_vec_env_auto_reset_in_worker_processes():
  config = atari_config(time_limit=2)
  with make_vec_env('atari_pong', config, num=2) as env:
    assert env.num == 2 and env.act_space == ActSpace(True, 6)
    first = env.reset()
    assert first['image'].shape == (2, 64, 64, 1) and first['is_first'].all()
    actions = PONG[[1, 2]]
    rows = [env.step(actions) for _ in range(4)]
    assert [r['is_last'].tolist() for r in rows] == [[False] * 2, [True] * 2, [False] * 2,
                                                      [False] * 2]
    assert [r['is_first'].tolist() for r in rows] == [[False] * 2, [False] * 2, [True] * 2,
                                                       [False] * 2]
    np.testing.assert_array_equal(rows[2]['action'], 0)  # the auto-reset row ignores actions
    np.testing.assert_array_equal(rows[3]['action'], actions)
    with pytest.raises(ValueError, match='shape'):
      env.step(PONG[:1])


def test_vec_env_single_env_auto_reset():
  with make_vec_env('atari_pong', atari_config(time_limit=1), num=1) as env:
    env.reset()
    rows = [env.step(PONG[[3]]) for _ in range(3)]
  assert [bool(r['is_last'][0]) for r in rows] == [True, False, True]
  assert [bool(r['is_first'][0]) for r in rows] == [False, True, False]


def test_dmc_walker_renders_headless_for_two_full_episodes():
  config = load_config(['dmc_vision'])
  with make_env('dmc_walker_walk', config) as env:
    assert env.act_space == ActSpace(False, 6)
    assert env.obs_space['image'] == ((64, 64, 3), np.uint8)
    rng = np.random.default_rng(0)
    for _ in range(2):
      first = env.reset()
      assert first['is_first'] and first['image'].shape == (64, 64, 3)
      length, frames = 0, [first['image']]
      while True:
        step = env.step(rng.uniform(-1, 1, 6).astype(np.float32))
        length += 1
        if length % 100 == 0:
          frames.append(step['image'])
        if step['is_last']:
          break
      assert length == 500
      assert step['is_last'] and not step['is_terminal']
      assert step['image'].dtype == np.uint8 and step['image'].std() > 1
      assert not np.array_equal(frames[0], frames[-1])  # the walker moved
    with pytest.raises(RuntimeError, match='reset'):
      env.step(np.zeros(6, np.float32))  # the episode is over
    env.reset()
    with pytest.raises(ValueError, match='out of range'):
      env.step(np.full(6, 2, np.float32))
