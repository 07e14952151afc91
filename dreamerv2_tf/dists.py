"""Distributions of DreamerV2, built on tensorflow-probability (docs/reference.md §3, §4, §8).

Every distribution here computes in float32 whatever the layer precision: the callers cast
their parameters with `tf.cast(x, tf.float32)` first (mixed float16 would break
`TruncatedNormal.log_prob` and XLA's one-hot sampling, ../shared/STACK.md).

- `OneHotDist`: categorical over one-hot vectors with straight-through samples
  (sample + (probs − stop_gradient(probs))), mode = one-hot argmax, analytic entropy and KL
  (inherited from `tfd.OneHotCategorical`), `log_prob` without gradient into the event.
- `TruncNormalDist`: the continuous actor's truncated normal on [−1, 1] whose samples are
  clipped into (−1 + 1e-6, 1 − 1e-6) with a straight-through gradient.
- `NormalDist`: the Normal of Gaussian RSSM latents, reparameterised samples mean + std·ε.
- `image_dist`, `scalar_normal`, `bernoulli`: the heads' unit-variance Normal and Bernoulli.
- `mode_draws()`: the checking switch (`deterministic_check`) under which every draw of these
  distributions returns its mode while the straight-through terms around it stay.
"""

from __future__ import annotations

import contextlib
import threading

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

_SWITCH = threading.local()


@contextlib.contextmanager
def mode_draws(enabled: bool = True):
  """Within this block (while Python runs, i.e. while a tf.function traces), draws are modes.

  The checking tool behind the config key `deterministic_check` (README, "Deterministic
  updates"): `OneHotDist.sample` draws one_hot(argmax(logits)) (ties: lowest index) and
  `TruncNormalDist.sample` draws clip(loc, low, high) with d draw / d loc = 1 and no path to the
  scale; `NormalDist.sample` draws its mean (ε = 0: d draw / d mean = 1, d draw / d std = 0);
  everything the samplers add around the draw is kept (the one-hot straight-through term
  probs − sg(probs), the truncated normal's clip into (low + 1e-6, high − 1e-6)). This is the
  semantics of the authors' update fixtures (tests/fixtures/update_*/README.md, "The
  deterministic switch"). Nested blocks restore the outer setting. Never used in training.
  """
  previous = getattr(_SWITCH, 'enabled', False)
  _SWITCH.enabled = bool(enabled)
  try:
    yield
  finally:
    _SWITCH.enabled = previous


def drawing_modes() -> bool:
  """True inside `mode_draws()` (see there)."""
  return getattr(_SWITCH, 'enabled', False)


def _broadcast_draw(value, sample_shape):
  shape = tf.reshape(tf.convert_to_tensor(sample_shape, tf.int32), [-1])
  return tf.broadcast_to(value, tf.concat([shape, tf.shape(value)], 0))


class OneHotDist(tfd.OneHotCategorical):
  """One-hot categorical with straight-through gradients through `sample()`.

  Args:
    logits: float tensor [..., K]; cast to float32.

  `sample()` returns float32 one-hot vectors [..., K] (exactly 0 or 1 in the forward pass)
  whose gradient with respect to the logits equals that of `probs`. `mode()` is the one-hot
  argmax. `log_prob(x)` treats `x` as a constant (no gradient into the event; docs/reference.md §8).
  """

  def __init__(self, logits=None, probs=None, dtype=tf.float32, validate_args=False,
               allow_nan_stats=True, name='OneHotDist'):
    parameters = dict(locals())
    if logits is not None:
      logits = tf.cast(logits, tf.float32)
    if probs is not None:
      probs = tf.cast(probs, tf.float32)
    super().__init__(logits=logits, probs=probs, dtype=dtype, validate_args=validate_args,
                     allow_nan_stats=allow_nan_stats, name=name)
    self._parameters = parameters

  @classmethod
  def _parameter_properties(cls, dtype, num_classes=None):
    # Same parameters (logits, probs) as the parent; declared so TFP knows the subclass
    # keeps the parent's parameterisation.
    return tfd.OneHotCategorical._parameter_properties(dtype, num_classes)

  def mode(self, **kwargs):
    logits = self.logits_parameter()
    return tf.one_hot(tf.argmax(logits, -1), logits.shape[-1], dtype=self.dtype)

  def sample(self, sample_shape=(), seed=None, name='sample', **kwargs):
    # TFP's sampler draws int indices; the straight-through term adds the probabilities'
    # gradient without changing the forward value.
    if drawing_modes():
      sample = _broadcast_draw(self.mode(), sample_shape)
    else:
      sample = tf.stop_gradient(super().sample(sample_shape, seed=seed, name=name, **kwargs))
    probs = self.probs_parameter()
    while len(probs.shape) < len(sample.shape):
      probs = probs[None]
    # (probs − sg(probs)) is exactly zero in the forward pass, so the sample stays exactly
    # one-hot (sample + probs − sg(probs) would round 1 to 0.99999994 at times).
    return sample + (probs - tf.stop_gradient(probs))

  def log_prob(self, value, name='log_prob', **kwargs):
    return super().log_prob(tf.stop_gradient(tf.cast(value, self.dtype)), name=name, **kwargs)


