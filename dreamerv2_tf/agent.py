"""The DreamerV2 agent: `policy`, `train` and `report`, the only tf.function entry points.

Usage (see loop.py):

    agent = Agent(config, obs_space, act_space, step)   # step: tf.Variable int64, agent steps
    state = agent.initial_state(batch)
    outputs, state = agent.policy(obs, state, mode='train')   # obs: image uint8 [B,H,W,C],
                                                              # is_first bool [B]
    metrics = agent.train(batch)                               # batch: {key: [B, T, ...]}

The policy state is a flat dict `{'deter': [B, D], 'stoch': [B, S, K], 'prev_action': [B, A]}`
(float32; `stoch` [B, S] for Gaussian latents, `rssm.discrete: 0`), the same tensors the
exported SavedModel takes and returns. The agent is a `tf.Module`:
`tf.train.Checkpoint(agent=agent)` saves every variable, the optimisers' slots, loss scales and
`agent.updates` included (docs/reference.md §5, §6, §8). `agent.variables` and
`agent.trainable_variables` list every variable exactly once (tf.Module alone does not see
Keras 3 layers); `build_parts` creates all layers and optimisers, so constructing the Agent
inside a `tf.distribute` strategy's scope (`scope=strategy.scope()`) places all of them.

`deterministic_check: True` (a checking tool, README "Deterministic updates") traces `train`
and `policy` under `dists.mode_draws()`: every random draw is its mode, the straight-through
terms stay, as in the authors' update fixtures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import keras
import tensorflow as tf

from dreamerv2_tf import dists, expl, nets
from dreamerv2_tf.actor_critic import ActorCritic
from dreamerv2_tf.world_model import WorldModel, obs_shapes, preprocess_image


@dataclasses.dataclass(frozen=True)
class ActSpace:
  """Action space: `discrete` one-hot actions of `size` classes, or `size` dims in [−1, 1]."""
  discrete: bool
  size: int


def configure_precision(precision: int) -> str:
  """Sets the global Keras dtype policy and returns its name (docs/reference.md §5).

  `precision: 16` gives `mixed_float16` when a GPU is visible, else float32 (float16 is
  slower than float32 on CPUs). `precision: 32` gives float32; 'bf16' gives `mixed_bfloat16`
  (no loss scaling). Idempotent, and the same mapping as the Runner's device set-up.

  Raises:
    ValueError: for a precision other than 16, 32 or 'bf16'.
  """
  if precision not in (16, 32, 'bf16'):
    raise ValueError(f"precision is {precision!r}; allowed: 16, 32, 'bf16'.")
  name = 'float32'
  if precision == 16 and tf.config.list_physical_devices('GPU'):
    name = 'mixed_float16'
  elif precision == 'bf16':
    name = 'mixed_bfloat16'
  keras.mixed_precision.set_global_policy(name)
  return name


def _space_size(act_space) -> tuple[bool, int]:
  if isinstance(act_space, ActSpace):
    return act_space.discrete, act_space.size
  return bool(act_space.discrete), int(act_space.size)


def build_parts(config, image_shape, action_size: int, discrete: bool, mixed: bool) -> dict:
  """Builds every layer and optimiser of the agent: {'wm': WorldModel, 'ac': ActorCritic,
  'expl': the exploration behaviour (expl.py; None for `expl_behavior: greedy`)}.

  The one place where the agent's variables are created: call it inside a tf.distribute
  strategy's scope to place them there (`Agent(..., scope=strategy.scope())` does).
  """
  wm = WorldModel(
      image_shape, action_size, rssm=config.rssm, encoder=config.encoder,
      decoder=config.decoder, reward_head=config.reward_head,
      discount_head=config.discount_head, pred_discount=config.pred_discount,
      grad_heads=config.grad_heads, loss_scales=config.loss_scales, kl=config.kl,
      clip_rewards=config.clip_rewards, discount=config.discount,
      model_opt=config.model_opt, mixed=mixed)
  ac = ActorCritic.from_config(config, wm.rssm.feat_size, action_size, discrete, mixed)
  explorer = expl.build(config, wm, action_size, discrete, mixed)
  return {'wm': wm, 'ac': ac, 'expl': explorer}


def _unique(variables) -> list:
  seen, out = set(), []
  for var in variables:
    if id(var) not in seen:
      seen.add(id(var))
      out.append(var)
  return out


class Agent(tf.Module):
  """World model + actor-critic, with compiled `policy`, `train` and `report`.

  Args:
    config: the full Config (configs.yaml keys).
    obs_space: {'image': ((H, W, C), uint8), ...} or an object with that mapping.
    act_space: ActSpace(discrete, size) or any object with those attributes.
    step: int64 tf.Variable counting agent steps; schedules are evaluated at it.
    scope: optional context manager (e.g. `strategy.scope()`) entered while `build_parts`
      creates the layers and optimisers.
  """

  def __init__(self, config, obs_space, act_space, step: tf.Variable, scope=None):
    super().__init__(name='agent')
    self.config = config
    self.precision = configure_precision(config.precision)
    mixed = self.precision == 'mixed_float16'
    image_shape = obs_shapes(obs_space)  # {key: shape} of the observation keys
    self.discrete, self.action_size = _space_size(act_space)
    self.step = step
    with scope or contextlib.nullcontext():
      parts = build_parts(config, image_shape, self.action_size, self.discrete, mixed)
    self.wm, self.ac, self.expl = parts['wm'], parts['ac'], parts['expl']
    self.expl_until = int(config.expl_until)
    self.eval_state_mean = bool(config.eval_state_mean)
    self.expl_noise = float(config.expl_noise)
    self.eval_noise = float(config.eval_noise)
    self.deterministic = bool(config.deterministic_check)
    for opt in self.optimizers:
      opt.diagnostics = self.deterministic
    # No AutoGraph: the steps have no tensor-dependent Python control flow (tf.cond is explicit),
    # and converting ~150 functions' source is about half of the tracing time (issue 16).
    compile_fn = ((lambda fn, **kw: tf.function(fn, autograph=False, **kw)) if config.jit
                  else (lambda fn, **kw: fn))
    self._policy = compile_fn(self._policy_step)
    self._train = compile_fn(self._train_step, jit_compile=bool(config.xla))
    # Runs eagerly: it is called once per log interval, and Grappler's layout pass fails
    # (harmlessly, but loudly) on its traced graph in TF 2.21.
    self._report = self._report_step

  @property
  def optimizers(self) -> list:
    """The optimisers (`optim.Optimizer`): model, actor, critic, then with an explorer its
    heads' (`expl`), actor and critic."""
    own = [self.wm.opt, self.ac.actor_opt, self.ac.critic_opt]
    return own + (self.expl.optimizers if self.expl is not None else [])

  def _layers(self) -> list:
    layers = [self.wm.encoder, self.wm.rssm, *self.wm.heads.values(), self.ac.actor,
              self.ac.critic, self.ac.target_critic]
    return layers + (self.expl.layers() if self.expl is not None else [])

  @property
  def trainable_variables(self) -> list:
    """Every weight an optimiser updates, once each, in optimiser order (model, actor,
    critic, then the explorer's); their sizes sum to `param_counts()` world_model + actor +
    critic (+ expl_heads + expl_actor + expl_critic)."""
    return _unique(v for opt in self.optimizers for v in opt.variables_)

  @property
  def variables(self) -> list:
    """Every variable of the agent, once each: `trainable_variables`, then the other layer
    weights (target critic), the counters and statistics (agent step, `updates`, reward
    normaliser, skipped steps) and the optimisers' own variables (iterations, Adam moments,
    loss scale)."""
    layer_weights = [w for layer in self._layers() for w in layer.weights]
    opt_vars = [v for opt in self.optimizers for v in opt.opt.variables]
    return _unique([*self.trainable_variables, *layer_weights, *super().variables, *opt_vars])

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
    if self.expl is not None:
      counts.update(expl.count_params(self.expl))
    return counts

  def exploring(self, step: int | None = None) -> bool:
    """Whether the train-mode policy acts with the explorer at agent step `step` (default: the
    step variable): there is one and `expl_until` is 0 or the step is below it (the authors'
    `Until`)."""
    if self.expl is None:
      return False
    step = int(self.step.numpy()) if step is None else int(step)
    return not self.expl_until or step < self.expl_until

  def initial_state(self, batch: int) -> dict:
    """Zero policy state for `batch` environments (float32 tensors)."""
    rssm = self.wm.rssm
    return {
        'deter': tf.zeros([batch, rssm.deter], tf.float32),
        'stoch': tf.zeros([batch, *rssm.stoch_shape], tf.float32),
        'prev_action': tf.zeros([batch, self.action_size], tf.float32),
    }

  def policy(self, obs: dict, state: dict | None = None, mode: str = 'train',
             step: int | None = None):
    """One acting step for a batch of environments (docs/reference.md §8).

    Args:
      obs: the encoder's keys (e.g. 'image' uint8 [B, H, W, C], vectors float32 [B, n]) and
        'is_first' bool [B] (other keys ignored).
      state: policy state from the previous call (None: zeros); reset where is_first.
      mode: 'train' samples the action (plus `expl_noise`), from the explorer's actor while
        `exploring()` (expl.py), else the task actor's; 'eval' takes the task actor's mode
        (plus `eval_noise`). As in the authors' release, whose training policy acts in its
        'explore' mode, the latent is the posterior's mode in both when `eval_state_mean`,
        else a sample.
      step: the agent step deciding `expl_until` (default: the step variable).
    Returns:
      ({'action': float32 [B, A]}, new state).
    Raises:
      ValueError: for another mode.
      FloatingPointError: when the latent state or the actor's output is not finite (NaN or
        inf weights, observations or state); no action is returned then.
    """
    if mode not in ('train', 'eval'):
      raise ValueError(f"policy mode is {mode!r}; allowed: 'train', 'eval'.")
    image = {k: tf.convert_to_tensor(obs[k]) for k in self.wm.encoder.keys}
    is_first = tf.convert_to_tensor(obs['is_first'], tf.bool)
    if state is None:
      state = self.initial_state(int(is_first.shape[0]))
    explore = mode == 'train' and self.exploring(step)
    outputs, new_state, finite = self._policy(image, is_first, state, mode == 'eval', explore)
    if not bool(finite):
      raise FloatingPointError(
          'Agent.policy: the latent state or the actor\'s output is not finite (NaN or inf in '
          'the weights, the observation or the policy state); refusing to act. Restore a '
          'checkpoint from before the divergence.')
    return outputs, new_state

  def _policy_step(self, image, is_first, state, eval_mode: bool, explore: bool = False):
    with dists.mode_draws(self.deterministic):
      wm = self.wm
      embed = wm.encode(wm.preprocess_obs(image))
      latent = {'deter': state['deter'], 'stoch': state['stoch']}
      post, _ = wm.rssm.obs_step(latent, state['prev_action'], embed, is_first,
                                 not self.eval_state_mean, with_prior=False)
      feat = wm.rssm.get_feat(post)
      dist = (self.expl if explore else self.ac).policy(feat)
      action = tf.cast(dist.mode() if eval_mode else dist.sample(), tf.float32)
      checked = [feat, dist.mode()]
      if self.discrete:
        checked.append(dist.logits_parameter())
      finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(tf.cast(x, tf.float32)))
                              for x in checked])
      action = self._action_noise(action, self.eval_noise if eval_mode else self.expl_noise)
    new_state = {'deter': tf.cast(post['deter'], tf.float32),
                 'stoch': tf.cast(post['stoch'], tf.float32), 'prev_action': action}
    return {'action': action}, new_state, finite

  def _action_noise(self, action, amount: float):
    """The authors' action noise: discrete, a uniform mix (amount/A + (1 − amount)·action)
    sampled; continuous, clip(Normal(action, amount) sample, −1, 1). 0 returns `action`."""
    if not amount:
      return action
    if self.discrete:
      probs = amount / self.action_size + (1.0 - amount) * action
      return tf.cast(dists.OneHotDist(probs=probs).sample(), tf.float32)
    return tf.clip_by_value(action + amount * tf.random.normal(tf.shape(action)), -1.0, 1.0)

  @property
  def batch_keys(self) -> tuple[str, ...]:
    """Replay keys an update reads: the encoder's and decoder's observation keys, then action,
    reward, is_first, is_terminal."""
    keys = dict.fromkeys(self.wm.encoder.keys + self.wm.heads['decoder'].keys)
    return tuple(keys) + ('action', 'reward', 'is_first', 'is_terminal')

  def train(self, data: dict) -> dict:
    """One update: world model, then actor and critic in imagination (docs/reference.md §8), then the
    explorer's heads, actor and critic (expl.py), as in the authors' `Agent.train`.

    Args:
      data: replay batch {image uint8 [B,T,H,W,C], action float32 [B,T,A], reward float32
        [B,T], is_first/is_last/is_terminal bool [B,T]}; `log_*` keys are ignored.
    Returns:
      dict of float32 scalar metrics (model_loss, image_loss, ..., actor_loss, critic_loss;
      the explorer's with the prefix `expl_`: expl_expl_loss, expl_actor_loss, ...);
      with `deterministic_check` also per-module and per-variable gradient norms
      (`model_grad_norm/encoder`, `model_grad_norm_var/000`, ...).
    """
    keys = self.batch_keys
    return self._train({k: data[k] for k in keys})

  def _train_step(self, data):
    with dists.mode_draws(self.deterministic):
      post, outputs, metrics = self.wm.train(data)
      start = {k: tf.stop_gradient(v) for k, v in post.items()}
      metrics.update(self.ac.train(self.wm, start, data['is_terminal'], self.step))
      if self.expl is not None:
        mets = self.expl.train(self.wm, start, outputs, data, self.step)
        metrics.update({f'expl_{k}': v for k, v in mets.items()})
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

