"""Steps a vector environment with a policy and reports every transition (docs/reference.md §6, §8).

The environment is a `VecEnv` (`dreamerv2_tf.envs.make_vec_env`): `reset()` and `step(action)`
return a batched transition dict `{key: [N, ...]}` (docs/reference.md §1), and a worker whose previous
transition had `is_last` ignores its action and returns its reset transition (`is_first` True).

Counting: an AGENT STEP is a transition with `is_first` False (the reset transitions are not
steps, as in the authors' driver), so an episode of L agent steps has L + 1 transitions. The
driver never converts to frames.

Environment failures: with a `rebuild` factory the driver replaces an env that raises, drops
its unfinished episodes and stops after `max_failures` failures in a row (issue 12).

The policy state carries across calls and across episodes (docs/reference.md §8: it is reset only by
`is_first`, which the agent's `policy` handles); `reset()` starts over from `env.reset()`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from dreamerv2_tf.faults import EnvFailureError

# policy(obs {key: [N, ...]}, state or None) -> (action float32 [N, A], new state)
Policy = Callable[[Mapping[str, np.ndarray], Any], tuple[np.ndarray, Any]]


class RandomPolicy:
  """Uniform random actions (docs/reference.md §6 prefill): one-hot uniform over `size` actions when
  `discrete`, else uniform in [-1, 1]^size. Returns float32 [N, size] and state None.

  Args:
    act_space: has `discrete: bool` and `size: int` (number of actions / action dimensions).
    rng: the numpy Generator drawing the actions (checkpointed by the loop).
  """

  def __init__(self, act_space: Any, rng: np.random.Generator):
    self.discrete = bool(act_space.discrete)
    self.size = int(act_space.size)
    if self.size < 1:
      raise ValueError(f'Action space size must be at least 1, got {self.size}.')
    self.rng = rng

  def __call__(self, obs: Mapping[str, np.ndarray], state: Any = None) -> tuple[np.ndarray, None]:
    num = len(obs['is_first'])
    if self.discrete:
      action = np.zeros((num, self.size), np.float32)
      action[np.arange(num), self.rng.integers(0, self.size, num)] = 1.0
    else:
      action = self.rng.uniform(-1.0, 1.0, (num, self.size)).astype(np.float32)
    return action, None


class EpisodeStats:
  """Running return and length of one worker's current episode (length in agent steps)."""

  def __init__(self):
    self.length = 0
    self.score = 0.0
    self.logs: dict[str, float] = {}

  def add(self, transition: Mapping[str, Any]) -> None:
    if not transition['is_first']:
      self.length += 1
      self.score += float(transition['reward'])
    for key, value in transition.items():
      if key.startswith('log_'):
        self.logs[key] = self.logs.get(key, 0.0) + float(np.sum(value))

  def summary(self) -> dict[str, float]:
    """{'return': sum of rewards, 'length': agent steps, 'log_*': sum over the episode}."""
    return {'return': self.score, 'length': self.length, **self.logs}