class TruncNormalDist(tfd.TruncatedNormal):
  """Truncated normal on [low, high] with clipped, straight-through samples (docs/reference.md §4).

  Args:
    loc, scale: float tensors [..., A]; cast to float32.
    low, high: truncation bounds (−1, 1 for actions).
    clip: samples are clipped into (low + clip, high − clip) in the forward pass while the
      gradient flows as if unclipped.
  """

  def __init__(self, loc, scale, low=-1.0, high=1.0, clip=1e-6, name='TruncNormalDist'):
    parameters = dict(locals())
    super().__init__(tf.cast(loc, tf.float32), tf.cast(scale, tf.float32), low, high, name=name)
    self._clip = clip
    self._parameters = parameters

  @classmethod
  def _parameter_properties(cls, dtype, num_classes=None):
    return tfd.TruncatedNormal._parameter_properties(dtype, num_classes)

  def sample(self, sample_shape=(), seed=None, name='sample', **kwargs):
    if drawing_modes():
      # The mode clip(loc, low, high) broadcast to the draw's shape: d event / d loc = 1 inside
      # the bounds, no gradient path to the scale (see `mode_draws`).
      loc = self.loc + tf.zeros_like(self.scale)
      event = _broadcast_draw(tf.clip_by_value(loc, self.low, self.high), sample_shape)
    else:
      event = super().sample(sample_shape, seed=seed, name=name, **kwargs)
    if self._clip:
      low = tf.cast(self.low, event.dtype) + self._clip
      high = tf.cast(self.high, event.dtype) - self._clip
      clipped = tf.clip_by_value(event, low, high)
      event = event - tf.stop_gradient(event) + tf.stop_gradient(clipped)
    return event


class NormalDist(tfd.Normal):
  """Normal with reparameterised samples that `mode_draws` turns into the mean.

  Args:
    loc, scale: float tensors [...] (any precision); cast to float32.

  `sample()` is TFP's loc + scale·ε, ε ~ N(0, 1) (gradients to both parameters); inside
  `mode_draws()` it is loc broadcast to the draw's shape: the authors' draw with ε = 0, so
  d draw / d loc = 1 and d draw / d scale = 0.
  """

  def __init__(self, loc, scale, validate_args=False, allow_nan_stats=True,
               name='NormalDist'):
    parameters = dict(locals())
    super().__init__(tf.cast(loc, tf.float32), tf.cast(scale, tf.float32),
                     validate_args=validate_args, allow_nan_stats=allow_nan_stats, name=name)
    self._parameters = parameters

  @classmethod
  def _parameter_properties(cls, dtype, num_classes=None):
    return tfd.Normal._parameter_properties(dtype, num_classes)

  def sample(self, sample_shape=(), seed=None, name='sample', **kwargs):
    if drawing_modes():
      return _broadcast_draw(self.loc + tf.zeros_like(self.scale), sample_shape)
    return super().sample(sample_shape, seed=seed, name=name, **kwargs)


