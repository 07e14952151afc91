"""The Python API and generic gymnasium envs (issue 14): envs written here, observation and action
rules, episode ends in replay, unsupported spaces, parameter counts against the authors', and
end-to-end runs (slow)."""

from __future__ import annotations

import json
import pathlib

import gymnasium as gym
import numpy as np
import pytest

import dreamerv2_tf
from dreamerv2_tf import envs
from dreamerv2_tf.config import ConfigError
from dreamerv2_tf.driver import Driver, RandomPolicy

FIXTURES = pathlib.Path(__file__).resolve().parent / 'fixtures'


class ToyEnv(gym.Env):
  """A small env whose spaces are chosen by the test. Episodes last `length` steps and end as
  `terminated` when `terminal`, else `truncated`. Records the actions it receives."""

  def __init__(self, obs='image', action='discrete', length=7, terminal=True):
    spaces = {
        'image': gym.spaces.Box(0, 255, (16, 12, 3), np.uint8),
        'vector': gym.spaces.Box(-1, 1, (5,), np.float32),
    }
    if obs == 'dict':
      self.observation_space = gym.spaces.Dict({
          'camera': spaces['image'], 'joints': spaces['vector'],
          'mode': gym.spaces.Discrete(3), 'gray': gym.spaces.Box(0, 255, (8, 8), np.uint8)})
    else:
      self.observation_space = spaces[obs]
    self.action_space = (gym.spaces.Discrete(4, start=2) if action == 'discrete' else
                         gym.spaces.Box(np.array([0.0, -10.0]), np.array([2.0, 10.0]),
                                        dtype=np.float64))
    self.length, self.terminal = length, terminal
    self.received = []
    self.t = 0

  def _obs(self):
    if isinstance(self.observation_space, gym.spaces.Dict):
      return {'camera': np.full((16, 12, 3), self.t, np.uint8),
              'joints': np.full(5, self.t / 10, np.float32), 'mode': self.t % 3,
              'gray': np.full((8, 8), 7, np.uint8)}
    space = self.observation_space
    return np.full(space.shape, self.t if space.dtype == np.uint8 else self.t / 10, space.dtype)

  def reset(self, *, seed=None, options=None):
    super().reset(seed=seed)
    self.t = 0
    return self._obs(), {}

  def step(self, action):
    self.received.append(action)
    self.t += 1
    done = self.t >= self.length
    return self._obs(), 1.0, done and self.terminal, done and not self.terminal, {}


def config(**overrides):
  return dreamerv2_tf.load_config(('debug',), overrides)


