"""Adam with global-norm clipping, decoupled weight decay and loss scaling (SPEC.md §5).

One update, in this order: gradients (unscaled under mixed precision), clipped to a global
norm of `clip` (the logged `<name>_grad_norm` is the norm before clipping), every optimised
variable decayed as w ← (1 − wd)·w, then the Adam step (β 0.9/0.999, ε added to √v as Keras
does). Under `mixed_float16` Keras' `LossScaleOptimizer` provides dynamic loss scaling: a
step whose gradients are not finite is skipped and the scale halved.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class Optimizer(tf.Module):
  """One optimiser for one group of variables (model, actor or critic).

  Args:
    name: prefix of the logged metrics (`model`, `actor`, `critic`).
    variables: the variables it updates; slots are created now, so checkpoints restore
      into them before the first update.
    lr, eps, clip, wd: learning rate, Adam ε, global-norm clip (0 disables), weight decay.
    mixed: wrap in a dynamic `LossScaleOptimizer` (float16 training).
  """

  def __init__(self, name: str, variables, lr: float, eps: float = 1e-5, clip: float = 100.0,
               wd: float = 1e-6, mixed: bool = False):
    super().__init__(name=name)
    self.label = name
    self.clip = clip
    self.wd = wd
    self.mixed = mixed
    self.variables_ = list(variables)
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
    scale = self.loss_scale()
    norm = tf.linalg.global_norm(grads) / scale
    if self.clip:
      factor = self.clip / tf.maximum(norm, self.clip)
      grads = [g * tf.cast(factor, g.dtype) for g in grads]
    if self.wd:
      for var in self.variables_:
        var.assign((1.0 - self.wd) * var)
    self.opt.apply(grads, self.variables_)
    metrics = {f'{self.label}_grad_norm': norm}
    if self.mixed:
      metrics[f'{self.label}_loss_scale'] = scale
    return metrics

  def minimize(self, tape: tf.GradientTape, loss: tf.Tensor) -> dict[str, tf.Tensor]:
    """Differentiates `loss` (recorded on `tape`, which must have seen `self.scale(loss)`).

    Callers compute `scaled = opt.scale(loss)` inside the tape, then call this with it.
    """
    grads = tape.gradient(loss, self.variables_)
    return self.apply(grads)
