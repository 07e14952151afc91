"""Exploration behaviours (expl.py, issue 13): values worked out by hand.

The identity with the authors' Plan2Explore (ensemble, intrinsic reward, whole updates of the
explorer) is checked on tests/fixtures/update_plan2explore_seed7 in test_update_parity.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from dreamerv2_tf import expl, nets
from dreamerv2_tf.agent import ActSpace, Agent
from dreamerv2_tf.config import ConfigError, load_config
from dreamerv2_tf.validate import validate

PONG_OBS = {'image': ((64, 64, 1), np.uint8)}
PONG_ACT = ActSpace(discrete=True, size=6)
LOG_2PI = math.log(2 * math.pi)


def make_agent(**overrides):
  config = load_config(['atari', 'debug'], overrides)
  return Agent(config, PONG_OBS, PONG_ACT, tf.Variable(0, dtype=tf.int64))


def constant_head(head, bias, kernel=None):
  """Makes an MLP without hidden layers (expl_head.layers 0) output `bias` (+ x @ kernel)."""
  out = head.out
  out.kernel.assign(np.zeros(out.kernel.shape, np.float32) if kernel is None else kernel)
  out.bias.assign(np.asarray(bias, np.float32))


def random_batch(batch=2, length=6, seed=0):
  rng = np.random.default_rng(seed)
  data = {
      'image': rng.integers(0, 256, (batch, length, 64, 64, 1), dtype=np.uint8),
      'action': np.eye(6, dtype=np.float32)[rng.integers(0, 6, (batch, length))],
      'reward': rng.normal(size=(batch, length)).astype(np.float32),
      'is_first': np.zeros((batch, length), bool),
      'is_last': np.zeros((batch, length), bool),
      'is_terminal': np.zeros((batch, length), bool),
  }
  data['is_first'][:, 0] = True
  data['action'][:, 0] = 0
  return data


@pytest.fixture(scope='module')
def p2e_agent():
  """Three members without hidden layers predicting deter (32 dims), no action input."""
  return make_agent(expl_behavior='plan2explore', disag_models=3, disag_target='deter',
                    disag_action_cond=False, **{'expl_head.layers': 0})


def test_disagreement_is_the_population_std_over_members_averaged_over_dims(p2e_agent):
  explorer = p2e_agent.expl
  dims = p2e_agent.wm.rssm.deter
  # Per dimension d the members predict 0, 0 and 3·(d + 1): mean (d + 1), deviations
  # −(d + 1), −(d + 1), 2(d + 1): population variance 2(d + 1)², std √2·(d + 1)
  # (ddof 1 would give √3·(d + 1)). Averaged over d: √2·(dims + 1)/2.
  scale = np.arange(1, dims + 1, dtype=np.float32)
  for head, values in zip(explorer.heads, (0 * scale, 0 * scale, 3 * scale)):
    constant_head(head, values)
  feat = tf.random.normal([4, 5, p2e_agent.wm.rssm.feat_size])
  disag = explorer.disagreement(explorer.inputs(feat, None)).numpy()
  assert disag.shape == (4, 5)
  np.testing.assert_allclose(disag, math.sqrt(2) * (dims + 1) / 2, rtol=1e-6)


def test_intrinsic_reward_scales_logs_and_adds_the_extrinsic_reward():
  agent = make_agent(expl_behavior='plan2explore', disag_models=2, disag_target='deter',
                     disag_log=True, expl_intr_scale=2.0, expl_extr_scale=0.5,
                     **{'expl_head.layers': 0})
  explorer, dims = agent.expl, agent.wm.rssm.deter
  constant_head(explorer.heads[0], np.zeros(dims))
  constant_head(explorer.heads[1], np.full(dims, 4.0))  # std 2 in every dim
  reward_out = agent.wm.heads['reward'].out
  reward_out.kernel.assign(tf.zeros_like(reward_out.kernel))
  reward_out.bias.assign([0.25])  # the reward head predicts 0.25 wherever the last layer is fed
  seq = {'feat': tf.random.normal([4, 3, agent.wm.rssm.feat_size]),
         'action': tf.one_hot(tf.zeros([4, 3], tf.int32), 6)}
  reward = explorer.reward(agent.wm, seq).numpy()
  # 2·log(2) + 0.5·0.25 (both normalisers are the identity at momentum 1).
  np.testing.assert_allclose(reward, 2 * math.log(2.0) + 0.5 * 0.25, rtol=1e-6)


def test_ensemble_predicts_the_target_disag_offset_steps_later(p2e_agent):
  explorer, rssm = p2e_agent.expl, p2e_agent.wm.rssm
  dims, feat_size = rssm.deter, rssm.feat_size
  # Every member copies the deter part of its input feature (the feature ends with deter), so
  # its error at step t is deter_{t+offset} − deter_t. With deter_t = t² that is 2t + 1 for
  # offset 1 (t = 0 … T − 2): a wrong offset or wrong end of the sequence changes the loss.
  copy = np.zeros((feat_size, dims), np.float32)
  copy[feat_size - dims:] = np.eye(dims)
  for head in explorer.heads:
    constant_head(head, np.zeros(dims), copy)
  batch, length = 2, 5
  deter = np.broadcast_to(np.arange(length, dtype=np.float32)[None, :, None] ** 2,
                          (batch, length, dims))
  stoch = tf.zeros([batch, length, rssm.stoch, rssm.classes])
  start = {'deter': tf.constant(deter), 'stoch': stoch}
  outputs = {'feat': rssm.get_feat(start)}
  targets = explorer.targets(start, outputs)
  np.testing.assert_array_equal(targets.numpy(), deter)
  loss = explorer.ensemble_loss(explorer.inputs(outputs['feat'], None), targets).numpy()
  errors = 2 * np.arange(length - 1) + 1.0  # t = 0 … 3
  per_step = -0.5 * dims * errors ** 2 - 0.5 * dims * LOG_2PI  # log N summed over dims
  expected = -3 * per_step.mean()  # three members
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_ensemble_inputs_append_the_action_and_stoch_targets_are_flat():
  agent = make_agent(expl_behavior='plan2explore', disag_models=2)
  explorer, rssm = agent.expl, agent.wm.rssm
  assert explorer.heads[0].hidden[0].kernel.shape[0] == rssm.feat_size + 6
  assert explorer.heads[0].out.kernel.shape[1] == rssm.stoch * rssm.classes
  stoch = tf.random.uniform([2, 3, rssm.stoch, rssm.classes])
  targets = explorer.targets({'stoch': stoch, 'deter': tf.zeros([2, 3, rssm.deter])}, {})
  np.testing.assert_array_equal(targets.numpy(), stoch.numpy().reshape(2, 3, -1))
  feat, action = tf.ones([2, 3, rssm.feat_size]), tf.fill([2, 3, 6], 2.0)
  inputs = explorer.inputs(feat, action).numpy()
  assert inputs.shape == (2, 3, rssm.feat_size + 6)
  np.testing.assert_array_equal(inputs[..., -6:], 2.0)


def test_model_loss_head_learns_the_world_model_kl_and_its_prediction_is_the_reward():
  agent = make_agent(expl_behavior='model_loss', expl_intr_scale=3.0,
                     **{'expl_head.layers': 0})
  explorer, wm = agent.expl, agent.wm
  constant_head(explorer.head, [0.5])
  data = wm.preprocess(random_batch())
  _, _, outputs, _ = wm.loss(data)
  post, prior = outputs['post'], outputs['prior']
  _, kl = wm.rssm.kl_loss(post, prior, **wm.kl)
  np.testing.assert_array_equal(outputs['kl'].numpy(), kl.numpy())
  # The head's loss: −mean log N(KL_t; 0.5, 1) over the batch's steps.
  expected = np.mean(0.5 * (kl.numpy() - 0.5) ** 2 + 0.5 * LOG_2PI)
  metrics = explorer.train_heads(None, outputs, None)
  np.testing.assert_allclose(metrics['expl_loss'].numpy(), expected, rtol=1e-6)
  # The reward is expl_intr_scale × the head's prediction (no extrinsic part at scale 0).
  constant_head(explorer.head, [0.5])
  seq = {'feat': tf.random.normal([4, 3, wm.rssm.feat_size])}
  np.testing.assert_allclose(explorer.reward(wm, seq).numpy(), 1.5, rtol=1e-6)


def _set_actor_choice(ac, action):
  """The actor's logits: 50 for `action`, 0 otherwise, whatever the feature."""
  bias = np.zeros(6, np.float32)
  bias[action] = 50.0
  constant_head(ac.actor, bias)