def test_import_is_light_and_load_config_validates():
  import subprocess
  import sys
  code = ('import sys, dreamerv2_tf; c = dreamerv2_tf.load_config(overlays=("debug",), '
          'overrides={"steps": 1000}); print(c.steps, c.prefill, "tensorflow" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       cwd=pathlib.Path(__file__).resolve().parents[1])
  assert out.stdout.split() == ['1000', '300', 'False']
  with pytest.raises(ConfigError, match="Unknown config overlay 'nope'"):
    dreamerv2_tf.load_config(('nope',))
  with pytest.raises(ConfigError, match="'dataset.batch' is 0"):
    dreamerv2_tf.load_config(('debug',), {'dataset.batch': 0})
  with pytest.raises(ConfigError, match="encoder.cnn_keys"):
    dreamerv2_tf.load_config((), {'encoder.cnn_keys': '(['})
  assert callable(dreamerv2_tf.evaluate) and hasattr(dreamerv2_tf.evaluate, 'main')


def test_image_observation_resized_and_discrete_actions_shifted():
  env = ToyEnv('image', 'discrete')
  vec = envs.make_vec_env('custom_toy', config(), env_fn=lambda: env)
  assert vec.obs_space['image'] == ((64, 64, 3), np.uint8)
  assert set(vec.obs_space) == {'image', 'reward', 'is_first', 'is_last', 'is_terminal', 'action'}
  assert vec.act_space == envs.ActSpace(True, 4)
  first = vec.reset()
  assert first['image'].shape == (1, 64, 64, 3) and first['is_first'][0]
  step = vec.step(np.eye(4, dtype=np.float32)[[3]])
  assert env.received == [5]  # Discrete(4, start=2): one-hot index 3 is action 2 + 3
  assert np.all(step['image'] == 1) and step['reward'][0] == 1.0
  np.testing.assert_array_equal(step['action'][0], [0, 0, 0, 1])


def test_vector_observation_and_box_actions_rescaled():
  env = ToyEnv('vector', 'box')
  vec = envs.make_vec_env('custom_toy', config(), env_fn=lambda: env)
  assert vec.obs_space['vector'] == ((5,), np.float32) and 'image' not in vec.obs_space
  assert vec.act_space == envs.ActSpace(False, 2)
  vec.reset()
  for action in ([-1, -1], [1, 1], [0, 0.5]):
    vec.step(np.array([action], np.float32))
  np.testing.assert_allclose(np.array(env.received), [[0, -10], [2, 10], [1, 5]])
  assert np.asarray(env.received).dtype == np.float64  # the env's own action dtype
  with pytest.raises(ValueError, match='out of range'):
    vec.step(np.array([[1.5, 0]], np.float32))


def test_dict_observation_keys_converted():
  vec = envs.make_vec_env('custom_toy', config(), env_fn=lambda: ToyEnv('dict', 'discrete'))
  space = vec.obs_space
  assert space['camera'] == ((64, 64, 3), np.uint8)
  assert space['gray'] == ((64, 64, 1), np.uint8)
  assert space['joints'] == ((5,), np.float32)
  assert space['mode'] == ((3,), np.float32)  # Discrete -> one-hot
  vec.reset()
  obs = vec.step(np.eye(4, dtype=np.float32)[[0]])
  np.testing.assert_array_equal(obs['mode'][0], [0, 1, 0])
  np.testing.assert_allclose(obs['joints'][0], 0.1)
  assert np.all(obs['camera'] == 1) and np.all(obs['gray'] == 7)


def test_encoder_and_decoder_keys_follow_the_regexes():
  import tensorflow as tf
  from dreamerv2_tf.agent import Agent
  vec = envs.make_vec_env('custom_toy', config(), env_fn=lambda: ToyEnv('dict', 'discrete'))
  step = tf.Variable(0, dtype=tf.int64)
  cfg = config(**{'encoder.cnn_keys': 'camera', 'encoder.mlp_keys': 'j',
                  'decoder.mlp_keys': '$^'})
  shapes = vec.obs_space
  agent = Agent(cfg, shapes, vec.act_space, step)
  assert agent.wm.encoder.cnn_keys == ['camera'] and agent.wm.encoder.mlp_keys == ['joints']
  assert agent.wm.heads['decoder'].cnn_keys == ['camera', 'gray']
  assert agent.wm.heads['decoder'].mlp_keys == []
  # 2x2x(8·depth) conv features + the last MLP width.
  assert agent.wm.encoder.embed_size == 2 * 2 * 8 * 4 + 16
  with pytest.raises(ValueError, match='selects no observation'):
    Agent(config(**{'encoder.cnn_keys': '$^', 'encoder.mlp_keys': '$^'}), shapes, vec.act_space,
          step)


def _episodes(tmp_path, terminal):
  from dreamerv2_tf.replay import Replay
  vec = envs.make_vec_env('custom_toy', config(),
                          env_fn=lambda: ToyEnv('image', 'discrete', 4, terminal))
  replay = Replay(tmp_path / ('terminal' if terminal else 'truncated'), 1000, 1)
  driver = Driver(vec, [replay.add_step])
  driver(RandomPolicy(vec.act_space, np.random.default_rng(0)), episodes=2)
  from dreamerv2_tf.replay import load_episodes
  return list(load_episodes(replay.directory).values())


@pytest.mark.parametrize('terminal', [True, False])
def test_terminated_and_truncated_episodes_in_replay(tmp_path, terminal):
  episodes = _episodes(tmp_path, terminal)
  assert len(episodes) == 2
  for episode in episodes:
    assert len(episode['is_last']) == 5  # reset row + 4 agent steps
    np.testing.assert_array_equal(episode['is_first'], [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(episode['is_last'], [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(episode['is_terminal'], [0, 0, 0, 0, int(terminal)])
    np.testing.assert_array_equal(episode['reward'], [0, 1, 1, 1, 1])


@pytest.mark.parametrize('space, name', [
    (gym.spaces.MultiDiscrete([3, 4]), 'MultiDiscrete'),
    (gym.spaces.Text(5), 'Text'),
    (gym.spaces.Dict({'a': gym.spaces.Dict({'b': gym.spaces.Discrete(2)})}), 'Dict'),
])
def test_unsupported_observation_space_is_named(space, name):
  env = ToyEnv()
  env.observation_space = space
  with pytest.raises(TypeError, match=f'unsupported space .*{name}'):
    envs.make_env('custom_toy', config(), env_fn=lambda: env)


def test_unsupported_action_space_and_bad_factories_are_named():
  env = ToyEnv()
  env.action_space = gym.spaces.MultiDiscrete([2, 2])
  with pytest.raises(TypeError, match='Unsupported action space MultiDiscrete'):
    envs.make_env('custom_toy', config(), env_fn=lambda: env)
  with pytest.raises(TypeError, match='returned int, not a gymnasium.Env'):
    envs.make_env('custom_toy', config(), env_fn=lambda: 3)
  with pytest.raises(TypeError, match='env must be a gymnasium Env'):
    dreamerv2_tf.train(3, config(), 'unused')
  with pytest.raises(ValueError, match="Unknown gymnasium id 'CartPol-v1'.*gym_CartPole-v1"):
    dreamerv2_tf.train('CartPol-v1', config(), 'unused')
  with pytest.raises(ValueError, match='is a custom env'):
    envs.make_env('custom_toy', config())


def test_reserved_observation_keys_are_refused():
  env = ToyEnv()
  env.observation_space = gym.spaces.Dict({'reward': gym.spaces.Box(0, 1, (2,), np.float32)})
  with pytest.raises(ValueError, match="Observation key 'reward' is reserved"):
    envs.make_env('custom_toy', config(), env_fn=lambda: env)


def test_dmc_proprio_parameter_counts_equal_the_authors():
  """tests/fixtures/dmc_proprio_param_counts.json: scripts/authors_param_counts.py with the
  authors' release (walker's observations, 6 actions)."""
  import tensorflow as tf
  from dreamerv2_tf.agent import Agent
  fixture = json.loads((FIXTURES / 'dmc_proprio_param_counts.json').read_text())
  space = {k: (tuple(s), np.uint8 if k == 'image' else np.float32)
           for k, s in fixture['observations'].items()}
  space.update(reward=((), np.float32), is_first=((), bool), is_last=((), bool),
               is_terminal=((), bool), action=((6,), np.float32))
  agent = Agent(dreamerv2_tf.load_config(('dmc_proprio',), {'precision': 32}), space,
                envs.ActSpace(False, fixture['actions']), tf.Variable(0, dtype=tf.int64))
  ours = agent.param_counts()
  assert {k: ours[k] for k in fixture['counts']} == fixture['counts']
  assert agent.wm.encoder.mlp_keys == fixture['encoder_mlp_inputs'] == ['orientations', 'velocity']
  assert agent.wm.heads['decoder'].mlp_keys == fixture['decoder_mlp_outputs']
  assert agent.wm.encoder.cnn_keys == []


SHORT = {'steps': 200, 'prefill': 100, 'train_every': 20, 'eval_every': 200, 'log_every': 40,
         'time_limit': 40, 'replay.minlen': 5}


@pytest.mark.slow
@pytest.mark.parametrize('obs, action', [('vector', 'discrete'), ('dict', 'box')])
def test_train_on_an_env_end_to_end_and_resume(tmp_path, obs, action):
  """Image-only envs run end to end in the example and Crafter tests below."""
  cfg = config(**SHORT)
  result = dreamerv2_tf.train(lambda: ToyEnv(obs, action, length=30), cfg, tmp_path / 'run',
                              name='toy')
  assert result.steps == 200 and result.signal is None and result.updates >= 2
  text = (tmp_path / 'run' / 'config.yaml').read_text()
  assert 'task: custom_toy' in text
  lines = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert any('model_loss' in line for line in lines)
  again = dreamerv2_tf.train(lambda: ToyEnv(obs, action, length=30), cfg.update({'steps': 240}),
                             tmp_path / 'run', name='toy')
  assert again.steps == 240 and again.updates > result.updates


def _metrics(logdir: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (logdir / 'metrics.jsonl').read_text().splitlines()]


@pytest.mark.slow
def test_dmc_proprio_walker_runs_a_debug_cycle(tmp_path):
  """dmc_proprio on dmc_walker_walk: the MLP encoder and decoder on orientations and velocity
  (walker's scalar height is not encoded), prefill, updates, evaluation, a checkpoint."""
  cfg = dreamerv2_tf.load_config(('dmc_proprio', 'debug'), {
      'steps': 250, 'prefill': 150, 'eval_every': 250, 'log_every': 50, 'time_limit': 100})
  result = dreamerv2_tf.train('dmc_walker_walk', cfg, tmp_path / 'run')
  assert result.steps == 250 and result.frames == 500 and result.signal is None
  assert result.checkpoint is not None
  logged = {key for line in _metrics(tmp_path / 'run') for key in line}
  assert {'orientations_loss', 'velocity_loss', 'reward_loss', 'eval_return'} <= logged
  assert 'image_loss' not in logged and 'height_loss' not in logged


@pytest.mark.slow
def test_crafter_runs_a_debug_cycle_and_logs_achievements(tmp_path):
  cfg = dreamerv2_tf.load_config(('crafter', 'debug'), {
      'steps': 250, 'prefill': 150, 'eval_every': 250, 'log_every': 50, 'time_limit': 60})
  result = dreamerv2_tf.train('crafter_reward', cfg, tmp_path / 'run')
  assert result.steps == 250 and result.signal is None
  lines = _metrics(tmp_path / 'run')
  episodes = [line for line in lines if 'train_length' in line]
  assert episodes and all(0 < line['train_length'] <= 60 for line in episodes)
  for line in episodes:
    achievements = [k for k in line if k.startswith('train_log_achievement_')]
    assert len(achievements) == 22 and 'train_log_reward' in line
  assert any('image_loss' in line for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize('script, steps', [('minigrid.py', 400), ('custom_env.py', 300)])
def test_examples_run_at_debug_size(tmp_path, script, steps):
  import os
  import subprocess
  import sys
  example = pathlib.Path(__file__).resolve().parents[1] / 'examples' / script
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  out = subprocess.run([sys.executable, str(example), '--debug', '--logdir', str(tmp_path / 'run')],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert f'Trained {steps:,} agent steps' in out.stdout
  assert list((tmp_path / 'run' / 'checkpoints').glob('*.index'))
