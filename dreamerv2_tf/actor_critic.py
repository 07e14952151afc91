"""Actor-critic trained in imagination, λ-returns, target critic (docs/reference.md §4, §8).

Time alignment of an imagined trajectory (time-major, H + 1 = 16 states, N columns):

    t          0     1     2    ...   14     15
    state      s0    s1    s2         s14    s15      (s0 = replay posterior, gradients stopped)
    action     0     a1    a2         a14    a15      (a_{t+1} sampled by π(·|s_t))
    reward     r0    r1    r2         r14    r15      (reward head's mode at s_t: the reward
                                                       for entering s_t)
    discount   γ0    γ1    γ2         γ14    γ15      (γ0 = γ·(1 − is_terminal) of the start)
    weight     1     γ0   γ0γ1        ...              (Π_{k<t} γ_k, gradients stopped)
    value v    target critic at s_t
    return R   R0 .. R14 over the first 15 states; R_t = r_t + γ_t((1 − λ)v_{t+1} + λR_{t+1}),
               R_15 := v_15 (bootstrap)

Actor loss: −mean_{t=0..13} w_t·(objective_t + η·H[π(·|s_t)]); reinforce objective
log π(a_{t+1}|s_t)·sg(R_{t+1} − v(s_t)) with v the target critic; dynamics objective R_{t+1}.
Critic loss: −mean_{t=0..14} w_t·log N(sg(R_t); v_critic(s_t), 1).

As in the authors' release, `v` in the targets and in the reinforce baseline is always the
target network: the target critic with `slow_target: True`, the critic itself without.
`slow_baseline` is accepted for config compatibility and, as there, changes nothing.
Rewards pass through `RewardNorm` (the authors' StreamNorm; the identity at momentum 1).
"""

from __future__ import annotations

import tensorflow as tf

from dreamerv2_tf import distribute, dists, nets
from dreamerv2_tf.optim import Optimizer
from dreamerv2_tf.schedule import parse, schedule


def lambda_return(reward: tf.Tensor, value: tf.Tensor, discount: tf.Tensor,
                  bootstrap: tf.Tensor | None, lambda_: float, axis: int = 0) -> tf.Tensor:
  """TD(λ) returns R_t = r_t + γ_t·((1 − λ)·v_{t+1} + λ·R_{t+1}), R_T = bootstrap.

  Args:
    reward, value, discount: float tensors [T, ...] along `axis` (time), same shape; value
      v_t is the value of step t, so v_{t+1} for t = T − 1 is the bootstrap.
    bootstrap: value after the last step [...], or None for zeros.
    lambda_: λ in [0, 1].
  Returns:
    returns of the same shape as `reward`.

  Example (docs/reference.md §4): reward [1, 2, 3], value [10, 20, 30], discount 0.5, bootstrap 40:
  λ = 0 → [11, 17, 23]; λ = 1 → [7.75, 13.5, 23].
  """
  if axis != 0:
    perm = [axis] + [i for i in range(len(reward.shape)) if i != axis]
    inverse = [perm.index(i) for i in range(len(perm))]
    out = lambda_return(tf.transpose(reward, perm), tf.transpose(value, perm),
                        tf.transpose(discount, perm), bootstrap, lambda_, 0)
    return tf.transpose(out, inverse)
  if bootstrap is None:
    bootstrap = tf.zeros_like(value[-1])
  next_values = tf.concat([value[1:], bootstrap[None]], 0)
  inputs = reward + discount * next_values * (1.0 - lambda_)
  returns = []
  last = bootstrap
  for t in reversed(range(reward.shape[0])):
    last = inputs[t] + discount[t] * lambda_ * last
    returns.append(last)
  return tf.stack(returns[::-1], 0)


