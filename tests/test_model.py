"""World model, actor-critic and agent: values worked out by hand from docs/reference.md §3–§5."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from dreamerv2_tf import dists, nets
from dreamerv2_tf.actor_critic import lambda_return
from dreamerv2_tf.agent import ActSpace, Agent
from dreamerv2_tf.config import load_config
from dreamerv2_tf.schedule import parse, schedule
from dreamerv2_tf.world_model import discount_weights, preprocess_image

PONG_OBS = {'image': ((64, 64, 1), np.uint8)}
PONG_ACT = ActSpace(discrete=True, size=6)


def make_agent(*names, **overrides):
  config = load_config(names, overrides)
  return Agent(config, PONG_OBS, PONG_ACT, tf.Variable(0, dtype=tf.int64)), config


def random_batch(batch, length, seed=0, actions=6):
  rng = np.random.default_rng(seed)
  data = {
      'image': rng.integers(0, 256, (batch, length, 64, 64, 1), dtype=np.uint8),
      'action': np.eye(actions, dtype=np.float32)[rng.integers(0, actions, (batch, length))],
      'reward': rng.normal(size=(batch, length)).astype(np.float32),
      'is_first': np.zeros((batch, length), bool),
      'is_terminal': np.zeros((batch, length), bool),
  }
  data['is_first'][:, 0] = True
  data['action'][:, 0] = 0
  return data


def test_pong_parameter_counts():
  agent, _ = make_agent('atari')
  counts = agent.param_counts()
  assert counts['world_model'] == 19_968_179
  assert counts['encoder'] == 1_549_776
  assert counts['rssm'] == 5_657_648
  assert counts['decoder'] == 10_497_553
  assert counts['reward'] == counts['discount'] == 1_131_601
  assert counts['actor'] == 1_133_606
  assert counts['critic'] == 1_131_601
  target = agent.ac.target_critic
  assert not target.trainable_variables
  assert sum(math.prod(v.shape) for v in target.variables) == 1_131_601


@pytest.mark.parametrize('lam, expected', [
    (0.0, [11.0, 17.0, 23.0]),
    (1.0, [7.75, 13.5, 23.0]),
    (0.95, [7.995625, 13.675, 23.0]),
])
def test_lambda_return_by_hand(lam, expected):
  reward = tf.constant([1.0, 2.0, 3.0])
  value = tf.constant([10.0, 20.0, 30.0])
  discount = tf.constant([0.5, 0.5, 0.5])
  out = lambda_return(reward, value, discount, tf.constant(40.0), lam)
  np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)


def test_lambda_return_other_axis_matches_time_major():
  rng = np.random.default_rng(1)
  r, v, d = (tf.constant(rng.normal(size=(5, 3)), tf.float32) for _ in range(3))
  boot = tf.constant(rng.normal(size=(3,)), tf.float32)
  time_major = lambda_return(r, v, d, boot, 0.95, axis=0)
  batch_major = lambda_return(tf.transpose(r), tf.transpose(v), tf.transpose(d), boot, 0.95,
                              axis=1)
  np.testing.assert_allclose(tf.transpose(batch_major).numpy(), time_major.numpy(), rtol=1e-6)


def test_imagination_weights_per_column():
  discount = tf.constant([[0.9, 0.5, 1.0]] * 4)
  weight = discount_weights(discount).numpy()
  np.testing.assert_allclose(weight[0], [1.0, 1.0, 1.0])
  np.testing.assert_allclose(weight[1], [0.9, 0.5, 1.0])
  np.testing.assert_allclose(weight[2], [0.81, 0.25, 1.0], rtol=1e-6)
  changed = discount.numpy().copy()
  changed[:, 1] = 0.1
  other = discount_weights(tf.constant(changed)).numpy()
  np.testing.assert_allclose(other[:, [0, 2]], weight[:, [0, 2]])


def _rssm():
  return nets.RSSM(action_size=3, embed_size=8, deter=16, hidden=16, stoch=4, discrete=5)


def test_kl_balancing_gradients():
  rssm = _rssm()
  rng = np.random.default_rng(0)
  post_logit = tf.constant(rng.normal(size=(2, 3, 4, 5)), tf.float32)
  prior_logit = tf.constant(rng.normal(size=(2, 3, 4, 5)), tf.float32)

  def grads(fn):
    with tf.GradientTape(persistent=True) as tape:
      tape.watch([post_logit, prior_logit])
      loss = fn({'logit': post_logit}, {'logit': prior_logit})
    return tape.gradient(loss, post_logit), tape.gradient(loss, prior_logit), loss

  full = lambda post, prior: tf.reduce_mean(
      rssm.get_dist(post).kl_divergence(rssm.get_dist(prior)))
  balanced = lambda post, prior: rssm.kl_loss(post, prior, balance=0.8, free=0.0)[0]
  g_post_full, g_prior_full, value_full = grads(full)
  g_post, g_prior, value = grads(balanced)
  np.testing.assert_allclose(value.numpy(), value_full.numpy(), rtol=1e-6)
  np.testing.assert_allclose(g_prior.numpy(), 0.8 * g_prior_full.numpy(), rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(g_post.numpy(), 0.2 * g_post_full.numpy(), rtol=1e-5, atol=1e-8)


def test_kl_free_nats_clamps_with_zero_gradient():
  rssm = _rssm()
  # One categorical differs: post = [a, 0, ...] logits against uniform prior; tune a so the
  # mean KL is 0.5 nats.
  base = np.zeros((1, 1, 4, 5), np.float32)
  probs = lambda a: np.exp([a, 0, 0, 0, 0]) / np.exp([a, 0, 0, 0, 0]).sum()
  kl_of = lambda a: float((probs(a) * np.log(probs(a) * 5)).sum())
  lo, hi = 0.0, 10.0
  for _ in range(60):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if kl_of(mid) < 0.5 else (lo, mid)
  base[0, 0, 0, 0] = lo
  post_logit = tf.constant(base)
  prior_logit = tf.zeros_like(post_logit)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([post_logit, prior_logit])
    loss, value = rssm.kl_loss({'logit': post_logit}, {'logit': prior_logit}, balance=0.8,
                               free=1.0)
  np.testing.assert_allclose(value.numpy(), [[0.5]], rtol=1e-4)
  assert float(loss) == 1.0
  for grad in tape.gradient(loss, [post_logit, prior_logit]):
    assert grad is None or not np.any(grad.numpy())


def test_obs_step_is_first_ignores_previous_state_and_action():
  rssm = _rssm()
  rng = np.random.default_rng(0)
  embed = tf.constant(rng.normal(size=(2, 8)), tf.float32)
  is_first = tf.constant([True, True])
  outs = []
  for seed in range(3):
    r = np.random.default_rng(seed + 10)
    prev = {'deter': tf.constant(r.normal(size=(2, 16)), tf.float32),
            'stoch': tf.constant(r.normal(size=(2, 4, 5)), tf.float32),
            'logit': tf.constant(r.normal(size=(2, 4, 5)), tf.float32)}
    action = tf.constant(r.normal(size=(2, 3)), tf.float32)
    post, prior = rssm.obs_step(prev, action, embed, is_first, sample=False)
    outs.append((post, prior))
  for post, prior in outs[1:]:
    for key in ('deter', 'stoch', 'logit'):
      np.testing.assert_array_equal(post[key].numpy(), outs[0][0][key].numpy())
      np.testing.assert_array_equal(prior[key].numpy(), outs[0][1][key].numpy())
  # Without is_first the previous state matters.
  post_a, _ = rssm.obs_step(rssm.initial(2), tf.zeros([2, 3]), embed, tf.constant([False] * 2),
                            sample=False)
  prev = {k: v + 1.0 for k, v in rssm.initial(2).items()}
  post_b, _ = rssm.obs_step(prev, tf.zeros([2, 3]), embed, tf.constant([False] * 2),
                            sample=False)
  assert not np.allclose(post_a['deter'].numpy(), post_b['deter'].numpy())


def test_observe_reset_mid_sequence_matches_fresh_start():
  rssm = _rssm()
  rng = np.random.default_rng(3)
  embed = tf.constant(rng.normal(size=(2, 8, 8)), tf.float32)
  action = tf.constant(rng.normal(size=(2, 8, 3)), tf.float32)
  is_first = np.zeros((2, 8), bool)
  is_first[:, 0] = True
  is_first[:, 4] = True
  post, prior = rssm.observe(embed, action, tf.constant(is_first), sample=False)
  fresh_post, fresh_prior = rssm.observe(embed[:, 4:], action[:, 4:],
                                         tf.constant(is_first[:, 4:]), sample=False)
  for key in ('deter', 'stoch', 'logit'):
    np.testing.assert_allclose(post[key][:, 4:].numpy(), fresh_post[key].numpy(), atol=1e-6)
    np.testing.assert_allclose(prior[key][:, 4:].numpy(), fresh_prior[key].numpy(), atol=1e-6)
  # observe equals chaining obs_step by hand.
  state = rssm.initial(2)
  for t in range(8):
    state, step_prior = rssm.obs_step(state, action[:, t], embed[:, t], is_first[:, t],
                                      sample=False)
    np.testing.assert_allclose(state['logit'].numpy(), post['logit'][:, t].numpy(), atol=1e-6)
    np.testing.assert_allclose(step_prior['logit'].numpy(), prior['logit'][:, t].numpy(),
                               atol=1e-6)


def test_imagine_equals_chained_img_step():
  rssm = _rssm()
  rng = np.random.default_rng(4)
  action = tf.constant(rng.normal(size=(2, 5, 3)), tf.float32)
  start = {'deter': tf.constant(rng.normal(size=(2, 16)), tf.float32),
           'stoch': tf.one_hot(rng.integers(0, 5, (2, 4)), 5),
           'logit': tf.zeros([2, 4, 5])}
  seq = rssm.imagine(action, start, sample=False)
  state = start
  for t in range(5):
    state = rssm.img_step(state, action[:, t], sample=False)
    for key in ('deter', 'stoch', 'logit'):
      np.testing.assert_allclose(seq[key][:, t].numpy(), state[key].numpy(), atol=1e-6)
  assert not np.allclose(seq['deter'][:, 0].numpy(), seq['deter'][:, 1].numpy())


# ----------------------------------------------------------------------------- Gaussian latents

def _gaussian_rssm(**kwargs):
  return nets.RSSM(action_size=3, embed_size=8, deter=16, hidden=16, stoch=4, discrete=0,
                   **kwargs)


def _softplus(x):
  return np.log1p(np.exp(x))


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize('std_act, fn', [
    ('softplus', _softplus),
    ('sigmoid', _sigmoid),
    ('sigmoid2', lambda x: 2.0 * _sigmoid(x / 2.0)),
])
def test_latent_std_activation_plus_min_std_by_hand(std_act, fn):
  raw = np.array([-3.0, -0.5, 0.0, 2.0], np.float32)
  std = dists.latent_std(tf.constant(raw), std_act, 0.3).numpy()
  np.testing.assert_allclose(std, fn(raw.astype(np.float64)) + 0.3, rtol=1e-6)
  # At 0: softplus ln 2 + 0.3, sigmoid 0.5 + 0.3, sigmoid2 1 + 0.3.
  assert std[2] == pytest.approx({'softplus': math.log(2), 'sigmoid': 0.5,
                                  'sigmoid2': 1.0}[std_act] + 0.3, rel=1e-6)


def test_unknown_std_act_is_refused():
  with pytest.raises(ValueError, match="std_act is 'tanh'; allowed: softplus, sigmoid"):
    _gaussian_rssm(std_act='tanh')


def test_gaussian_kl_closed_form_and_balanced_gradients():
  """KL(post ‖ prior) of diagonal Gaussians summed over the 4 latents, and the balanced loss's
  gradients: the posterior gets (1 − 0.8) of the full KL's, the prior 0.8."""
  rssm = _gaussian_rssm()
  rng = np.random.default_rng(11)
  mq, mp = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
  sq, sp = rng.uniform(0.2, 2.0, (2, 3, 4)), rng.uniform(0.2, 2.0, (2, 3, 4))
  params = [tf.constant(x, tf.float32) for x in (mq, sq, mp, sp)]
  with tf.GradientTape() as tape:
    tape.watch(params)
    loss, value = rssm.kl_loss({'mean': params[0], 'std': params[1]},
                               {'mean': params[2], 'std': params[3]}, balance=0.8, free=0.0)
  kl = (np.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5).sum(-1)
  np.testing.assert_allclose(value.numpy(), kl, rtol=1e-5)
  np.testing.assert_allclose(float(loss), kl.mean(), rtol=1e-5)
  n = kl.size  # the loss is a mean over the 2 x 3 steps
  expected = [
      0.2 * (mq - mp) / sp ** 2 / n,                                  # d / d post mean
      0.2 * (-1 / sq + sq / sp ** 2) / n,                             # d / d post std
      0.8 * (mp - mq) / sp ** 2 / n,                                  # d / d prior mean
      0.8 * (1 / sp - (sq ** 2 + (mq - mp) ** 2) / sp ** 3) / n]      # d / d prior std
  for grad, want in zip(tape.gradient(loss, params), expected):
    np.testing.assert_allclose(grad.numpy(), want, rtol=1e-4, atol=1e-7)


