"""Adam with global-norm clipping, decoupled weight decay and loss scaling (docs/reference.md §5).

One update, in this order: gradients (unscaled under mixed precision), clipped to a global
norm of `clip` (the logged `<name>_grad_norm` is the norm before clipping), every optimised
variable decayed as w ← (1 − wd)·w, then the Adam step (β 0.9/0.999, ε added to √v as Keras
does). Under `mixed_float16` Keras' `LossScaleOptimizer` provides dynamic loss scaling: a
step whose gradients are not finite is skipped and the scale halved; a skipped step changes no
variable (the weight decay is skipped too) and is counted in `<name>_skipped_steps`.

Clipping uses `tf.clip_by_global_norm`'s own factor clip·min(1/norm, 1/clip) (exactly 1 when
norm <= clip), so clipped gradients are bitwise those of the authors' `common.Optimizer`.

Under a `tf.distribute` strategy (distribute.py) the gradients are first averaged across the
replicas (one MEAN all-reduce), so norm, clip, decay and loss scaling see the global batch.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from dreamerv2_tf import distribute


class Optimizer(tf.Module):
  """One optimiser for one group of variables (model, actor or critic).

  Args:
    name: prefix of the logged metrics (`model`, `actor`, `critic`).
    variables: the variables it updates; slots are created now, so checkpoints restore
      into them before the first update.
    lr, eps, clip, wd: learning rate, Adam ε, global-norm clip (0 disables), weight decay.
    mixed: wrap in a dynamic `LossScaleOptimizer` (float16 training).
    groups: optional {group name: variables (a subset of `variables`)}: with `diagnostics`
      on, `apply` also returns each group's pre-clip gradient norm.

  Attributes:
    diagnostics: when True (set before the first traced call; the agent sets it for
      `deterministic_check`), `apply` also returns `<name>_grad_norm/<group>` per group and
      `<name>_grad_norm_var/<k>` (k: 3-digit index into `variables`), pre-clip L2 norms.
    skipped: int64 variable, steps skipped by the loss scaler (always 0 without `mixed`).
  """

  def __init__(self, name: str, variables, lr: float, eps: float = 1e-5, clip: float = 100.0,
               wd: float = 1e-6, mixed: bool = False, groups=None):
    super().__init__(name=name)
    self.label = name
    self.clip = clip
    self.wd = wd
    self.mixed = mixed
    self.variables_ = list(variables)
    self.groups = {k: list(v) for k, v in (groups or {}).items()}
    self.diagnostics = False
    self.skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name=f'{name}_skipped')
    self.opt = keras.optimizers.Adam(lr, beta_1=0.9, beta_2=0.999, epsilon=eps,
                                     name=f'{name}_adam')
    if mixed:
      self.opt = keras.mixed_precision.LossScaleOptimizer(self.opt, name=f'{name}_lso')
    self.opt.build(self.variables_)

  @property
  def iterations(self) -> tf.Variable:
    """Number of applied Adam steps (int64 variable)."""
    return self.opt.iterations

  def loss_scale(self) -> tf.Tensor:
    """Current dynamic loss scale (float32 scalar; 1.0 without mixed precision)."""
    return tf.cast(self.opt.dynamic_scale, tf.float32) if self.mixed else tf.constant(1.0)

  def scale(self, loss: tf.Tensor) -> tf.Tensor:
    """The loss to differentiate: multiplied by the loss scale under mixed precision."""
    return self.opt.scale_loss(loss) if self.mixed else loss

  def apply(self, grads) -> dict[str, tf.Tensor]:
    """Clips, decays and steps with gradients of `scale(loss)`; returns grad norm metrics."""
    grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, self.variables_)]
    grads = distribute.replica_mean(grads)  # under tf.distribute: the global-batch gradient
    scale = self.loss_scale()
    metrics = {}
    if self.mixed:
      metrics[f'{self.label}_loss_scale'] = scale
    norm = tf.linalg.global_norm(grads) / scale
    if self.diagnostics:
      metrics.update(self._diagnostics(grads, scale))
    if self.clip:
      # tf.clip_by_global_norm's factor (it would recompute the norm of the scaled grads).
      factor = self.clip * tf.minimum(1.0 / norm, 1.0 / self.clip)
      grads = [g * tf.cast(factor, g.dtype) for g in grads]
    if self.mixed:
      finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
      self.skipped.assign_add(tf.cast(tf.logical_not(finite), tf.int64))
      metrics[f'{self.label}_skipped_steps'] = tf.cast(self.skipped, tf.float32)
    if self.wd:
      decay = tf.constant(1.0 - self.wd, tf.float32)
      if self.mixed:  # A step the loss scaler skips must not decay the weights either.
        decay = tf.where(finite, decay, 1.0)
      for var in self.variables_:
        var.assign(tf.cast(decay, var.dtype) * var)
    replicas = distribute.num_replicas()  # Keras' apply sums the replicas' gradients again.
    self.opt.apply(grads if replicas == 1 else [g / replicas for g in grads], self.variables_)
    metrics[f'{self.label}_grad_norm'] = norm
    return metrics

  def _diagnostics(self, grads, scale) -> dict[str, tf.Tensor]:
    index = {id(v): i for i, v in enumerate(self.variables_)}
    out = {}
    for group, variables in self.groups.items():
      out[f'{self.label}_grad_norm/{group}'] = tf.linalg.global_norm(
          [grads[index[id(v)]] for v in variables]) / scale
    for i, g in enumerate(grads):
      out[f'{self.label}_grad_norm_var/{i:03d}'] = tf.norm(tf.cast(g, tf.float32)) / scale
    return out

  def minimize(self, tape: tf.GradientTape, loss: tf.Tensor) -> dict[str, tf.Tensor]:
    """Differentiates `loss` (recorded on `tape`, which must have seen `self.scale(loss)`).

    Callers compute `scaled = opt.scale(loss)` inside the tape, then call this with it.
    """
    grads = tape.gradient(loss, self.variables_)
    return self.apply(grads)