class RewardNorm(tf.Module):
  """Streaming reward normalisation, the authors' StreamNorm (issue 13).

  mag ← momentum·mag + (1 − momentum)·mean|r| (float64 variable, starts at 1, updated with
  every batch before it is used); output r / (mag + eps)·scale. Momentum 1 leaves mag at 1:
  the output is r / (1 + eps)·scale (= r in float32 for eps 1e-8, scale 1); momentum 0 uses
  the current batch only.

  Args:
    momentum: in [0, 1]. scale: output multiplier. eps: added to mag.
  """

  def __init__(self, momentum: float = 1.0, scale: float = 1.0, eps: float = 1e-8,
               name: str = 'reward_norm'):
    super().__init__(name=name)
    self.momentum, self.scale, self.eps = float(momentum), float(scale), float(eps)
    self.mag = tf.Variable(tf.ones((), tf.float64), trainable=False, name='mag')

  def __call__(self, reward: tf.Tensor):
    """reward [...] float32 → (normalised reward [...], metrics mean/std/normed_mean/normed_std)."""
    reward = tf.cast(reward, tf.float32)
    batch_mag = tf.cast(tf.reduce_mean(tf.abs(tf.reshape(reward, [-1]))), tf.float64)
    batch_mag = distribute.replica_mean(batch_mag)  # every replica's copy: the global mean
    self.mag.assign(self.momentum * self.mag + (1.0 - self.momentum) * batch_mag)
    out = reward / (tf.cast(self.mag, tf.float32) + self.eps) * self.scale
    return out, {'mean': tf.reduce_mean(reward), 'std': tf.math.reduce_std(reward),
                 'normed_mean': tf.reduce_mean(out), 'normed_std': tf.math.reduce_std(out)}


