"""Keras layers of DreamerV2: encoder, decoder, MLP heads, GRU cell and RSSM (docs/reference.md §3, §8).

Conventions:
- Batch-major inputs `[B, T, ...]` for sequences; `RSSM.observe`/`imagine` return batch-major
  dicts. Single steps are `[B, ...]`. Any number of leading dims is accepted where noted.
- Every layer is built in `__init__` from known sizes, so its variables exist before the first
  call (checkpoints restore into them directly) and the variable set never depends on call
  order. Layers compute in the global Keras dtype policy (float32, or float16 under
  `mixed_float16`); the GRU layer norm, the latent logits and every distribution are float32.
- Initialisation is Keras' default (Glorot uniform kernels, zero biases), every Dense and conv
  has a bias, as in the authors' release.

A latent state is a dict of tensors: `deter` [B, deter] (GRU state h) and `stoch` (samples z)
with the distribution's stats, float32: for categorical latents `stoch` [B, stoch, classes]
(one-hot, straight-through) and `logit` [B, stoch, classes]; for Gaussian latents
(`rssm.discrete: 0`) `stoch` [B, stoch] (reparameterised) and `mean`, `std` [B, stoch].
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import keras
import tensorflow as tf

from dreamerv2_tf import distribute, dists

State = dict  # {'deter', 'stoch', and 'logit' or 'mean' and 'std'}: see the module docstring


def _activation(name: str):
  if name in ('none', None, ''):
    return None
  fn = keras.activations.get(name)
  return fn


def _dense(units: int, in_dim: int, act: str | None = None, name: str | None = None):
  layer = keras.layers.Dense(units, activation=_activation(act), name=name)
  layer.build((None, in_dim))
  return layer


def _norm_layer(norm: str, shape, name: str):
  """The authors' NormLayer: None for 'none', else a LayerNormalization over the last axis
  (Keras defaults: ε 1e-3, gain and bias) built for `shape` (without the batch dim).

  Raises:
    ValueError: for a norm other than 'none' or 'layer'.
  """
  if norm in ('none', None, ''):
    return None
  if norm != 'layer':
    raise ValueError(f"norm is {norm!r}; allowed: 'none', 'layer'.")
  layer = keras.layers.LayerNormalization(epsilon=1e-3, name=name)
  layer.build((None, *shape))
  return layer


def _normed(layer, norm_layer, act, x):
  """layer(x), then (with a norm) norm → act; without one, the layer applies `act` itself."""
  x = layer(x)
  if norm_layer is not None:
    x = norm_layer(x)
    if act is not None:
      x = act(x)
  return x


class Encoder(keras.layers.Layer):
  """Conv encoder: 4 convs, kernel 4, stride 2, 'valid', depths depth·(1, 2, 4, 8), ELU.

  Input: preprocessed image float [..., 64, 64, C] in [−0.5, 0.5]. Output: embed [..., E] with
  E = 2·2·8·depth (1536 for depth 48), flattened in (H, W, C) order. docs/reference.md §3.
  """

  def __init__(self, image_shape: Sequence[int], depth: int = 48,
               kernels: Sequence[int] = (4, 4, 4, 4), act: str = 'elu', norm: str = 'none',
               **kwargs):
    super().__init__(**kwargs)
    self.image_shape = tuple(image_shape)
    self.convs, self.norms = [], []
    self.act = _activation(act)
    h, w, c = self.image_shape
    for i, kernel in enumerate(kernels):
      filters = depth * 2 ** i
      h2, w2 = (h - kernel) // 2 + 1, (w - kernel) // 2 + 1
      norm_layer = _norm_layer(norm, (h2, w2, filters), f'convnorm{i}')
      conv = keras.layers.Conv2D(filters, kernel, strides=2, padding='valid',
                                 activation=None if norm_layer else self.act, name=f'conv{i}')
      conv.build((None, h, w, c))
      h, w, c = h2, w2, filters
      self.convs.append(conv)
      self.norms.append(norm_layer)
      setattr(self, f'conv{i}', conv)  # tracked by tf.train.Checkpoint (see MLP)
      if norm_layer is not None:
        setattr(self, f'convnorm{i}', norm_layer)
    self.embed_size = h * w * c

  def call(self, image):
    batch_dims = tf.shape(image)[:-3]
    x = tf.reshape(image, tf.concat([[-1], self.image_shape], 0))
    x = tf.cast(x, self.compute_dtype)
    for conv, norm_layer in zip(self.convs, self.norms):
      x = _normed(conv, norm_layer, self.act, x)
    # The conv output's own size (MultiEncoder's embed_size adds its vector part).
    return tf.reshape(x, tf.concat([batch_dims, [math.prod(x.shape[1:])]], 0))


class Decoder(keras.layers.Layer):
  """Transposed-conv decoder: Dense(32·depth) → 1×1 → 1→5→13→30→64 (kernels 5, 5, 6, 6).

  Input: feat [..., F]. Output: image mean [..., 64, 64, C] (compute dtype); the image
  distribution is `dists.image_dist(mean)`. Depths depth·(4, 2, 1) then C, ELU except last.
  docs/reference.md §3.
  """

  def __init__(self, feat_size: int, image_shape: Sequence[int], depth: int = 48,
               kernels: Sequence[int] = (5, 5, 6, 6), act: str = 'elu', norm: str = 'none',
               **kwargs):
    super().__init__(**kwargs)
    self.image_shape = tuple(image_shape)
    self.convin = _dense(32 * depth, feat_size, name='convin')
    self.convs, self.norms = [], []
    self.act = _activation(act)
    size, channels = 1, 32 * depth
    for i, kernel in enumerate(kernels):
      last = i == len(kernels) - 1
      filters = self.image_shape[-1] if last else depth * 2 ** (len(kernels) - i - 2)
      out_size = (size - 1) * 2 + kernel
      # As the authors': no norm (and no activation) after the last layer.
      norm_layer = None if last else _norm_layer(norm, (out_size, out_size, filters),
                                                 f'convnorm{i}')
      conv = keras.layers.Conv2DTranspose(
          filters, kernel, strides=2, padding='valid',
          activation=None if last or norm_layer else self.act, name=f'conv{i}')
      conv.build((None, size, size, channels))
      size, channels = out_size, filters
      self.convs.append(conv)
      self.norms.append(norm_layer)
      setattr(self, f'conv{i}', conv)  # tracked by tf.train.Checkpoint (see MLP)
      if norm_layer is not None:
        setattr(self, f'convnorm{i}', norm_layer)
    if (size, size, channels) != self.image_shape:
      raise ValueError(f'Decoder kernels {tuple(kernels)} give {size}x{size}x{channels} images, '
                       f'not {self.image_shape}.')

  def call(self, feat):
    batch_dims = tf.shape(feat)[:-1]
    x = self.convin(tf.cast(feat, self.compute_dtype))
    # The first transposed conv sees a 1×1 input, so it is exactly a matrix product with its
    # kernel [k, k, out, in]: out[n, i, j, o] = Σ_c x[n, c]·K[i, j, o, c] + b[o]. TF's CPU
    # conv2d_transpose kernel is ~40× slower on this shape, so compute it directly (same
    # variables, same result).
    first = self.convs[0]
    x = tf.reshape(x, [-1, x.shape[-1]])  # [N, 32·depth] for any number of batch dims
    x = tf.einsum('nc,ijoc->nijo', x, tf.cast(first.kernel, x.dtype))
    x = x + tf.cast(first.bias, x.dtype)
    x = _normed(first.activation, self.norms[0], self.act, x)
    for conv, norm_layer in zip(self.convs[1:], self.norms[1:]):
      x = _normed(conv, norm_layer, self.act, x)
    return tf.reshape(x, tf.concat([batch_dims, self.image_shape], 0))


class MLP(keras.layers.Layer):
  """`layers` Dense(units, act) then an output Dense(out_size) (docs/reference.md §3, §8).

  Input [..., in_size]; returns the output [..., out_size] (compute dtype). With
  `std_out`, a second Dense(out_size) on the same last hidden layer is built and `call`
  returns (out, std_out) — the continuous actor's mean and std. `norm: 'layer'` puts a
  LayerNormalization `norm{i}` between each hidden Dense and its activation (the authors').
  """

  def __init__(self, in_size: int, out_size: int, layers: int = 4, units: int = 400,
               act: str = 'elu', std_out: bool = False, norm: str = 'none', **kwargs):
    super().__init__(**kwargs)
    self.hidden, self.norms = [], []
    self.act = _activation(act)
    size = in_size
    for i in range(layers):
      norm_layer = _norm_layer(norm, (units,), f'norm{i}')
      self.norms.append(norm_layer)
      if norm_layer is not None:
        setattr(self, f'norm{i}', norm_layer)
      self.hidden.append(_dense(units, size, None if norm_layer else act, name=f'dense{i}'))
      # Keras 3 keeps list attributes in a TrackedList that tf.train.Checkpoint does not see;
      # the attribute makes the checkpoint save this layer (e.g. the target critic, which no
      # optimiser lists).
      setattr(self, f'dense{i}', self.hidden[-1])
      size = units
    self.out = _dense(out_size, size, name='out')
    self.std = _dense(out_size, size, name='std') if std_out else None

  def call(self, x):
    x = tf.cast(x, self.compute_dtype)
    for layer, norm_layer in zip(self.hidden, self.norms):
      x = _normed(layer, norm_layer, self.act, x)
    if self.std is not None:
      return self.out(x), self.std(x)
    return self.out(x)


class GRUCell(keras.layers.Layer):
  """DreamerV2's GRU cell with layer norm (docs/reference.md §3).

  parts = LayerNorm_float32(Dense(3·size)(concat(x, h))); split into reset r, candidate c,
  update u; r = σ(r); c = tanh(r·c); u = σ(u − 1); h' = u·c + (1 − u)·h.
  Inputs x [B, in_size], h [B, size]; returns h' [B, size] in the compute dtype.
  """

  def __init__(self, in_size: int, size: int, update_bias: float = -1.0, **kwargs):
    super().__init__(**kwargs)
    self.size = size
    self.update_bias = update_bias
    self.dense = _dense(3 * size, in_size + size, name='dense')
    self.norm = keras.layers.LayerNormalization(epsilon=1e-3, dtype='float32', name='norm')
    self.norm.build((None, 3 * size))

  def call(self, x, h):
    parts = self.dense(tf.concat([x, h], -1))
    parts = tf.cast(self.norm(tf.cast(parts, tf.float32)), self.compute_dtype)
    reset, cand, update = tf.split(parts, 3, -1)
    reset = tf.nn.sigmoid(reset)
    cand = tf.tanh(reset * cand)
    update = tf.nn.sigmoid(update + self.update_bias)
    return update * cand + (1 - update) * h


class RSSM(keras.layers.Layer):
  """Recurrent state-space model with categorical or Gaussian latents (docs/reference.md §3).

  img_step (prior): x = act(norm(img_in(concat(flatten(z), a)))); h = GRU(x, h);
    stats = img_dist(act(norm(img_out(h)))).
  obs_step (posterior): zero previous state and action where `is_first`; run img_step;
    stats = obs_dist(act(norm(obs_out(concat(h, embed))))).
  `norm` is the authors' NormLayer (none, or a LayerNorm before the activation). The latent:
  - categorical (`discrete` = K ≥ 1 classes): stats {'logit' [.., S, K]}, one-hot samples with
    straight-through gradients, `sample=False` takes the one-hot mode;
  - Gaussian (`discrete` = 0 or False): img_dist/obs_dist give 2·S units split into mean and
    raw std, std = std_act(raw) + min_std (dists.latent_std); stats {'mean', 'std'} [.., S],
    reparameterised samples, `sample=False` takes the mean.

  Args:
    action_size: A. embed_size: E (encoder output). deter, hidden: sizes of h and of the
    hidden Dense layers. stoch: S latents; discrete: K classes each, 0 for Gaussian latents.
    act: activation. norm: 'none' or 'layer'. std_act, min_std: Gaussian std (unused else).
  Raises:
    ValueError: for an unknown norm or std_act.
  """

  def __init__(self, action_size: int, embed_size: int, deter: int = 600, hidden: int = 600,
               stoch: int = 32, discrete: int = 32, act: str = 'elu', norm: str = 'none',
               std_act: str = 'sigmoid2', min_std: float = 0.1, **kwargs):
    super().__init__(**kwargs)
    self.deter, self.stoch, self.classes = deter, stoch, int(discrete)
    self.action_size, self.embed_size = action_size, embed_size
    self.std_act, self.min_std = std_act, float(min_std)
    if std_act not in dists.STD_ACTS:
      raise ValueError(f'std_act is {std_act!r}; allowed: {", ".join(dists.STD_ACTS)}.')
    self.act = _activation(act)
    flat, stats = self.flat_stoch, (self.flat_stoch if self.classes else 2 * stoch)
    # Without a norm the hidden Dense layers apply `act` themselves (see `_normed`).
    dense_act = act if norm in ('none', None, '') else None
    self.img_in = _dense(hidden, flat + action_size, dense_act, name='img_in')
    self.img_in_norm = _norm_layer(norm, (hidden,), 'img_in_norm')
    self.cell = GRUCell(hidden, deter, name='cell')
    self.img_out = _dense(hidden, deter, dense_act, name='img_out')
    self.img_out_norm = _norm_layer(norm, (hidden,), 'img_out_norm')
    self.img_dist = _dense(stats, hidden, name='img_dist')
    self.obs_out = _dense(hidden, deter + embed_size, dense_act, name='obs_out')
    self.obs_out_norm = _norm_layer(norm, (hidden,), 'obs_out_norm')
    self.obs_dist = _dense(stats, hidden, name='obs_dist')

  @property
  def stoch_shape(self) -> tuple[int, ...]:
    """Shape of one `stoch` sample: (S, K) categorical, (S,) Gaussian."""
    return (self.stoch, self.classes) if self.classes else (self.stoch,)

  @property
  def stats_keys(self) -> tuple[str, ...]:
    """The distribution's state keys: ('logit',) categorical, ('mean', 'std') Gaussian."""
    return ('logit',) if self.classes else ('mean', 'std')

  @property
  def flat_stoch(self) -> int:
    """Size of the flattened `stoch`: S·K categorical, S Gaussian."""
    return self.stoch * (self.classes or 1)

  @property
  def feat_size(self) -> int:
    """Size of `get_feat`: flat_stoch + deter (1624 for Atari)."""
    return self.flat_stoch + self.deter

  def initial(self, batch: int) -> State:
    """Zero state for `batch` sequences: deter [B, D], stoch [B, *stoch_shape] (compute dtype)
    and the stats (`logit` [B, S, K], or `mean`, `std` [B, S]; float32)."""
    state = {'deter': tf.zeros([batch, self.deter], self.compute_dtype),
             'stoch': tf.zeros([batch, *self.stoch_shape], self.compute_dtype)}
    for key in self.stats_keys:
      state[key] = tf.zeros([batch, *self.stoch_shape], tf.float32)
    return state

  def _flatten_stoch(self, stoch):
    stoch = tf.cast(stoch, self.compute_dtype)
    if not self.classes:
      return stoch
    return tf.reshape(stoch, tf.concat([tf.shape(stoch)[:-2], [self.flat_stoch]], 0))

  def get_feat(self, state: State) -> tf.Tensor:
    """concat(flatten(stoch), deter): [..., flat_stoch + D] in the compute dtype."""
    return tf.concat([self._flatten_stoch(state['stoch']),
                      tf.cast(state['deter'], self.compute_dtype)], -1)

  def get_dist(self, state: State):
    """The latent distribution of `state`'s stats (float32): independent one-hot categoricals
    (event [S, K]) or a diagonal Normal (event [S])."""
    if self.classes:
      return dists.categorical_latent(state['logit'])
    return dists.gaussian_latent(state['mean'], state['std'])

  def _stats(self, layer_out, layer_norm, layer_dist, x) -> State:
    out = tf.cast(layer_dist(_normed(layer_out, layer_norm, self.act, x)), tf.float32)
    if self.classes:
      shape = tf.concat([tf.shape(out)[:-1], [self.stoch, self.classes]], 0)
      return {'logit': tf.reshape(out, shape)}
    mean, std = tf.split(out, 2, -1)
    return {'mean': mean, 'std': dists.latent_std(std, self.std_act, self.min_std)}

  def _latent(self, stats, sample):
    dist = self.get_dist(stats)
    stoch = dist.sample() if sample else dist.mode()
    return tf.cast(stoch, self.compute_dtype)

  def _prior(self, deter, sample) -> State:
    stats = self._stats(self.img_out, self.img_out_norm, self.img_dist, deter)
    return {'deter': deter, 'stoch': self._latent(stats, sample), **stats}

  def _recurrent(self, prev_state: State, prev_action: tf.Tensor) -> tf.Tensor:
    stoch = tf.reshape(self._flatten_stoch(prev_state['stoch']), [-1, self.flat_stoch])
    x = tf.concat([stoch, tf.cast(prev_action, self.compute_dtype)], -1)
    x = _normed(self.img_in, self.img_in_norm, self.act, x)
    return self.cell(x, tf.cast(prev_state['deter'], self.compute_dtype))

  def img_step(self, prev_state: State, prev_action: tf.Tensor, sample: bool = True) -> State:
    """One prior step: state [B, ...] and action [B, A] → prior state [B, ...]."""
    return self._prior(self._recurrent(prev_state, prev_action), sample)

  def _reset(self, prev_state: State, prev_action: tf.Tensor, is_first: tf.Tensor):
    keep = 1.0 - tf.cast(is_first, self.compute_dtype)
    prev_state = {
        k: v * tf.reshape(tf.cast(keep, v.dtype), [-1] + [1] * (len(v.shape) - 1))
        for k, v in prev_state.items()}
    prev_action = tf.cast(prev_action, self.compute_dtype) * keep[:, None]
    return prev_state, prev_action

  def obs_step(self, prev_state: State, prev_action: tf.Tensor, embed: tf.Tensor,
               is_first: tf.Tensor, sample: bool = True, with_prior: bool = True):
    """One posterior step.

    Args:
      prev_state: state [B, ...] (only `deter` and `stoch` are read); prev_action: [B, A] (the
        action that led to this observation); embed: [B, E]; is_first: bool [B] (zeroes state
        and action first).
      with_prior: also compute the prior's stats and stoch (False when acting).
    Returns:
      (post, prior) states [B, ...]; prior is None without `with_prior`.
    """
    prev_state, prev_action = self._reset(prev_state, prev_action, is_first)
    deter = self._recurrent(prev_state, prev_action)
    prior = self._prior(deter, sample) if with_prior else None
    x = tf.concat([deter, tf.cast(embed, self.compute_dtype)], -1)
    stats = self._stats(self.obs_out, self.obs_out_norm, self.obs_dist, x)
    post = {'deter': deter, 'stoch': self._latent(stats, sample), **stats}
    return post, prior

  def observe(self, embed: tf.Tensor, action: tf.Tensor, is_first: tf.Tensor,
              state: State | None = None, sample: bool = True):
    """Posterior and prior over a sequence.

    Args:
      embed [B, T, E], action [B, T, A] (action[:, t] led to observation t), is_first
      bool [B, T]; state: initial state [B, ...] (zeros if None). T must be static.
    Returns:
      (post, prior): dicts of [B, T, ...]. The loop is unrolled over T; the prior's stats,
      which the recurrence does not need, are computed for all steps at once afterwards.
    """
    length = embed.shape[1]
    if state is None:
      state = self.initial(tf.shape(embed)[0])
    posts = []
    for t in range(length):
      state, _ = self.obs_step(state, action[:, t], embed[:, t], is_first[:, t], sample,
                               with_prior=False)
      posts.append(state)
    post = {k: tf.stack([p[k] for p in posts], 1) for k in posts[0]}
    # The prior's stoch is not used by any loss; its mode keeps the graph free of unused
    # random ops (Grappler warns about pruned sampling nodes otherwise).
    return post, self._prior(post['deter'], False)

  def imagine(self, action: tf.Tensor, state: State | None = None, sample: bool = True):
    """Prior states for given actions: action [B, T, A] → dict of [B, T, ...].

    Step t applies action[:, t] to the state of step t − 1 (the initial `state` for t = 0).
    """
    if state is None:
      state = self.initial(tf.shape(action)[0])
    priors = []
    for t in range(action.shape[1]):
      state = self.img_step(state, action[:, t], sample)
      priors.append(state)
    return {k: tf.stack([p[k] for p in priors], 1) for k in priors[0]}

  def kl_loss(self, post: State, prior: State, forward: bool = False, balance: float = 0.8,
              free: float = 0.0, free_avg: bool = True):
    """KL balancing with free nats (docs/reference.md §3).

    loss = mix·max(mean KL(post‖sg(prior)), free) + (1 − mix)·max(mean KL(sg(post)‖prior), free)
    with mix = 1 − balance (`forward=False`); the KL sums over the S latents. With
    `free_avg=False` the free-nats max is taken per step, before the mean.

    `balance: 0.5` (the paper's "no KL balancing" ablation) takes the authors' separate branch:
    loss = mean(max(KL(post‖prior), free)) without stop-gradients and with the free nats per
    step whatever `free_avg` says; its gradient is twice that of the balanced formula at 0.5.

    Returns:
      (loss scalar float32, value [B, T] = KL(post ‖ prior) per step).
    """
    sg = lambda state: {k: tf.stop_gradient(v) for k, v in state.items()}
    lhs, rhs = (prior, post) if forward else (post, prior)
    mix = balance if forward else 1.0 - balance
    kld = lambda a, b: self.get_dist(a).kl_divergence(self.get_dist(b))
    if balance == 0.5:
      value = kld(lhs, rhs)
      return tf.reduce_mean(tf.maximum(value, free)), value
    value_lhs = value = kld(lhs, sg(rhs))
    value_rhs = kld(sg(lhs), rhs)
    if free_avg:
      loss_lhs = distribute.max_of_mean(tf.reduce_mean(value_lhs), free)  # global mean under
      loss_rhs = distribute.max_of_mean(tf.reduce_mean(value_rhs), free)  # tf.distribute
    else:
      loss_lhs = tf.reduce_mean(tf.maximum(value_lhs, free))
      loss_rhs = tf.reduce_mean(tf.maximum(value_rhs, free))
    return mix * loss_lhs + (1.0 - mix) * loss_rhs, value


def count_params(layer) -> int:
  """Number of trainable scalars of a Keras layer or tf.Module."""
  return int(sum(math.prod(v.shape) for v in layer.trainable_variables))


def select_keys(shapes: dict, pattern: str, rank: int) -> list[str]:
  """Keys of `shapes` ({key: shape}) that `re.match` `pattern` and have `rank` dims, in order.

  The authors' rule for `cnn_keys` (rank 3) and `mlp_keys` (rank 1); scalars are never encoded.
  """
  return [k for k, s in shapes.items() if re.match(pattern, k) and len(tuple(s)) == rank]


def _image_stack_shape(shapes: dict, keys: list[str]) -> tuple[int, int, int]:
  """(H, W, ΣC) of the image keys stacked along channels; raises ValueError if H, W differ."""
  sizes = {tuple(shapes[k][:2]) for k in keys}
  if len(sizes) != 1:
    raise ValueError(f'Image keys {keys} have different sizes {sorted(sizes)}; the CNN stacks '
                     'them along channels, so they must share height and width.')
  (height, width), = sizes
  return height, width, sum(int(shapes[k][2]) for k in keys)


class _DenseStack(keras.layers.Layer):
  """Hidden layers of the vector encoder/decoder: Dense(w) → [LayerNorm] → act for each width,
  built as attributes `dense{i}` (and `densenorm{i}` with norm 'layer'), the authors' names."""

  def __init__(self, in_size: int, widths, act: str, norm: str, **kwargs):
    super().__init__(**kwargs)
    self.act = _activation(act) or (lambda x: x)
    self.layers_ = []
    for i, width in enumerate(widths):
      dense = _dense(int(width), in_size, name=f'dense{i}')
      setattr(self, f'dense{i}', dense)
      norm_layer = None
      if norm == 'layer':
        norm_layer = keras.layers.LayerNormalization(epsilon=1e-3, name=f'densenorm{i}')
        norm_layer.build((None, int(width)))
        setattr(self, f'densenorm{i}', norm_layer)
      elif norm not in ('none', None, ''):
        raise ValueError(f"norm is {norm!r}; allowed: 'none', 'layer'.")
      self.layers_.append((dense, norm_layer))
      in_size = int(width)
    self.out_size = in_size

  def call(self, x):
    for dense, norm_layer in self.layers_:
      x = dense(x)
      if norm_layer is not None:
        x = norm_layer(x)
      x = self.act(x)
    return x


def _selected(shapes: dict, cnn_keys: str, mlp_keys: str, net: str):
  """(shapes as int tuples, image keys, vector keys) chosen by the `net`'s key regexes.

  Raises:
    ValueError: when neither regex selects a key (naming both and the available shapes).
  """
  shapes = {k: tuple(int(d) for d in s) for k, s in shapes.items()}
  cnn, mlp = select_keys(shapes, cnn_keys, 3), select_keys(shapes, mlp_keys, 1)
  if not cnn and not mlp:
    raise ValueError(
        f'The {net} selects no observation: {net}.cnn_keys {cnn_keys!r} matches no rank-3 '
        f'key and {net}.mlp_keys {mlp_keys!r} no rank-1 key of {shapes}.')
  return shapes, cnn, mlp


class MultiEncoder(Encoder):
  """Encoder of a dict of observations (the authors' `cnn_keys`/`mlp_keys`, docs/reference.md §3).

  Rank-3 keys matching `cnn_keys` are stacked along channels and go through the conv encoder
  (`Encoder`, same variables `conv{i}`); rank-1 keys matching `mlp_keys` are concatenated and go
  through `mlp_layers` Dense layers (`mlp.dense{i}`, width 400 ×4 by default). embed = concat(cnn
  output, mlp output): [..., E] with E = 2·2·8·depth (if images) + mlp_layers[-1] (if vectors).

  Input: {key: preprocessed float [..., *shape]} (images in [−0.5, 0.5]); a single tensor is
  taken as the one image key (the exported policy and the parity tools pass the image alone).

  Raises:
    ValueError: when no key is selected, or the image keys differ in height and width.
  """

  def __init__(self, shapes: dict, cnn_keys: str = '.*', mlp_keys: str = '.*', act: str = 'elu',
               norm: str = 'none', cnn_depth: int = 48, cnn_kernels: Sequence[int] = (4, 4, 4, 4),
               mlp_layers: Sequence[int] = (400, 400, 400, 400), **kwargs):
    shapes, self.cnn_keys, self.mlp_keys = _selected(shapes, cnn_keys, mlp_keys, 'encoder')
    if self.cnn_keys:
      super().__init__(_image_stack_shape(shapes, self.cnn_keys), depth=cnn_depth,
                       kernels=cnn_kernels, act=act, norm=norm, **kwargs)
    else:
      keras.layers.Layer.__init__(self, **kwargs)  # pylint: disable=non-parent-init-called
      self.image_shape, self.convs, self.embed_size = None, [], 0
    self.mlp = None
    if self.mlp_keys:
      in_size = sum(shapes[k][0] for k in self.mlp_keys)
      self.mlp = _DenseStack(in_size, mlp_layers, act, norm, name='mlp')
      self.embed_size += self.mlp.out_size

  @property
  def keys(self) -> list[str]:
    return self.cnn_keys + self.mlp_keys

  def call(self, data):
    if not isinstance(data, dict):
      if self.keys != self.cnn_keys[:1]:
        raise ValueError(
            f'This encoder takes the observation keys {self.keys}; a single image tensor only '
            'fits an encoder of one image key (the exported policy and the parity tools need '
            'one). Pass a dict {key: tensor}.')
      data = {self.cnn_keys[0]: data}
    outputs = []
    if self.cnn_keys:
      images = [data[k] for k in self.cnn_keys]
      outputs.append(super().call(images[0] if len(images) == 1 else tf.concat(images, -1)))
    if self.mlp_keys:
      x = tf.concat([tf.cast(data[k], self.compute_dtype) for k in self.mlp_keys], -1)
      outputs.append(self.mlp(x))
    return outputs[0] if len(outputs) == 1 else tf.concat(outputs, -1)


class MultiDecoder(Decoder):
  """Decoder of a dict of observations: the transposed-conv `Decoder` for the rank-3 keys
  matching `cnn_keys` (one output with ΣC channels, split per key) and, for the rank-1 keys
  matching `mlp_keys`, `mlp_layers` Dense layers then one Dense(size) output per key
  (`dense_<key>`), as the authors' decoder.

  Input feat [..., F]; returns {key: mean [..., *shape]} (compute dtype). The image means go to
  `dists.image_dist` (unit-variance Normal over 3 dims), the vector means to a sum of squared
  errors (the authors' 'mse' DistLayer; world_model.vector_log_prob).

  Raises:
    ValueError: when no key is selected, or the image keys differ in height and width.
  """

  def __init__(self, feat_size: int, shapes: dict, cnn_keys: str = '.*', mlp_keys: str = '.*',
               act: str = 'elu', norm: str = 'none', cnn_depth: int = 48,
               cnn_kernels: Sequence[int] = (5, 5, 6, 6),
               mlp_layers: Sequence[int] = (400, 400, 400, 400), **kwargs):
    shapes, self.cnn_keys, self.mlp_keys = _selected(shapes, cnn_keys, mlp_keys, 'decoder')
    self.shapes = shapes
    if self.cnn_keys:
      super().__init__(feat_size, _image_stack_shape(shapes, self.cnn_keys), depth=cnn_depth,
                       kernels=cnn_kernels, act=act, norm=norm, **kwargs)
    else:
      keras.layers.Layer.__init__(self, **kwargs)  # pylint: disable=non-parent-init-called
      self.image_shape = None
    self.mlp, self.outs = None, {}
    if self.mlp_keys:
      self.mlp = _DenseStack(feat_size, mlp_layers, act, norm, name='mlp')
      for key in self.mlp_keys:
        name = 'dense_' + re.sub(r'\W', '_', key)
        out = _dense(shapes[key][0], self.mlp.out_size, name=name)
        setattr(self, name, out)
        self.outs[key] = out

  @property
  def keys(self) -> list[str]:
    return self.cnn_keys + self.mlp_keys

  def call(self, feat):
    outputs = {}
    if self.cnn_keys:
      stacked = super().call(feat)
      channels = [self.shapes[k][2] for k in self.cnn_keys]
      parts = [stacked] if len(channels) == 1 else tf.split(stacked, channels, -1)
      outputs.update(zip(self.cnn_keys, parts))
    if self.mlp_keys:
      x = self.mlp(tf.cast(feat, self.compute_dtype))
      outputs.update({k: out(x) for k, out in self.outs.items()})
    return outputs
