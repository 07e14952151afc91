"""Exploration behaviours (issue 13): `expl_behavior` greedy, plan2explore or model_loss.

greedy (the default) has no explorer: the task actor acts while training. The others train a
second ActorCritic in imagination on an exploration reward, after the task behaviour, in the
same update; the agent acts with its actor in train mode while `expl_until` allows (agent.py).
The authors' class names `Plan2Explore` and `ModelLoss` are accepted as the same behaviours.

plan2explore: an ensemble of `disag_models` heads (`expl_head`, unit-variance Normal outputs)
learns to predict `disag_target` of step t + `disag_offset` from the posterior feature of step
t (concatenated with the replay action of step t when `disag_action_cond`), with its own
optimiser `expl_opt` (metrics expl_loss, expl_grad_norm); inputs and targets carry no gradient.
Its reward on an imagined trajectory is the disagreement: the members' predicted means, their
standard deviation across members (population, ddof 0), averaged over the target's dimensions
(its log with `disag_log`), normalised by a `RewardNorm(expl_reward_norm)`; with
`expl_extr_scale` ≠ 0 the reward head's mode, normalised by a second one, is added:

    reward = expl_intr_scale · norm_i(disag) + expl_extr_scale · norm_e(reward head)

model_loss: one head (`expl_head`, scalar output) regresses the world model's per-step KL
(`expl_model_loss: kl`) from the posterior feature; the reward is expl_intr_scale · its
prediction (+ expl_extr_scale · reward head, neither normalised here).

Both rewards then go through the explorer's own ActorCritic, whose `reward_norm` applies as for
the task behaviour. `build` returns None for greedy.
"""

from __future__ import annotations

import tensorflow as tf

from dreamerv2_tf import dists, nets
from dreamerv2_tf.actor_critic import ActorCritic, RewardNorm
from dreamerv2_tf.optim import Optimizer

BEHAVIORS = ('greedy', 'plan2explore', 'model_loss')
# The authors select behaviours by their class name in expl.py.
ALIASES = {'Plan2Explore': 'plan2explore', 'ModelLoss': 'model_loss'}
DISAG_TARGETS = ('stoch', 'deter', 'feat', 'embed')
MODEL_LOSS_TARGETS = ('kl',)


def canonical(behavior: str) -> str:
  """'plan2explore' for 'plan2explore' or the authors' 'Plan2Explore', etc."""
  return ALIASES.get(behavior, behavior)


def build(config, wm, action_size: int, discrete: bool, mixed: bool = False):
  """The explorer that `config.expl_behavior` names, or None for greedy.

  Raises:
    ValueError: an unknown behaviour, disag_target or expl_model_loss.
  """
  behavior = canonical(config.expl_behavior)
  if behavior == 'greedy':
    return None
  if behavior == 'plan2explore':
    return Plan2Explore(config, wm, action_size, discrete, mixed)
  if behavior == 'model_loss':
    return ModelLoss(config, wm, action_size, discrete, mixed)
  raise ValueError(f'expl_behavior is {config.expl_behavior!r}; allowed: '
                   f'{", ".join(BEHAVIORS)} (or Plan2Explore, ModelLoss).')


def _head(in_size: int, out_size: int, spec, name: str) -> nets.MLP:
  return nets.MLP(in_size, out_size, spec['layers'], spec['units'], spec['act'],
                  norm=spec.get('norm', 'none'), name=name)


def _scaled_extrinsic(wm, seq, scale: float, norm=None):
  """scale · (normalised) reward head mode on the imagined trajectory, or None for scale 0."""
  if not scale:
    return None
  reward = wm.head_dist('reward', seq['feat']).mode()
  if norm is not None:
    reward, _ = norm(reward)
  return scale * reward