@pytest.mark.parametrize('until, step, explores', [
    (0, 0, True), (0, 10 ** 6, True), (5, 0, True), (5, 4, True), (5, 5, False), (5, 9, False)])
def test_expl_until_chooses_the_explorer_in_train_mode(until, step, explores):
  agent = make_agent(expl_behavior='plan2explore', disag_models=2, expl_until=until)
  _set_actor_choice(agent.ac, 4)    # the task actor always picks action 4
  _set_actor_choice(agent.expl.ac, 2)  # the explorer always picks action 2
  agent.step.assign(step)
  assert agent.exploring() is explores
  obs = {'image': np.zeros((3, 64, 64, 1), np.uint8), 'is_first': np.ones(3, bool)}
  train, _ = agent.policy(obs, None, 'train')
  np.testing.assert_array_equal(np.argmax(train['action'], -1), 2 if explores else 4)
  evaluation, _ = agent.policy(obs, None, 'eval')
  np.testing.assert_array_equal(np.argmax(evaluation['action'], -1), 4)


def test_the_runner_step_decides_expl_until_not_the_lagging_step_variable():
  """The runner passes its current agent step (the variable is only updated at updates)."""
  from dreamerv2_tf.runner import agent_policy
  agent = make_agent(expl_behavior='plan2explore', disag_models=2, expl_until=5)
  _set_actor_choice(agent.ac, 4)
  _set_actor_choice(agent.expl.ac, 2)
  obs = {'image': np.zeros((2, 64, 64, 1), np.uint8), 'is_first': np.ones(2, bool)}
  current = {'step': 4}
  policy = agent_policy(agent, 'train', lambda: current['step'])
  agent.step.assign(100)  # stale: would mean the task actor
  np.testing.assert_array_equal(np.argmax(policy(obs, None)[0], -1), 2)
  current['step'] = 5
  agent.step.assign(0)  # stale: would mean the explorer
  np.testing.assert_array_equal(np.argmax(policy(obs, None)[0], -1), 4)