class Driver:
  """Runs `policy` in `env`, calling back per transition and per finished episode.

  Args:
    env: a VecEnv with `num` workers (see the module docstring).
    on_step: callables `fn(transition, worker)`, called for EVERY transition in order, reset
      transitions included (the replay stores those); `transition` holds one worker's unbatched
      arrays.
    on_episode: callables `fn(stats, worker)` when a worker's transition has `is_last`; `stats`
      is `{'return': float, 'length': int agent steps, 'log_*': sums}`.
    rebuild: a zero-argument factory of a new VecEnv like `env`, or None. With it, an
      exception raised by `env.reset()` or `env.step()` (a crashed emulator, renderer or worker
      process) does not end the call: the broken env is closed, a new one is built, and its
      reset transitions (`is_first`) start new episodes, so the unfinished ones are dropped
      (the replay never stores them). Exceptions of the policy are never caught.
    max_failures: with `rebuild`, the number of env failures in a row (no episode finished in
      between, rebuild failures included) after which `EnvFailureError` is raised.
    on_failure: callables `fn(error, failures_in_row)` after each caught env failure.
    name: names the env in messages ('train', 'eval').
  """

  def __init__(self, env: Any, on_step=(), on_episode=(), rebuild: Callable[[], Any] | None = None,
               max_failures: int = 5, on_failure=(), name: str = 'environment'):
    self.env = env
    self.num = int(env.num)
    self.on_step = list(on_step)
    self.on_episode = list(on_episode)
    self.rebuild = rebuild
    self.max_failures = int(max_failures)
    self.on_failure = list(on_failure)
    self.name = name
    self.failures = 0          # env failures caught so far
    self.failures_in_row = 0   # since the last finished episode
    self.reset()

  def reset(self) -> None:
    """Forgets the current observation and policy state: the next call starts with env.reset()
    (unfinished episodes are dropped, as the authors' driver does)."""
    self._obs = None
    self._state = None
    self._stats = [EpisodeStats() for _ in range(self.num)]

  def __call__(self, policy: Policy, steps: int = 0, episodes: int = 0,
               stop: Callable[[], bool] | None = None) -> tuple[int, int]:
    """Steps until `steps` agent steps or `episodes` finished episodes (whichever is given and
    reached first; at least one of them > 0), or until `stop()` returns True (checked before
    every environment step). Returns (agent steps done, episodes finished).

    With N workers one environment step yields N transitions, so `steps` may be exceeded by up
    to N − 1.

    Raises:
      EnvFailureError: `max_failures` env failures in a row (with `rebuild`); its cause is the
        last env exception. Without `rebuild` the env's exception itself propagates.
    """
    if steps <= 0 and episodes <= 0 and stop is None:
      raise ValueError(f'Driver needs steps > 0, episodes > 0 or a stop callable; got steps='
                       f'{steps}, episodes={episodes}.')
    step = episode = 0
    while (steps <= 0 or step < steps) and (episodes <= 0 or episode < episodes):
      if stop is not None and stop():
        break
      obs = self._advance(policy, stop)
      if obs is None:  # the env failed (and was rebuilt): start over with env.reset()
        continue
      for worker in range(self.num):
        transition = {k: v[worker] for k, v in obs.items()}
        if transition['is_first']:
          self._stats[worker] = EpisodeStats()
        self._stats[worker].add(transition)
        if not transition['is_first']:
          step += 1
        for fn in self.on_step:
          fn(transition, worker)
        if transition['is_last']:
          episode += 1
          self.failures_in_row = 0
          summary = self._stats[worker].summary()
          for fn in self.on_episode:
            fn(summary, worker)
      self._obs = obs
    return step, episode

  def _advance(self, policy: Policy, stop: Callable[[], bool] | None = None):
    """One env.reset() or policy + env.step(); None when the env failed and was rebuilt (or,
    when a stop is requested, only dropped: Ctrl-C reaches env worker processes too, and a
    stopping run needs no new env)."""
    action = None
    if self._obs is not None:
      action, self._state = policy(self._policy_obs(self._obs), self._state)
      action = np.asarray(action, np.float32)
    try:
      if action is None:
        self._state = None
        return self.env.reset()
      return self.env.step(action)
    except Exception as error:  # pylint: disable=broad-except (any env fault; see rebuild)
      if self.rebuild is None:
        raise
      if stop is not None and stop():
        self.reset()
        return None
      self._recover(error)
      return None

  def _recover(self, error: Exception) -> None:
    """Counts the failure, raises after `max_failures` in a row, else rebuilds the env."""
    while True:
      self.failures += 1
      self.failures_in_row += 1
      for fn in self.on_failure:
        fn(error, self.failures_in_row)
      if self.failures_in_row >= self.max_failures:
        raise EnvFailureError(
            f'The {self.name} environment failed {self.failures_in_row} times in a row '
            f'(env_max_failures {self.max_failures}); last error: {type(error).__name__}: '
            f'{" ".join(str(error).split())[:300]}') from error
      try:
        self.env.close()
      except Exception:  # pylint: disable=broad-except (it is broken already)
        pass
      try:
        self.env = self.rebuild()
        break
      except Exception as rebuild_error:  # pylint: disable=broad-except
        error = rebuild_error
    self.reset()

  @staticmethod
  def _policy_obs(obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batched transition without `log_*` keys (never fed to the model, docs/reference.md §1)."""
    return {k: v for k, v in obs.items() if not k.startswith('log_')}