class Explorer(tf.Module):
  """What the behaviours share: their own ActorCritic (`ac`) and `policy`.

  Subclasses create `self.opt` and the heads, and define `train_heads` and `reward`.
  """

  def __init__(self, config, wm, action_size: int, discrete: bool, mixed: bool, name: str):
    super().__init__(name=name)
    self.intr_scale = float(config.expl_intr_scale)
    self.extr_scale = float(config.expl_extr_scale)
    self.ac = ActorCritic.from_config(config, wm.rssm.feat_size, action_size, discrete, mixed,
                                      name='expl_actor_critic')

  def policy(self, feat: tf.Tensor):
    """The explorer's action distribution π(·|feat)."""
    return self.ac.policy(feat)

  @property
  def optimizers(self) -> list:
    """[heads' `expl` optimiser, explorer actor, explorer critic]."""
    return [self.opt, self.ac.actor_opt, self.ac.critic_opt]

  def layers(self) -> list:
    """Every Keras layer: the heads, then actor, critic, target critic."""
    return [*self.heads, self.ac.actor, self.ac.critic, self.ac.target_critic]

  def train(self, wm, start: dict, outputs: dict, data: dict, step) -> dict:
    """After the task behaviour's update: the heads, then the explorer's actor and critic.

    Args:
      wm: the world model. start: posterior states [B, T, ...] (gradients stopped).
      outputs: the world model's loss outputs (`feat`, `kl`, `embed`, ...) of this batch.
      data: the raw replay batch (`action`, `is_terminal`). step: agent-step counter.
    Returns:
      metrics without prefix (`expl_loss`, `expl_grad_norm`, `actor_loss`, ...).
    """
    metrics = self.train_heads(start, outputs, data)
    reward_fn = lambda seq: self.reward(wm, seq)
    metrics.update(self.ac.train(wm, start, data['is_terminal'], step, reward_fn))
    return metrics

  def _minimize(self, loss_fn) -> dict:
    with tf.GradientTape() as tape:
      loss = loss_fn()
      scaled = self.opt.scale(loss)
    metrics = self.opt.minimize(tape, scaled)
    metrics['expl_loss'] = loss
    return metrics