class ActorCritic(tf.Module):
  """Actor, critic, target critic and their optimisers (docs/reference.md §4).

  Args:
    feat_size: F. action_size: A. discrete: one-hot actions (else continuous in [−1, 1]).
    actor, critic: sub-configs (layers, units, act; actor also dist, min_std, init_std).
    actor_opt, critic_opt: optimiser sub-configs. discount: γ (without a discount head).
    discount_lambda: λ. imag_horizon: H. actor_grad: auto|reinforce|dynamics|both.
    actor_grad_mix, actor_ent: numbers or schedule strings (agent steps).
    slow_target, slow_target_update (updates), slow_target_fraction; slow_baseline (no
      effect, as in the authors' release: the baseline is the target network).
    reward_norm: {'momentum', 'scale', 'eps'} of `RewardNorm`.
  Raises:
    ValueError: an unknown actor distribution or gradient.
  """

  def __init__(self, feat_size: int, action_size: int, discrete: bool, *, actor, critic,
               actor_opt, critic_opt, discount: float, discount_lambda: float,
               imag_horizon: int, actor_grad: str, actor_grad_mix, actor_ent,
               slow_target: bool, slow_target_update: int, slow_target_fraction: float,
               slow_baseline: bool, reward_norm, mixed: bool = False, name='actor_critic'):
    super().__init__(name=name)
    self.discrete = discrete
    dist = actor['dist']
    if dist == 'auto':
      dist = 'onehot' if discrete else 'trunc_normal'
    if dist not in ('onehot', 'trunc_normal'):
      raise ValueError(f"actor.dist is {dist!r}; allowed: auto, onehot, trunc_normal.")
    self.actor_dist = dist
    if actor_grad == 'auto':
      actor_grad = 'reinforce' if discrete else 'dynamics'
    if actor_grad not in ('reinforce', 'dynamics', 'both'):
      raise ValueError(
          f"actor_grad is {actor_grad!r}; allowed: auto, reinforce, dynamics, both.")
    momentum = float(reward_norm['momentum'])
    if not 0.0 <= momentum <= 1.0:
      raise ValueError(f'reward_norm.momentum is {momentum}; allowed: 0 to 1.')
    parse(actor_grad_mix), parse(actor_ent)  # Fail early on malformed schedules.
    self.actor_grad = actor_grad
    self.actor_grad_mix = actor_grad_mix
    self.actor_ent = actor_ent
    self.min_std = float(actor.get('min_std', 0.1))
    self.init_std = float(actor.get('init_std', 0.0))
    self.discount = float(discount)
    self.discount_lambda = float(discount_lambda)
    self.imag_horizon = int(imag_horizon)
    self.slow_target = slow_target
    self.slow_target_update = int(slow_target_update)
    self.slow_target_fraction = float(slow_target_fraction)
    self.slow_baseline = slow_baseline
    self.actor = nets.MLP(feat_size, action_size, actor['layers'], actor['units'],
                          actor['act'], std_out=dist == 'trunc_normal',
                          norm=actor.get('norm', 'none'), name='actor')
    critic_norm = critic.get('norm', 'none')
    self.critic = nets.MLP(feat_size, 1, critic['layers'], critic['units'], critic['act'],
                           norm=critic_norm, name='critic')
    self.target_critic = nets.MLP(feat_size, 1, critic['layers'], critic['units'],
                                  critic['act'], norm=critic_norm, name='target_critic')
    self.target_critic.trainable = False
    self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name='updates')
    self.reward_norm = RewardNorm(**dict(reward_norm))
    self.actor_opt = Optimizer('actor', self.actor.trainable_variables, mixed=mixed,
                               **dict(actor_opt))
    self.critic_opt = Optimizer('critic', self.critic.trainable_variables, mixed=mixed,
                                **dict(critic_opt))

  @classmethod
  def from_config(cls, config, feat_size: int, action_size: int, discrete: bool,
                  mixed: bool = False, name: str = 'actor_critic') -> 'ActorCritic':
    """An ActorCritic with the actor-critic keys of a full Config (configs.yaml)."""
    keys = ('actor', 'critic', 'actor_opt', 'critic_opt', 'discount', 'discount_lambda',
            'imag_horizon', 'actor_grad', 'actor_grad_mix', 'actor_ent', 'slow_target',
            'slow_target_update', 'slow_target_fraction', 'slow_baseline', 'reward_norm')
    return cls(feat_size, action_size, discrete, mixed=mixed, name=name,
               **{key: config[key] for key in keys})

  def policy(self, feat: tf.Tensor):
    """Action distribution π(·|feat) for feat [..., F]."""
    out = self.actor(feat)
    if self.actor_dist == 'onehot':
      return dists.action_dist('onehot', out)
    mean, std = out
    return dists.action_dist('trunc_normal', mean, std, self.min_std, self.init_std)

  def value(self, feat: tf.Tensor, target: bool = False) -> tf.Tensor:
    """Critic (or target critic) mean [...] (float32) for feat [..., F]."""
    net = self.target_critic if target else self.critic
    return tf.cast(net(feat)[..., 0], tf.float32)

  def train(self, world_model, start: dict, is_terminal: tf.Tensor, step,
            reward_fn=None) -> dict:
    """One actor and one critic update on a trajectory imagined from `start` [B, T, ...].

    `step` is the agent-step counter at which schedules are evaluated. `reward_fn(seq)` gives
    the rewards [H + 1, N] (default: the world model's reward head, its mode), normalised by
    `reward_norm`; the discount head gives the discounts.
    """
    metrics = {}
    if reward_fn is None:
      reward_fn = lambda seq: world_model.head_dist('reward', seq['feat']).mode()
    with tf.GradientTape() as actor_tape:
      seq = world_model.imagine(self.policy, start, is_terminal, self.imag_horizon)
      reward = reward_fn(seq)
      seq['reward'], mets = self.reward_norm(reward)
      metrics.update({f'reward_{k}': v for k, v in mets.items()})
      target, value, mets = self._target_and_value(seq)
      metrics.update(mets)
      actor_loss, mets = self.actor_loss(seq, target, step, value)
      metrics.update(mets)
      scaled = self.actor_opt.scale(actor_loss)
    with tf.GradientTape() as critic_tape:
      critic_loss, mets = self.critic_loss(seq, target)
      metrics.update(mets)
      scaled_critic = self.critic_opt.scale(critic_loss)
    metrics.update(self.actor_opt.minimize(actor_tape, scaled))
    metrics.update(self.critic_opt.minimize(critic_tape, scaled_critic))
    metrics['actor_loss'] = actor_loss
    metrics['critic_loss'] = critic_loss
    self.update_slow_target()
    return metrics

  def target(self, seq: dict):
    """λ-returns [H, N] over the first H states, values from the target critic.

    Returns (target [H, N] float32, metrics `critic_slow`, `critic_target`).
    """
    target, _, metrics = self._target_and_value(seq)
    return target, metrics

  def _target_and_value(self, seq: dict):
    reward = tf.cast(seq['reward'], tf.float32)
    disc = tf.cast(seq['discount'], tf.float32)
    value = self.value(seq['feat'], target=self.slow_target)
    target = lambda_return(reward[:-1], value[:-1], disc[:-1], value[-1],
                           self.discount_lambda, axis=0)
    return target, value, {'critic_slow': tf.reduce_mean(value),
                           'critic_target': tf.reduce_mean(target)}

  def actor_loss(self, seq: dict, target: tf.Tensor, step, value: tf.Tensor | None = None):
    """−mean_t w_t·(objective_t + η·entropy_t) over t = 0 … H − 2 (see the module diagram).

    Args:
      seq: imagined trajectory, time-major [H + 1, N, ...]; target: λ-returns [H, N];
      step: agent step for the schedules; value: the values [H + 1, N] that `target` used
        (the target network's), reused as the reinforce baseline; None recomputes them.
    Returns:
      (loss scalar float32, metrics `actor_ent`, `actor_ent_scale`).
    """
    policy = self.policy(tf.stop_gradient(seq['feat'][:-2]))
    if self.actor_grad == 'dynamics':
      objective = target[1:]
    else:
      # The authors' baseline is `_target_critic` whatever `slow_baseline` says (it is the
      # critic itself without a slow target), i.e. the network the targets use.
      if value is not None:
        baseline = value[:-2]
      else:
        baseline = self.value(seq['feat'][:-2], target=self.slow_target)
      advantage = tf.stop_gradient(target[1:] - baseline)
      action = tf.cast(seq['action'][1:-1], tf.float32)
      objective = policy.log_prob(action) * advantage
      if self.actor_grad == 'both':
        mix = schedule(self.actor_grad_mix, step)
        objective = mix * target[1:] + (1.0 - mix) * objective
    entropy = policy.entropy()
    ent_scale = schedule(self.actor_ent, step)
    objective += ent_scale * entropy
    weight = tf.stop_gradient(seq['weight'])
    loss = -tf.reduce_mean(weight[:-2] * objective)
    return loss, {'actor_ent': tf.reduce_mean(entropy), 'actor_ent_scale': ent_scale}

  def critic_loss(self, seq: dict, target: tf.Tensor):
    """−mean_t w_t·log N(sg(R_t); v(s_t), 1) over t = 0 … H − 1."""
    dist = dists.scalar_normal(self.critic(seq['feat'][:-1])[..., 0])
    weight = tf.stop_gradient(seq['weight'])
    loss = -tf.reduce_mean(dist.log_prob(tf.stop_gradient(target)) * weight[:-1])
    return loss, {'critic': tf.reduce_mean(dist.mode())}

  def update_slow_target(self):
    """Copies the critic into the target critic every `slow_target_update` updates.

    The copy happens when the counter is a multiple of the period (first at 0, i.e. right
    after the first critic step), with fraction 1 on the first copy; the counter then
    increments (docs/reference.md §8).
    """
    if not self.slow_target:
      return
    def copy():
      mix = tf.where(self.updates == 0, 1.0, self.slow_target_fraction)
      for s, d in zip(self.critic.variables, self.target_critic.variables):
        d.assign(mix * s + (1.0 - mix) * d)
      return tf.constant(True)
    tf.cond(self.updates % self.slow_target_update == 0, copy, lambda: tf.constant(False))
    self.updates.assign_add(1)