def test_greedy_has_no_explorer_and_the_task_actor_acts():
  agent = make_agent()
  assert agent.expl is None and not agent.exploring()
  assert len(agent.optimizers) == 3


def test_train_updates_the_explorer_after_the_task_behaviour_and_checkpoints_it(tmp_path):
  agent = make_agent(expl_behavior='plan2explore', disag_models=2)
  before = [v.numpy() for v in agent.expl.heads[0].trainable_variables]
  metrics = agent.train(random_batch())
  for key in ('expl_expl_loss', 'expl_expl_grad_norm', 'expl_actor_loss', 'expl_critic_loss',
              'expl_reward_mean', 'actor_loss', 'model_loss'):
    assert key in metrics and np.isfinite(metrics[key]), key
  after = [v.numpy() for v in agent.expl.heads[0].trainable_variables]
  assert any(not np.array_equal(a, b) for a, b in zip(before, after))
  assert int(agent.expl.opt.iterations.numpy()) == 1
  assert int(agent.expl.ac.updates.numpy()) == 1 and int(agent.ac.updates.numpy()) == 1
  assert [opt.label for opt in agent.optimizers] == [
      'model', 'actor', 'critic', 'expl', 'actor', 'critic']
  counts = agent.param_counts()
  assert sum(int(np.prod(v.shape)) for v in agent.trainable_variables) == sum(
      counts[k] for k in ('world_model', 'actor', 'critic', 'expl_heads', 'expl_actor',
                          'expl_critic'))
  assert counts['expl_heads'] == 2 * nets.count_params(agent.expl.heads[0]) > 0
  path = tf.train.Checkpoint(agent=agent).save(str(tmp_path / 'ckpt'))
  other = make_agent(expl_behavior='plan2explore', disag_models=2)
  tf.train.Checkpoint(agent=other).restore(path).assert_existing_objects_matched()
  for a, b in zip(agent.variables, other.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert int(other.expl.opt.iterations.numpy()) == 1


@pytest.mark.parametrize('overrides, message', [
    ({'expl_behavior': 'random'}, "'expl_behavior' is 'random'; allowed: greedy, plan2explore"),
    ({'disag_target': 'image'}, "'disag_target' is 'image'; allowed: stoch, deter, feat"),
    ({'expl_model_loss': 'image'}, "'expl_model_loss' is 'image'; allowed: kl"),
    ({'disag_models': 0}, "'disag_models' is 0; it must be a positive integer"),
    ({'expl_until': -1}, "'expl_until' is -1; it must be >= 0"),
    ({'expl_behavior': 'plan2explore', 'disag_offset': 10}, "'disag_offset' is 10"),
])
def test_validate_names_the_bad_exploration_value(overrides, message):
  config = load_config(['atari', 'debug'], overrides)
  with pytest.raises(ConfigError, match=message.replace('(', r'\(')):
    validate(config, check_task=False)


def test_authors_class_names_select_the_same_behaviours():
  assert expl.canonical('Plan2Explore') == 'plan2explore'
  assert expl.canonical('ModelLoss') == 'model_loss'
  agent = make_agent(expl_behavior='ModelLoss')
  assert isinstance(agent.expl, expl.ModelLoss)