def gaussian_latent(mean: tf.Tensor, std: tf.Tensor) -> tfd.Distribution:
  """The RSSM's Gaussian latent distribution (`rssm.discrete: 0`): diagonal Normal, one event.

  Args:
    mean, std: [..., stoch] float (any precision; std > 0).
  Returns:
    Independent(NormalDist(mean, std), 1): batch shape [...], event [stoch]; `log_prob`,
    `entropy` and `kl_divergence` sum over the stoch dimensions (the authors'
    MultivariateNormalDiag), `mode()` is the mean.
  """
  return tfd.Independent(NormalDist(mean, std), 1)


STD_ACTS = ('softplus', 'sigmoid', 'sigmoid2')  # `rssm.std_act` values (see `latent_std`)


def latent_std(raw: tf.Tensor, std_act: str, min_std: float) -> tf.Tensor:
  """The Gaussian latent's std from the raw Dense output: act(raw) + min_std, float32.

  `std_act`: 'softplus' (log(1 + e^x)), 'sigmoid' (σ(x)) or 'sigmoid2' (2·σ(x / 2)).
  Raises:
    ValueError: for another `std_act`.
  """
  raw = tf.cast(raw, tf.float32)
  if std_act == 'softplus':
    std = tf.nn.softplus(raw)
  elif std_act == 'sigmoid':
    std = tf.nn.sigmoid(raw)
  elif std_act == 'sigmoid2':
    std = 2.0 * tf.nn.sigmoid(raw / 2.0)
  else:
    raise ValueError(f"std_act is {std_act!r}; allowed: 'softplus', 'sigmoid', 'sigmoid2'.")
  return std + min_std


def categorical_latent(logits: tf.Tensor) -> tfd.Distribution:
  """The RSSM's latent distribution: `stoch` independent categoricals, one event.

  Args:
    logits: [..., stoch, classes] float (any precision).
  Returns:
    Independent(OneHotDist(logits), 1): batch shape [...], event [stoch, classes]; `entropy`
    and `kl_divergence` sum over the `stoch` categoricals.
  """
  return tfd.Independent(OneHotDist(logits), 1)


def image_dist(mean: tf.Tensor) -> tfd.Distribution:
  """Unit-variance Normal over [..., H, W, C] images, log-prob summed over H, W, C (docs/reference.md §3)."""
  return tfd.Independent(tfd.Normal(tf.cast(mean, tf.float32), 1.0), 3)


def scalar_normal(mean: tf.Tensor) -> tfd.Distribution:
  """Unit-variance Normal over scalars [...] (reward head and critic); mode = mean."""
  return tfd.Independent(tfd.Normal(tf.cast(mean, tf.float32), 1.0), 0)


def vector_normal(mean: tf.Tensor) -> tfd.Distribution:
  """Unit-variance Normal over vectors [..., D] (the explorer's heads; the authors' 'mse' head
  dist): log_prob sums over D and includes −0.5·ln 2π per dimension; mode = mean."""
  return tfd.Independent(tfd.Normal(tf.cast(mean, tf.float32), 1.0), 1)


def bernoulli(logits: tf.Tensor) -> tfd.Distribution:
  """Bernoulli over scalars [...] from logits (discount head); accepts soft targets in [0, 1]."""
  return tfd.Independent(tfd.Bernoulli(logits=tf.cast(logits, tf.float32), dtype=tf.float32), 0)


def action_dist(kind: str, mean: tf.Tensor, std: tf.Tensor | None = None,
                min_std: float = 0.1, init_std: float = 0.0) -> tfd.Distribution:
  """The actor's distribution (docs/reference.md §4).

  Args:
    kind: 'onehot' (mean are logits [..., A]) or 'trunc_normal' (mean and std are raw
      outputs [..., A]: loc = tanh(mean), scale = 2·σ((std + init_std)/2) + min_std).
  Raises:
    ValueError: for another `kind`.
  """
  if kind == 'onehot':
    return OneHotDist(mean)
  if kind == 'trunc_normal':
    mean = tf.cast(mean, tf.float32)
    std = tf.cast(std, tf.float32)
    std = 2.0 * tf.nn.sigmoid((std + init_std) / 2.0) + min_std
    return tfd.Independent(TruncNormalDist(tf.tanh(mean), std, -1.0, 1.0), 1)
  raise ValueError(f"Unknown actor distribution '{kind}'; allowed: onehot, trunc_normal.")