class Plan2Explore(Explorer):
  """Ensemble disagreement as the exploration reward (module docstring)."""

  def __init__(self, config, wm, action_size: int, discrete: bool, mixed: bool = False):
    super().__init__(config, wm, action_size, discrete, mixed, name='plan2explore')
    self.target = config.disag_target
    if self.target not in DISAG_TARGETS:
      raise ValueError(f'disag_target is {self.target!r}; allowed: {", ".join(DISAG_TARGETS)}.')
    rssm = wm.rssm
    self.stoch_size = rssm.feat_size - rssm.deter
    size = {'stoch': self.stoch_size, 'deter': rssm.deter, 'feat': rssm.feat_size,
            'embed': wm.encoder.embed_size}[self.target]
    self.action_cond = bool(config.disag_action_cond)
    self.offset = int(config.disag_offset)
    self.log = bool(config.disag_log)
    in_size = rssm.feat_size + (action_size if self.action_cond else 0)
    self.heads = [_head(in_size, size, config.expl_head, f'disag{i}')
                  for i in range(int(config.disag_models))]
    for i, head in enumerate(self.heads):
      setattr(self, f'disag{i}', head)  # tracked by tf.train.Checkpoint (see nets.MLP)
    self.intr_norm = RewardNorm(**dict(config.expl_reward_norm), name='intr_norm')
    self.extr_norm = RewardNorm(**dict(config.expl_reward_norm), name='extr_norm')
    variables = [v for head in self.heads for v in head.trainable_variables]
    self.opt = Optimizer('expl', variables, mixed=mixed, **dict(config.expl_opt))

  def inputs(self, feat: tf.Tensor, action: tf.Tensor) -> tf.Tensor:
    """The ensemble's input: feat [..., F], concatenated with action [..., A] if action_cond."""
    if not self.action_cond:
      return feat
    return tf.concat([feat, tf.cast(action, feat.dtype)], -1)

  def targets(self, start: dict, outputs: dict) -> tf.Tensor:
    """`disag_target` [B, T, D] of the batch: flat posterior stoch, deter, feat or embed."""
    if self.target == 'stoch':
      stoch = start['stoch']
      return tf.reshape(stoch, tf.concat([tf.shape(stoch)[:2], [self.stoch_size]], 0))
    if self.target == 'deter':
      return start['deter']
    return outputs[self.target]

  def disagreement(self, inputs: tf.Tensor) -> tf.Tensor:
    """Std over members of their predicted means, averaged over dims: [...] float32."""
    preds = tf.stack([tf.cast(head(inputs), tf.float32) for head in self.heads], 0)
    disag = tf.reduce_mean(tf.math.reduce_std(preds, 0), -1)
    return tf.math.log(disag) if self.log else disag

  def reward(self, wm, seq: dict) -> tf.Tensor:
    """Exploration reward [H + 1, N] of an imagined trajectory (module docstring)."""
    intr, _ = self.intr_norm(self.disagreement(self.inputs(seq['feat'], seq['action'])))
    reward = self.intr_scale * intr
    extr = _scaled_extrinsic(wm, seq, self.extr_scale, self.extr_norm)
    return reward if extr is None else reward + extr

  def ensemble_loss(self, inputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """−Σ_members mean log N(target_{t+offset}; head(input_t), 1), inputs/targets [B, T, ...]."""
    if self.offset:
      inputs, targets = inputs[:, :-self.offset], targets[:, self.offset:]
    inputs, targets = tf.stop_gradient(inputs), tf.stop_gradient(targets)
    targets = tf.cast(targets, tf.float32)
    return -tf.add_n([tf.reduce_mean(dists.vector_normal(head(inputs)).log_prob(targets))
                      for head in self.heads])

  def train_heads(self, start: dict, outputs: dict, data: dict) -> dict:
    inputs = self.inputs(outputs['feat'], data['action'])
    targets = self.targets(start, outputs)
    return self._minimize(lambda: self.ensemble_loss(inputs, targets))


class ModelLoss(Explorer):
  """A head regresses the world model's KL; its prediction is the reward (module docstring)."""

  def __init__(self, config, wm, action_size: int, discrete: bool, mixed: bool = False):
    super().__init__(config, wm, action_size, discrete, mixed, name='model_loss')
    self.key = config.expl_model_loss
    if self.key not in MODEL_LOSS_TARGETS:
      raise ValueError(f'expl_model_loss is {self.key!r}; allowed: '
                       f'{", ".join(MODEL_LOSS_TARGETS)}.')
    self.head = _head(wm.rssm.feat_size, 1, config.expl_head, 'model_loss_head')
    self.heads = [self.head]
    self.opt = Optimizer('expl', self.head.trainable_variables, mixed=mixed,
                         **dict(config.expl_opt))

  def predict(self, feat: tf.Tensor) -> tf.Tensor:
    """The head's predicted world-model loss [...] (float32) for feat [..., F]."""
    return tf.cast(self.head(feat)[..., 0], tf.float32)

  def reward(self, wm, seq: dict) -> tf.Tensor:
    reward = self.intr_scale * self.predict(seq['feat'])
    extr = _scaled_extrinsic(wm, seq, self.extr_scale)
    return reward if extr is None else reward + extr

  def head_loss(self, feat: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """−mean log N(target; head(feat), 1) over [B, T]."""
    dist = dists.scalar_normal(self.head(tf.stop_gradient(feat))[..., 0])
    return -tf.reduce_mean(dist.log_prob(tf.stop_gradient(tf.cast(target, tf.float32))))

  def train_heads(self, start: dict, outputs: dict, data: dict) -> dict:
    del start, data
    return self._minimize(lambda: self.head_loss(outputs['feat'], outputs[self.key]))


def count_params(explorer) -> dict[str, int]:
  """{'expl_heads': …, 'expl_actor': …, 'expl_critic': …} trainable parameter counts."""
  return {'expl_heads': sum(nets.count_params(h) for h in explorer.heads),
          'expl_actor': nets.count_params(explorer.ac.actor),
          'expl_critic': nets.count_params(explorer.ac.critic)}

