"""DreamerV2's world model: preprocessing, losses, imagination, open-loop video (docs/reference.md §3, §4).

Tensors are batch-major `[B, T, ...]` for replay sequences; imagined trajectories are
time-major `[H + 1, N, ...]` with N = B·T start states flattened b-major (index b·T + t).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import tensorflow as tf

from dreamerv2_tf import dists, nets
from dreamerv2_tf.optim import Optimizer


def preprocess_image(image: tf.Tensor, dtype=tf.float32) -> tf.Tensor:
  """uint8 [..., H, W, C] → float in [−0.5, 0.5]: x / 255 − 0.5 (0 → −0.5, 255 → +0.5).

  The one image transform used in training, acting and the exported policy.
  """
  return tf.cast(tf.cast(image, tf.float32) / 255.0 - 0.5, dtype)


# Transition keys that are not observations (docs/reference.md §1); never encoded or reconstructed.
NOT_OBSERVATIONS = ('reward', 'is_first', 'is_last', 'is_terminal', 'action', 'discount')
NET_ARGS = ('cnn_keys', 'mlp_keys', 'act', 'norm', 'cnn_depth', 'cnn_kernels', 'mlp_layers')


def obs_shapes(image_shape: Sequence[int] | Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """{key: shape}: an (H, W, C) tuple is {'image': (H, W, C)}; a mapping {key: shape} or {key:
  (shape, dtype)} (an env's obs_space) gives each key's shape."""
  if not isinstance(image_shape, Mapping):
    return {'image': tuple(int(s) for s in image_shape)}
  out = {}
  for key, value in image_shape.items():
    if key in NOT_OBSERVATIONS or key.startswith('log_'):
      continue
    if (isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], (tuple, list))):
      value = value[0]  # (shape, dtype)
    out[key] = tuple(int(s) for s in value)
  return out


def _net_args(cfg) -> dict:
  """The encoder/decoder keyword arguments present in a sub-config (configs.yaml)."""
  return {k: (list(cfg[k]) if isinstance(cfg[k], (list, tuple)) else cfg[k])
          for k in NET_ARGS if k in cfg}


class SquaredError:
  """The authors' 'mse' output of vector keys: log_prob(x) = −Σ_last (x − mean)² (float32)."""

  def __init__(self, mean: tf.Tensor):
    self._mean = tf.cast(mean, tf.float32)

  def log_prob(self, value: tf.Tensor) -> tf.Tensor:
    return -tf.reduce_sum(tf.square(tf.cast(value, tf.float32) - self._mean), -1)

  def mean(self) -> tf.Tensor:
    return self._mean

  def mode(self) -> tf.Tensor:
    return self._mean


def discount_weights(discount: tf.Tensor) -> tf.Tensor:
  """Weights w_t = Π_{k<t} discount_k along axis 0 (w_0 = 1) for discount [T, N] (docs/reference.md §4).

  Each column is independent: discounts [0.9, 0.5, 1.0] in every row give
  w_2 = [0.81, 0.25, 1.0].
  """
  return tf.math.cumprod(tf.concat([tf.ones_like(discount[:1]), discount[:-1]], 0), 0)


class WorldModel(tf.Module):
  """Encoder, RSSM, decoder, reward and discount heads, and the model optimiser.

  Args:
    image_shape: (H, W, C) of an image-only task, or {key: shape} of every observation key
      (rank-3 keys are images, rank-1 keys vectors; others are ignored). encoder/decoder
      `cnn_keys`/`mlp_keys` choose the keys (nets.MultiEncoder, nets.MultiDecoder).
    action_size: A (one-hot size or action dims).
    rssm, encoder, decoder, reward_head, discount_head: sub-configs (configs.yaml).
    pred_discount: build and train the discount head.
    grad_heads: heads whose loss trains the representation (others see stop_gradient(feat)).
    loss_scales: {'kl', 'image', 'reward', 'discount'} weights.
    kl: {'free', 'forward', 'balance', 'free_avg'}.
    clip_rewards: 'tanh' or 'identity' transform of the reward target.
    discount: γ of the discount target γ·(1 − is_terminal).
    model_opt: {'lr', 'eps', 'clip', 'wd'}; mixed: float16 training with loss scaling.
  """

  def __init__(self, image_shape: Sequence[int] | Mapping[str, Sequence[int]], action_size: int,
               *, rssm, encoder, decoder,
               reward_head, discount_head, pred_discount: bool, grad_heads: Sequence[str],
               loss_scales, kl, clip_rewards: str, discount: float, model_opt,
               mixed: bool = False, name: str = 'world_model'):
    super().__init__(name=name)
    if clip_rewards not in ('tanh', 'identity'):
      raise ValueError(f"clip_rewards is {clip_rewards!r}; allowed: 'tanh', 'identity'.")
    self.shapes = obs_shapes(image_shape)
    self.encoder = nets.MultiEncoder(self.shapes, name='encoder', **_net_args(encoder))
    self.image_shape = self.encoder.image_shape  # (H, W, ΣC) of the CNN input, or None
    self.rssm = nets.RSSM(action_size, self.encoder.embed_size, rssm['deter'], rssm['hidden'],
                          rssm['stoch'], rssm['discrete'], rssm['act'],
                          norm=rssm.get('norm', 'none'), std_act=rssm.get('std_act', 'sigmoid2'),
                          min_std=rssm.get('min_std', 0.1), name='rssm')
    feat = self.rssm.feat_size
    self.heads = {
        'decoder': nets.MultiDecoder(feat, self.shapes, name='decoder', **_net_args(decoder)),
        'reward': nets.MLP(feat, 1, reward_head['layers'], reward_head['units'],
                           reward_head['act'], norm=reward_head.get('norm', 'none'),
                           name='reward'),
    }
    if pred_discount:
      self.heads['discount'] = nets.MLP(feat, 1, discount_head['layers'], discount_head['units'],
                                        discount_head['act'],
                                        norm=discount_head.get('norm', 'none'), name='discount')
    unknown = set(grad_heads) - set(self.heads)
    if unknown:
      raise ValueError(f'grad_heads names {sorted(unknown)}; heads are {sorted(self.heads)}.')
    self.grad_heads = tuple(grad_heads)
    self.loss_scales = dict(loss_scales)
    self.kl = dict(kl)
    self.clip_rewards = clip_rewards
    self.discount = float(discount)
    self.modules_ = [self.encoder, self.rssm, *self.heads.values()]
    groups = {'encoder': self.encoder.trainable_variables,
              'rssm': self.rssm.trainable_variables,
              **{k: v.trainable_variables for k, v in self.heads.items()}}
    self.opt = Optimizer('model', self.trainable_vars, mixed=mixed, groups=groups,
                         **dict(model_opt))

  @property
  def trainable_vars(self) -> list[tf.Variable]:
    return [v for m in self.modules_ for v in m.trainable_variables]

  def preprocess(self, data: dict) -> dict:
    """Model inputs from a replay batch (docs/reference.md §3).

    images (rank-3 uint8 keys) → float [−0.5, 0.5]; reward → tanh/identity (float32); adds
    `discount` = γ·(1 − is_terminal) (float32). Other keys pass through; `log_*` dropped.
    """
    out = {k: v for k, v in data.items() if not k.startswith('log_')}
    out = self.preprocess_obs(out)
    reward = tf.cast(data['reward'], tf.float32)
    out['reward'] = tf.tanh(reward) if self.clip_rewards == 'tanh' else reward
    out['discount'] = self.discount * (1.0 - tf.cast(data['is_terminal'], tf.float32))
    return out

  def head_dist(self, name: str, feat: tf.Tensor):
    """The distribution of head `name` on feat [..., F] (float32 parameters)."""
    if name == 'decoder':
      (key, dist), = self.decoder_dists(feat).items()  # one key only; else use decoder_dists
      return dist
    out = self.heads[name](feat)
    if name == 'reward':
      return dists.scalar_normal(out[..., 0])
    if name == 'discount':
      return dists.bernoulli(out[..., 0])
    raise KeyError(name)

  def decoder_dists(self, feat: tf.Tensor) -> dict:
    """{key: distribution} of the decoder on feat [..., F]: images a unit-variance Normal over
    (H, W, C), vectors the authors' 'mse' (log_prob = −Σ (x − mean)², float32)."""
    out = {}
    for key, mean in self.heads['decoder'](feat).items():
      out[key] = dists.image_dist(mean) if len(self.shapes[key]) == 3 else SquaredError(mean)
    return out

  def preprocess_obs(self, obs: dict) -> dict:
    """The observation keys of `obs` as the encoder takes them: rank-3 uint8 images → float in
    [−0.5, 0.5] (compute dtype), other keys unchanged."""
    out = dict(obs)
    for key, shape in self.shapes.items():
      if key in obs and len(shape) == 3 and tf.as_dtype(obs[key].dtype) == tf.uint8:
        out[key] = preprocess_image(obs[key], self.encoder.compute_dtype)
    return out

  def encode(self, data: dict) -> tf.Tensor:
    """embed [..., E] of a preprocessed batch (the encoder's keys of `data`)."""
    return self.encoder({k: data[k] for k in self.encoder.keys})

  def loss(self, data: dict, state=None, sample: bool = True):
    """World-model loss on a preprocessed batch `data` of [B, T, ...] (docs/reference.md §3).

    Returns:
      (model_loss scalar, post state dict [B, T, ...], outputs dict with `embed`, `feat`,
      `post`, `prior`, `likes` {key: [B, T]}, `kl` [B, T], metrics dict).
    """
    embed = self.encode(data)
    post, prior = self.rssm.observe(embed, data['action'], data['is_first'], state, sample)
    kl_loss, kl_value = self.rssm.kl_loss(post, prior, **self.kl)
    losses = {'kl': kl_loss}
    likes = {}
    feat = self.rssm.get_feat(post)
    for name in self.heads:
      inp = feat if name in self.grad_heads else tf.stop_gradient(feat)
      head = (self.decoder_dists(inp) if name == 'decoder' else
              {name: self.head_dist(name, inp)})
      for key, dist in head.items():
        # Targets in float32: the image is in the compute dtype (float16 under mixed
        # precision) for the encoder, but every distribution is float32 (docs/reference.md §5).
        target = tf.cast(data[key], tf.float32)
        like = tf.cast(dist.log_prob(target), tf.float32)
        likes[key] = like
        losses[key] = -tf.reduce_mean(like)
    model_loss = sum(self.loss_scales.get(k, 1.0) * v for k, v in losses.items())
    metrics = {f'{k}_loss': v for k, v in losses.items()}
    metrics['model_kl'] = tf.reduce_mean(kl_value)
    metrics['prior_ent'] = tf.reduce_mean(self.rssm.get_dist(prior).entropy())
    metrics['post_ent'] = tf.reduce_mean(self.rssm.get_dist(post).entropy())
    outputs = {'embed': embed, 'feat': feat, 'post': post, 'prior': prior, 'likes': likes,
               'kl': kl_value}
    return model_loss, post, outputs, metrics

  def train(self, data: dict, state=None):
    """One model update on a raw replay batch [B, T, ...]; returns (post, outputs, metrics)."""
    data = self.preprocess(data)
    with tf.GradientTape() as tape:
      model_loss, post, outputs, metrics = self.loss(data, state)
      scaled = self.opt.scale(model_loss)
    metrics.update(self.opt.minimize(tape, scaled))
    metrics['model_loss'] = model_loss
    return post, outputs, metrics

  def imagine(self, policy: Callable, start: dict, is_terminal: tf.Tensor | None,
              horizon: int, sample: bool = True, action_sample: bool = True) -> dict:
    """Rolls the prior forward from every start state with actions of `policy` (docs/reference.md §4).

    Args:
      policy: feat [N, F] → action distribution (fed stop_gradient(feat)).
      start: state dict of [B, T, ...] (gradients should already be stopped).
      is_terminal: bool [B, T] of the start states (their true discount) or None.
      horizon: H imagined steps; the result has H + 1 states (row 0 = start, zero action).
      sample / action_sample: sample latents / actions (False: modes; used by tests and the
        parity check).
    Returns:
      time-major dict of [H + 1, N, ...]: the RSSM state's keys (deter, stoch, and logit or
      mean and std), feat, action (action[t] led to state t), discount (row 0 =
      γ·(1 − is_terminal)), weight = Π_{k<t} discount_k.
    """
    flat = lambda x: tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))
    state = {k: flat(v) for k, v in start.items()}
    feat = self.rssm.get_feat(state)
    first_action = policy(tf.stop_gradient(feat)).mode()
    seq = {k: [v] for k, v in state.items()}
    seq['feat'] = [feat]
    seq['action'] = [tf.zeros_like(first_action)]
    for _ in range(horizon):
      dist = policy(tf.stop_gradient(seq['feat'][-1]))
      action = dist.sample() if action_sample else dist.mode()
      state = self.rssm.img_step(state, action, sample)
      for key, value in state.items():
        seq[key].append(value)
      seq['feat'].append(self.rssm.get_feat(state))
      seq['action'].append(action)
    seq = {k: tf.stack(v, 0) for k, v in seq.items()}
    if 'discount' in self.heads:
      disc = self.head_dist('discount', seq['feat']).mean()
      if is_terminal is not None:
        true_first = self.discount * (1.0 - tf.cast(flat(is_terminal), disc.dtype))
        disc = tf.concat([true_first[None], disc[1:]], 0)
    else:
      disc = self.discount * tf.ones(tf.shape(seq['feat'])[:-1], tf.float32)
    seq['discount'] = disc
    seq['weight'] = discount_weights(disc)
    return seq

  def video_pred(self, data: dict, context: int = 5, num: int = 6) -> tf.Tensor:
    """Open-loop prediction video: ground truth | model | error, stacked vertically.

    Observes `context` frames of the first `num` sequences, then imagines the rest with the
    true actions. Returns uint8 [T, 3·H, num·W, C]. Needs `image` among the decoder's keys.
    """
    data = self.preprocess({k: v[:num] for k, v in data.items()})
    embed = self.encode(data)
    post, _ = self.rssm.observe(embed[:, :context], data['action'][:, :context],
                                data['is_first'][:, :context])
    recon = self.heads['decoder'](self.rssm.get_feat(post))['image']
    init = {k: v[:, -1] for k, v in post.items()}
    prior = self.rssm.imagine(data['action'][:, context:], init)
    openl = self.heads['decoder'](self.rssm.get_feat(prior))['image']
    truth = tf.cast(data['image'], tf.float32) + 0.5
    model = tf.cast(tf.concat([recon, openl], 1), tf.float32) + 0.5
    error = (model - truth + 1.0) / 2.0
    video = tf.concat([truth, model, error], 2)  # [N, T, 3H, W, C]
    n, t, h, w, c = [video.shape[i] or tf.shape(video)[i] for i in range(5)]
    video = tf.transpose(video, [1, 2, 0, 3, 4])  # [T, 3H, N, W, C]
    video = tf.reshape(video, [t, h, n * w, c])
    return tf.cast(tf.clip_by_value(video, 0.0, 1.0) * 255.0, tf.uint8)
