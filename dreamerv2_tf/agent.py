"""The DreamerV2 agent: `policy`, `train` and `report`, the only tf.function entry points.

Usage (see loop.py):

    agent = Agent(config, obs_space, act_space, step)   # step: tf.Variable int64, agent steps
    state = agent.initial_state(batch)
    outputs, state = agent.policy(obs, state, mode='train')   # obs: image uint8 [B,H,W,C],
                                                              # is_first bool [B]
    metrics = agent.train(batch)                               # batch: {key: [B, T, ...]}

The policy state is a flat dict `{'deter': [B, D], 'stoch': [B, S, K], 'prev_action': [B, A]}`
(float32), the same tensors the exported SavedModel takes and returns. The agent is a
`tf.Module`: `tf.train.Checkpoint(agent=agent)` saves every variable, the optimisers' slots,
loss scales and `agent.updates` included (SPEC.md §5, §6, §8).
"""

from __future__ import annotations

import dataclasses
import logging

import keras
import tensorflow as tf

from dreamerv2_tf import nets
from dreamerv2_tf.actor_critic import ActorCritic
from dreamerv2_tf.world_model import WorldModel, obs_shapes, preprocess_image


@dataclasses.dataclass(frozen=True)
class ActSpace:
  """Action space: `discrete` one-hot actions of `size` classes, or `size` dims in [−1, 1]."""
  discrete: bool
  size: int


def configure_precision(precision: int) -> str:
  """Sets the global Keras dtype policy and returns its name (SPEC.md §5).

  `precision: 16` gives `mixed_float16` when a GPU is visible, else float32 (float16 is
  slower than float32 on CPUs). `precision: 32` gives float32.

  Raises:
    ValueError: for a precision other than 16 or 32.
  """
  if precision not in (16, 32):
    raise ValueError(f'precision is {precision!r}; allowed: 16, 32.')
  name = 'float32'
  if precision == 16 and tf.config.list_physical_devices('GPU'):
    name = 'mixed_float16'
  keras.mixed_precision.set_global_policy(name)
  return name


def _space_size(act_space) -> tuple[bool, int]:
  if isinstance(act_space, ActSpace):
    return act_space.discrete, act_space.size
  return bool(act_space.discrete), int(act_space.size)


