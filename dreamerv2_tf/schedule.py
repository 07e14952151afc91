"""Hyper-parameter schedules evaluated at the agent-step counter (docs/reference.md §2, §4).

A schedulable value is a number or a string: a constant ('1e-3') or one of
- `linear(initial, final, duration)`: interpolates from initial to final over `duration`
  agent steps, then stays at final;
- `warmup(duration, value)`: rises linearly from 0 to value over `duration` agent steps;
- `exp(initial, final, halflife)`: final + (initial − final)·0.5^(step / halflife);
- `horizon(initial, final, duration)`: a discount 1 − 1/H with H interpolated linearly.
"""

from __future__ import annotations

import re

_PATTERN = re.compile(r'^\s*(linear|warmup|exp|horizon)\((.*)\)\s*$')
_ARITY = {'linear': 3, 'warmup': 2, 'exp': 3, 'horizon': 3}


def parse(spec) -> tuple[str, tuple[float, ...]]:
  """Parses a schedule into (kind, args); a plain number gives ('constant', (value,)).

  Raises:
    ValueError: naming the string and the allowed forms.
  """
  if isinstance(spec, (int, float)) and not isinstance(spec, bool):
    return 'constant', (float(spec),)
  text = str(spec)
  try:
    return 'constant', (float(text),)
  except ValueError:
    pass
  match = _PATTERN.match(text)
  if match:
    kind = match.group(1)
    try:
      args = tuple(float(a) for a in match.group(2).split(','))
    except ValueError:
      args = ()
    if len(args) == _ARITY[kind]:
      return kind, args
  raise ValueError(
      f"Cannot parse schedule {text!r}; allowed: a number, linear(initial,final,duration), "
      f"warmup(duration,value), exp(initial,final,halflife), horizon(initial,final,duration).")


def schedule(spec, step) -> tf.Tensor:
  """Value of `spec` at agent step `step` (int or tensor) as a float32 tensor."""
  # TensorFlow is imported here, not at module level, so that `parse` can check a config before
  # TensorFlow loads (validate.py, train.py's fast command-line errors).
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  kind, args = parse(spec)
  step = tf.cast(step, tf.float32)
  if kind == 'constant':
    return tf.constant(args[0], tf.float32)
  if kind == 'linear':
    initial, final, duration = args
    mix = tf.clip_by_value(step / duration, 0.0, 1.0)
    return (1.0 - mix) * initial + mix * final
  if kind == 'warmup':
    duration, value = args
    return tf.clip_by_value(step / duration, 0.0, 1.0) * value
  if kind == 'exp':
    initial, final, halflife = args
    return (initial - final) * 0.5 ** (step / halflife) + final
  initial, final, duration = args
  mix = tf.clip_by_value(step / duration, 0.0, 1.0)
  return 1.0 - 1.0 / ((1.0 - mix) * initial + mix * final)