def _layer_norm(x, layer):
  mean = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-3) * layer.gamma.numpy() + layer.beta.numpy()


def _elu(x):
  return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def _dense_np(x, layer):
  return x @ layer.kernel.numpy() + layer.bias.numpy()


def test_gaussian_obs_step_with_layer_norm_by_hand():
  """rssm.discrete 0, norm layer, std_act softplus, min_std 0.2: the prior and posterior stats,
  stoch (the mean with sample=False), state keys and features, recomputed in numpy."""
  rssm = _gaussian_rssm(norm='layer', std_act='softplus', min_std=0.2)
  rng = np.random.default_rng(12)
  for v in rssm.trainable_variables:
    v.assign(0.5 * rng.normal(size=v.shape).astype(np.float32))
  assert {k: tuple(v.shape) for k, v in rssm.initial(2).items()} == {
      'deter': (2, 16), 'stoch': (2, 4), 'mean': (2, 4), 'std': (2, 4)}
  assert rssm.feat_size == 4 + 16 and rssm.stoch_shape == (4,)
  prev = {'deter': rng.normal(size=(2, 16)).astype(np.float32),
          'stoch': rng.normal(size=(2, 4)).astype(np.float32)}
  action = rng.normal(size=(2, 3)).astype(np.float32)
  embed = rng.normal(size=(2, 8)).astype(np.float32)
  post, prior = rssm.obs_step({k: tf.constant(v) for k, v in prev.items()}, action, embed,
                              tf.constant([False, False]), sample=False)
  x = _elu(_layer_norm(_dense_np(np.concatenate([prev['stoch'], action], -1), rssm.img_in),
                       rssm.img_in_norm))
  deter = rssm.cell(tf.constant(x, tf.float32), tf.constant(prev['deter'])).numpy()

  def stats(layer_out, layer_norm, layer_dist, inputs):
    out = _dense_np(_elu(_layer_norm(_dense_np(inputs, layer_out), layer_norm)), layer_dist)
    return out[:, :4], _softplus(out[:, 4:]) + 0.2

  for state, (mean, std) in (
      (prior, stats(rssm.img_out, rssm.img_out_norm, rssm.img_dist, deter)),
      (post, stats(rssm.obs_out, rssm.obs_out_norm, rssm.obs_dist,
                   np.concatenate([deter, embed], -1)))):
    assert sorted(state) == ['deter', 'mean', 'std', 'stoch']
    np.testing.assert_allclose(state['deter'].numpy(), deter, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state['mean'].numpy(), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state['std'].numpy(), std, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(state['stoch'].numpy(), state['mean'].numpy())
  feat = rssm.get_feat(post).numpy()
  np.testing.assert_array_equal(feat, np.concatenate([post['stoch'], post['deter']], -1))


def test_gaussian_samples_are_reparameterised_and_modes_under_the_switch():
  rssm = _gaussian_rssm()
  rng = np.random.default_rng(13)
  embed = tf.constant(rng.normal(size=(2, 5, 8)), tf.float32)
  action = tf.constant(rng.normal(size=(2, 5, 3)), tf.float32)
  is_first = tf.constant([[True] + [False] * 4] * 2)
  post, prior = rssm.observe(embed, action, is_first)
  assert post['stoch'].shape == (2, 5, 4) and prior['mean'].shape == (2, 5, 4)
  assert not np.allclose(post['stoch'].numpy(), post['mean'].numpy())
  noise = (post['stoch'] - post['mean']) / post['std']  # ε ~ N(0, 1)
  assert 0.2 < float(tf.math.reduce_std(noise)) < 3.0
  with dists.mode_draws():
    post_mode, _ = rssm.observe(embed, action, is_first)
  np.testing.assert_array_equal(post_mode['stoch'].numpy(), post_mode['mean'].numpy())
  mode_post, _ = rssm.observe(embed, action, is_first, sample=False)
  np.testing.assert_allclose(post_mode['mean'].numpy(), mode_post['mean'].numpy(), atol=1e-6)


def test_gaussian_latent_agent_trains_and_acts():
  """The debug Pong agent with rssm.discrete 0: features stoch + deter = 4 + 32, finite
  updates that change the weights, a policy state with stoch [B, 4]."""
  agent, _ = make_agent('atari', 'debug', **{'rssm.discrete': 0})
  assert agent.wm.rssm.feat_size == 36
  before = [v.numpy().copy() for v in agent.wm.rssm.trainable_variables]
  for seed in range(2):
    metrics = agent.train(random_batch(2, 10, seed))
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert float(metrics['post_ent']) != 0.0 and float(metrics['kl_loss']) > 0.0
  assert any(not np.array_equal(a, v.numpy())
             for a, v in zip(before, agent.wm.rssm.trainable_variables))
  data = random_batch(1, 2)
  obs = {'image': data['image'][:, 0].repeat(3, 0), 'is_first': np.array([True] * 3)}
  out, state = agent.policy(obs, None, mode='eval')
  assert state['stoch'].shape == (3, 4) and out['action'].shape == (3, 6)
  out, state = agent.policy(obs, state, mode='train')
  assert np.isfinite(state['stoch'].numpy()).all()


def test_gru_cell_formula_by_hand():
  cell = nets.GRUCell(in_size=2, size=3)
  rng = np.random.default_rng(5)
  for v in cell.trainable_variables:
    v.assign(rng.normal(size=v.shape).astype(np.float32))
  x = rng.normal(size=(1, 2)).astype(np.float32)
  h = rng.normal(size=(1, 3)).astype(np.float32)
  kernel, bias = cell.dense.kernel.numpy(), cell.dense.bias.numpy()
  gamma, beta = cell.norm.gamma.numpy(), cell.norm.beta.numpy()
  parts = np.concatenate([x, h], -1) @ kernel + bias
  mean, var = parts.mean(-1, keepdims=True), parts.var(-1, keepdims=True)
  parts = (parts - mean) / np.sqrt(var + 1e-3) * gamma + beta
  r, c, u = np.split(parts, 3, -1)
  sig = lambda z: 1 / (1 + np.exp(-z))
  r = sig(r)
  c = np.tanh(r * c)
  u = sig(u - 1)
  expected = u * c + (1 - u) * h
  np.testing.assert_allclose(cell(x, h).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_discount_targets_and_image_preprocessing():
  agent, _ = make_agent('atari', 'debug')
  data = random_batch(1, 4)
  data['is_terminal'][0, 2] = True
  data['image'][0, 0] = 0
  data['image'][0, 1] = 255
  pre = agent.wm.preprocess(data)
  np.testing.assert_allclose(pre['discount'].numpy(), [[0.999, 0.999, 0.0, 0.999]], rtol=1e-7)
  assert float(tf.reduce_max(pre['image'][0, 0])) == -0.5
  assert float(tf.reduce_min(pre['image'][0, 1])) == 0.5
  np.testing.assert_array_equal(preprocess_image(data['image']).numpy(), pre['image'].numpy())
  np.testing.assert_allclose(pre['reward'].numpy(), np.tanh(data['reward']), rtol=1e-6)


def test_straight_through_one_hot():
  logits = tf.constant(np.random.default_rng(0).normal(size=(64, 7)), tf.float32)
  weights = tf.constant(np.random.default_rng(1).normal(size=(64, 7)), tf.float32)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(logits)
    dist = dists.OneHotDist(logits)
    sample = dist.sample()
    probs = dist.probs_parameter()
    via_sample = tf.reduce_sum(sample * weights)
    via_probs = tf.reduce_sum(probs * weights)
  values = sample.numpy()
  assert set(np.unique(values)) <= {0.0, 1.0}
  np.testing.assert_array_equal(values.sum(-1), np.ones(64))
  np.testing.assert_allclose(tape.gradient(via_sample, logits).numpy(),
                             tape.gradient(via_probs, logits).numpy(), rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(dist.mode().numpy(),
                                np.eye(7)[np.argmax(logits.numpy(), -1)])
  # log_prob does not differentiate into the event (docs/reference.md §8).
  event = tf.Variable(np.eye(7, dtype=np.float32)[np.zeros(64, int)])
  with tf.GradientTape() as tape:
    lp = tf.reduce_sum(dists.OneHotDist(logits).log_prob(event))
  assert tape.gradient(lp, event) is None


def test_truncated_normal_actor_samples_inside_bounds():
  mean = tf.constant(np.full((1000, 2), 5.0), tf.float32)
  dist = dists.action_dist('trunc_normal', mean, tf.zeros_like(mean))
  sample = dist.sample().numpy()
  assert sample.min() > -1.0 and sample.max() < 1.0
  # loc = tanh(5), scale = 2·σ(0) + 0.1 = 1.1.
  np.testing.assert_allclose(dist.distribution.loc.numpy()[0], np.tanh(5.0), rtol=1e-6)
  np.testing.assert_allclose(dist.distribution.scale.numpy()[0], 1.1, rtol=1e-6)


def test_schedules():
  assert parse('1e-3') == ('constant', (1e-3,))
  np.testing.assert_allclose(float(schedule('linear(1.0,0.0,100)', 25)), 0.75)
  np.testing.assert_allclose(float(schedule('linear(1.0,0.0,100)', 1000)), 0.0)
  np.testing.assert_allclose(float(schedule('warmup(100,2.0)', 50)), 1.0)
  np.testing.assert_allclose(float(schedule('exp(1.0,0.0,10)', 10)), 0.5)
  np.testing.assert_allclose(float(schedule('horizon(10,100,100)', 0)), 0.9)
  with pytest.raises(ValueError, match='linear'):
    parse('linear(1, 2)')


def test_target_critic_copied_after_first_update_then_every_period():
  agent, _ = make_agent('atari', 'debug', slow_target_update=2)
  data = random_batch(2, 10)
  critic, target = agent.ac.critic, agent.ac.target_critic
  assert not np.allclose(critic.variables[0].numpy(), target.variables[0].numpy())
  agent.train(data)  # updates 0 → copy after the critic step.
  np.testing.assert_array_equal(critic.variables[0].numpy(), target.variables[0].numpy())
  agent.train(data)  # updates 1 → no copy.
  assert not np.allclose(critic.variables[0].numpy(), target.variables[0].numpy())
  agent.train(data)  # updates 2 → copy.
  np.testing.assert_array_equal(critic.variables[0].numpy(), target.variables[0].numpy())
  assert int(agent.updates) == 3
  assert int(agent.wm.opt.iterations) == 3


def test_weight_decay_and_clip_order():
  from dreamerv2_tf.optim import Optimizer
  var = tf.Variable([3.0, 4.0])
  opt = Optimizer('test', [var], lr=0.0, eps=1e-5, clip=1.0, wd=0.5)
  metrics = opt.apply([tf.constant([30.0, 40.0])])
  # Norm logged before clipping; lr 0 leaves only the decay w ← (1 − wd)·w.
  np.testing.assert_allclose(float(metrics['test_grad_norm']), 50.0)
  np.testing.assert_allclose(var.numpy(), [1.5, 2.0])


def test_policy_modes_and_reset():
  agent, _ = make_agent('atari', 'debug')
  data = random_batch(1, 3)
  obs = {'image': data['image'][:, 0].repeat(2, 0), 'is_first': np.array([True, True])}
  out, state = agent.policy(obs, None, mode='eval')
  action = out['action'].numpy()
  np.testing.assert_array_equal(action.sum(-1), [1.0, 1.0])
  assert state['deter'].shape == (2, 32) and state['stoch'].shape == (2, 4, 4)
  with pytest.raises(ValueError, match='explore'):
    agent.policy(obs, state, mode='explore')


@pytest.fixture(scope='module')
def pong_batch(tmp_path_factory):
  """A replay batch of real Pong frames: random-policy episodes stored and sampled by Replay."""
  from dreamerv2_tf import envs
  from dreamerv2_tf.replay import Replay
  config = load_config(['atari'], {'time_limit': 120})
  replay = Replay(tmp_path_factory.mktemp('episodes'), None, minlen=50, seed=0)
  env = envs.make_env('atari_pong', config, 'train', seed=0)
  rng = np.random.default_rng(0)
  for _ in range(2):
    replay.add_step(env.reset())
    while True:
      transition = env.step(np.eye(6, dtype=np.float32)[rng.integers(6)])
      replay.add_step(transition)
      if transition['is_last']:
        break
  env.close()
  batch = replay.sample(16, 50, prioritize_ends=True, seed=0)
  return {k: np.asarray(v) for k, v in batch.items()}


def test_pong_batch_is_real_frames(pong_batch):
  image = pong_batch['image']
  assert image.shape == (16, 50, 64, 64, 1) and image.dtype == np.uint8
  assert image.std() > 5.0  # Real screens, not blank frames.
  assert pong_batch['is_first'][:, 0].all()


@pytest.mark.slow
def test_full_pong_config_train_step_is_finite(pong_batch):
  agent, _ = make_agent('atari', precision=32)
  metrics = {k: float(v) for k, v in agent.train(pong_batch).items()}
  assert all(np.isfinite(v) for v in metrics.values()), metrics
  # A fresh model predicts roughly zero: the image loss is about the Gaussian constant
  # 0.5·ln 2π·4096 = 3763.97 plus half the squared error of frames in [−0.5, 0.5].
  assert 3764.0 < metrics['image_loss'] < 3764.0 + 0.5 * 4096 * 0.25 + 50
  assert int(agent.updates) == 1


def test_mixed_precision_train_step_with_loss_scaling(monkeypatch):
  """precision 16 with a (faked) GPU: float16 layers, float32 losses, dynamic loss scale."""
  import keras
  real = tf.config.list_physical_devices
  monkeypatch.setattr(tf.config, 'list_physical_devices',
                      lambda kind=None: ['fake-gpu'] if kind == 'GPU' else real(kind))
  try:
    agent, _ = make_agent('atari', 'debug', precision=16)
    assert agent.precision == 'mixed_float16'
    assert agent.wm.encoder.compute_dtype == 'float16'
    assert agent.wm.rssm.cell.norm.compute_dtype == 'float32'
    data = random_batch(2, 10)
    history = [{k: float(v) for k, v in agent.train(data).items()} for _ in range(5)]
    for metrics in history:
      losses = {k: v for k, v in metrics.items() if k.endswith('_loss')}
      assert all(np.isfinite(v) for v in losses.values()), losses
    # Dynamic loss scaling: starts at 2^15; a step whose gradients overflow float16 is
    # skipped and halves the scale; once finite, the scale stays (it grows after 2000 steps).
    assert history[0]['model_loss_scale'] == 2.0 ** 15
    for before, after in zip(history, history[1:]):
      expected = before['model_loss_scale'] / (1 if np.isfinite(before['model_grad_norm']) else 2)
      assert after['model_loss_scale'] == expected
    assert np.isfinite(history[-1]['model_grad_norm'])
    assert int(agent.wm.opt.iterations) == sum(np.isfinite(m['model_grad_norm']) for m in history)
    out, _ = agent.policy({'image': random_batch(1, 1)['image'][:, 0],
                           'is_first': np.array([True])})
    assert out['action'].dtype == tf.float32
  finally:
    keras.mixed_precision.set_global_policy('float32')


def test_debug_model_fits_a_fixed_batch(pong_batch):
  """200 updates on one fixed batch of real Pong frames at least halve the reconstruction
  error (image_loss minus its constant 0.5·ln 2π per pixel): the model can fit data."""
  agent, config = make_agent('atari', 'debug')
  data = {k: v[:2, :10] for k, v in pong_batch.items()}
  constant = 64 * 64 * 0.5 * math.log(2 * math.pi)
  first = agent.train(data)
  for _ in range(199):
    last = agent.train(data)
  before = float(first['image_loss']) - constant
  after = float(last['image_loss']) - constant
  assert np.isfinite(after) and after < 0.5 * before, (before, after)


@pytest.mark.parametrize('slow_baseline', [True, False])
def test_reused_baseline_equals_recomputed_one(slow_baseline):
  """The reinforce baseline is the target critic's values, whatever slow_baseline says (as in
  the authors' ActorCritic.actor_loss, which always calls _target_critic)."""
  agent, _ = make_agent('atari', 'debug', slow_baseline=slow_baseline)
  ac = agent.ac
  rng = np.random.default_rng(8)
  start = {'deter': tf.constant(rng.normal(size=(2, 3, 32)), tf.float32),
           'stoch': tf.one_hot(rng.integers(0, 4, (2, 3, 4)), 4),
           'logit': tf.zeros([2, 3, 4, 4])}
  seq = agent.wm.imagine(ac.policy, start, None, 3)
  seq['reward'] = agent.wm.head_dist('reward', seq['feat']).mode()
  target, value, _ = ac._target_and_value(seq)
  reused, _ = ac.actor_loss(seq, target, 0, value)
  recomputed, _ = ac.actor_loss(seq, target, 0)
  np.testing.assert_allclose(float(reused), float(recomputed), rtol=1e-6)
  np.testing.assert_allclose(value.numpy(), ac.value(seq['feat'], target=True).numpy())
  np.testing.assert_allclose(ac.target(seq)[0].numpy(), target.numpy())


def test_kl_balance_half_is_the_plain_kl_with_free_nats_per_step():
  """kl.balance 0.5 follows the authors' own branch: mean(max(KL, free)), no stop-gradient."""
  rssm = _rssm()
  rng = np.random.default_rng(1)
  post_logit = tf.constant(rng.normal(size=(2, 3, 4, 5)), tf.float32)
  prior_logit = tf.constant(rng.normal(size=(2, 3, 4, 5)), tf.float32)
  kl = rssm.get_dist({'logit': post_logit}).kl_divergence(rssm.get_dist({'logit': prior_logit}))
  free = float(np.median(kl.numpy()))  # half of the steps are clamped
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([post_logit, prior_logit])
    value = rssm.get_dist({'logit': post_logit}).kl_divergence(
        rssm.get_dist({'logit': prior_logit}))
    expected = tf.reduce_mean(tf.maximum(value, free))
    loss, kl_value = rssm.kl_loss({'logit': post_logit}, {'logit': prior_logit}, balance=0.5,
                                  free=free, free_avg=True)
  assert float(tf.reduce_min(value)) < free < float(tf.reduce_max(value))
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
  np.testing.assert_allclose(kl_value.numpy(), value.numpy(), rtol=1e-6)
  for var in (post_logit, prior_logit):
    np.testing.assert_allclose(tape.gradient(loss, var).numpy(),
                               tape.gradient(expected, var).numpy(), rtol=1e-5, atol=1e-8)
  assert np.any(tape.gradient(loss, post_logit).numpy())


def test_policy_refuses_to_act_on_non_finite_values():
  agent, _ = make_agent('atari', 'debug')
  obs = {'image': random_batch(2, 1)['image'][:, 0], 'is_first': np.array([True, True])}
  agent.policy(obs)  # finite: acts
  kernel = agent.ac.actor.out.kernel
  kernel.assign(tf.tensor_scatter_nd_update(kernel, [[0, 0]], [np.nan]))
  for mode in ('train', 'eval'):
    with pytest.raises(FloatingPointError, match='not finite'):
      agent.policy(obs, mode=mode)


def test_skipped_mixed_precision_step_changes_no_weight():
  """An overflowing step under the loss scaler: no Adam step, no weight decay, counted."""
  from dreamerv2_tf.optim import Optimizer
  var = tf.Variable([3.0, 4.0])
  opt = Optimizer('test', [var], lr=0.1, eps=1e-5, clip=100.0, wd=0.5, mixed=True)
  metrics = opt.apply([tf.constant([np.inf, 1.0])])
  np.testing.assert_array_equal(var.numpy(), [3.0, 4.0])
  assert float(metrics['test_skipped_steps']) == 1.0 and int(opt.iterations) == 0
  assert float(metrics['test_loss_scale']) == 2.0 ** 15
  metrics = opt.apply([tf.constant([2.0 ** 15, 2.0 ** 15])])  # finite: decays and steps
  assert float(metrics['test_skipped_steps']) == 1.0 and int(opt.iterations) == 1
  assert float(opt.loss_scale()) == 2.0 ** 14
  np.testing.assert_allclose(var.numpy(), [1.5 - 0.1, 2.0 - 0.1], atol=1e-4)  # Adam: ≈ lr


def test_agent_variables_are_complete_and_unique():
  agent, _ = make_agent('atari', 'debug')
  counts = agent.param_counts()
  trainable = agent.trainable_variables
  assert len({id(v) for v in trainable}) == len(trainable)
  assert sum(int(np.prod(v.shape)) for v in trainable) == (
      counts['world_model'] + counts['actor'] + counts['critic'])
  layers = [agent.wm.encoder, agent.wm.rssm, *agent.wm.heads.values(), agent.ac.actor,
            agent.ac.critic, agent.ac.target_critic]
  weights = [w for layer in layers for w in layer.weights]
  everything = agent.variables
  ids = [id(v) for v in everything]
  assert len(set(ids)) == len(ids)
  assert {id(w) for w in weights} <= set(ids)
  assert {id(v) for v in trainable} <= set(ids)
  for extra in (agent.step, agent.updates, agent.ac.reward_norm.mag, agent.wm.opt.iterations):
    assert id(extra) in set(ids)
  # 62 layer weights here, target critic included (tf.Module alone saw 2 of them).
  assert len(weights) == 62 and len(everything) > len(weights)


def test_action_noise_as_the_authors():
  import types
  discrete = types.SimpleNamespace(discrete=True, action_size=4)
  action = tf.one_hot(tf.zeros([4000], tf.int32), 4)
  assert Agent._action_noise(discrete, action, 0.0) is action
  noisy = Agent._action_noise(discrete, action, 0.4).numpy()
  # probs = amount / A + (1 - amount) * action: 0.7 for the chosen class, 0.1 for the others.
  assert set(np.unique(noisy)) == {0.0, 1.0} and np.all(noisy.sum(-1) == 1)
  np.testing.assert_allclose(noisy.mean(0), [0.7, 0.1, 0.1, 0.1], atol=0.03)
  continuous = types.SimpleNamespace(discrete=False, action_size=2)
  action = tf.fill([4000, 2], 0.9)
  noisy = Agent._action_noise(continuous, action, 0.3).numpy()
  assert noisy.max() == 1.0 and noisy.min() >= -1.0  # clipped Normal(action, amount)
  np.testing.assert_allclose(np.median(noisy, 0), [0.9, 0.9], atol=0.03)