class Agent(tf.Module):
  """World model + actor-critic, with compiled `policy`, `train` and `report`.

  Args:
    config: the full Config (configs.yaml keys).
    obs_space: {'image': ((H, W, C), uint8), ...} or an object with that mapping.
    act_space: ActSpace(discrete, size) or any object with those attributes.
    step: int64 tf.Variable counting agent steps; schedules are evaluated at it.
  """

  def __init__(self, config, obs_space, act_space, step: tf.Variable):
    super().__init__(name='agent')
    self.config = config
    self.precision = configure_precision(config.precision)
    mixed = self.precision == 'mixed_float16'
    image_shape = obs_shapes(obs_space)  # {key: shape} of the observation keys
    self.discrete, self.action_size = _space_size(act_space)
    self.step = step
    self.wm = WorldModel(
        image_shape, self.action_size, rssm=config.rssm, encoder=config.encoder,
        decoder=config.decoder, reward_head=config.reward_head,
        discount_head=config.discount_head, pred_discount=config.pred_discount,
        grad_heads=config.grad_heads, loss_scales=config.loss_scales, kl=config.kl,
        clip_rewards=config.clip_rewards, discount=config.discount,
        model_opt=config.model_opt, mixed=mixed)
    self.ac = ActorCritic(
        self.wm.rssm.feat_size, self.action_size, self.discrete, actor=config.actor,
        critic=config.critic, actor_opt=config.actor_opt, critic_opt=config.critic_opt,
        discount=config.discount, discount_lambda=config.discount_lambda,
        imag_horizon=config.imag_horizon, actor_grad=config.actor_grad,
        actor_grad_mix=config.actor_grad_mix, actor_ent=config.actor_ent,
        slow_target=config.slow_target, slow_target_update=config.slow_target_update,
        slow_target_fraction=config.slow_target_fraction,
        slow_baseline=config.slow_baseline, reward_norm=config.reward_norm, mixed=mixed)
    self.eval_state_mean = bool(config.eval_state_mean)
    if float(config.expl_noise) or float(config.eval_noise):
      raise ValueError('expl_noise and eval_noise must be 0 (no published config uses noise).')
    compile_fn = (lambda fn, **kw: tf.function(fn, **kw)) if config.jit else (lambda fn, **kw: fn)
    self._policy = compile_fn(self._policy_step)
    self._train = compile_fn(self._train_step, jit_compile=bool(config.xla))
    # Runs eagerly: it is called once per log interval, and Grappler's layout pass fails
    # (harmlessly, but loudly) on its traced graph in TF 2.21.
    self._report = self._report_step

  @property
  def updates(self) -> tf.Variable:
    """Number of train calls done (int64), the counter of the target-critic copies."""
    return self.ac.updates

  def param_counts(self) -> dict[str, int]:
    """Trainable parameters per module, e.g. {'encoder': 1549776, ...} for Atari."""
    counts = {name: nets.count_params(layer) for name, layer in
              [('encoder', self.wm.encoder), ('rssm', self.wm.rssm), *self.wm.heads.items()]}
    counts['world_model'] = sum(counts.values())
    counts['actor'] = nets.count_params(self.ac.actor)
    counts['critic'] = nets.count_params(self.ac.critic)
    return counts

  def initial_state(self, batch: int) -> dict:
    """Zero policy state for `batch` environments (float32 tensors)."""
    rssm = self.wm.rssm
    return {
        'deter': tf.zeros([batch, rssm.deter], tf.float32),
        'stoch': tf.zeros([batch, rssm.stoch, rssm.classes], tf.float32),
        'prev_action': tf.zeros([batch, self.action_size], tf.float32),
    }

  def policy(self, obs: dict, state: dict | None = None, mode: str = 'train'):
    """One acting step for a batch of environments (SPEC.md §8).

    Args:
      obs: the encoder's keys (e.g. 'image' uint8 [B, H, W, C], vectors float32 [B, n]) and
        'is_first' bool [B] (other keys ignored).
      state: policy state from the previous call (None: zeros); reset where is_first.
      mode: 'train' samples the action; 'eval' takes the actor's mode. The latent is sampled
        in both unless `eval_state_mean` (then the posterior's mode in 'eval').
    Returns:
      ({'action': float32 [B, A]}, new state).
    Raises:
      ValueError: for another mode.
    """
    if mode not in ('train', 'eval'):
      raise ValueError(f"policy mode is {mode!r}; allowed: 'train', 'eval'.")
    image = {k: tf.convert_to_tensor(obs[k]) for k in self.wm.encoder.keys}
    is_first = tf.convert_to_tensor(obs['is_first'], tf.bool)
    if state is None:
      state = self.initial_state(int(is_first.shape[0]))
    return self._policy(image, is_first, state, mode == 'eval')

  def _policy_step(self, image, is_first, state, eval_mode: bool):
    wm = self.wm
    embed = wm.encode(wm.preprocess_obs(image))
    latent = {'deter': state['deter'], 'stoch': state['stoch']}
    sample = not (eval_mode and self.eval_state_mean)
    post, _ = wm.rssm.obs_step(latent, state['prev_action'], embed, is_first, sample,
                               with_prior=False)
    dist = self.ac.policy(wm.rssm.get_feat(post))
    action = tf.cast(dist.mode() if eval_mode else dist.sample(), tf.float32)
    new_state = {'deter': tf.cast(post['deter'], tf.float32),
                 'stoch': tf.cast(post['stoch'], tf.float32), 'prev_action': action}
    return {'action': action}, new_state

  @property
  def batch_keys(self) -> tuple[str, ...]:
    """Replay keys an update reads: the encoder's and decoder's observation keys, then action,
    reward, is_first, is_terminal."""
    keys = dict.fromkeys(self.wm.encoder.keys + self.wm.heads['decoder'].keys)
    return tuple(keys) + ('action', 'reward', 'is_first', 'is_terminal')

  def train(self, data: dict) -> dict:
    """One update: world model, then actor and critic in imagination (SPEC.md §8).

    Args:
      data: replay batch {image uint8 [B,T,H,W,C], action float32 [B,T,A], reward float32
        [B,T], is_first/is_last/is_terminal bool [B,T]}; `log_*` keys are ignored.
    Returns:
      dict of float32 scalar metrics (model_loss, image_loss, ..., actor_loss, critic_loss).
    """
    keys = self.batch_keys
    return self._train({k: data[k] for k in keys})

  def _train_step(self, data):
    post, _, metrics = self.wm.train(data)
    start = {k: tf.stop_gradient(v) for k, v in post.items()}
    metrics.update(self.ac.train(self.wm, start, data['is_terminal'], self.step))
    return {k: tf.cast(v, tf.float32) for k, v in metrics.items()}

  def report(self, data: dict) -> dict:
    """Open-loop video {'openl_image': uint8 [T, 3·H, N·W, C]} (truth | model | error); {}
    when the decoder does not reconstruct an `image` key."""
    if 'image' not in self.wm.heads['decoder'].cnn_keys:
      return {}
    keys = self.batch_keys
    return self._report({k: data[k] for k in keys})

  def _report_step(self, data):
    return {'openl_image': self.wm.video_pred(data)}

