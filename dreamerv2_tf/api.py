"""Python API: train DreamerV2 on any gymnasium environment (README "Use it as a library").

  import dreamerv2_tf
  config = dreamerv2_tf.load_config(overlays=('debug',), overrides={'steps': 1000})
  result = dreamerv2_tf.train(make_env, config, 'logdir/my_env')   # make_env() -> gymnasium.Env
  dreamerv2_tf.evaluate('logdir/my_env', env=make_env, episodes=5)

`env` is one of
  - a zero-argument callable returning a gymnasium Env: called once per environment (config
    `envs` for training, more for evaluation); with `envs` > 1 the envs run in worker processes,
    so the callable must be picklable by cloudpickle and its env must not need TensorFlow;
  - a gymnasium Env instance: trained on directly (`envs` must be 1); the evaluation env is a
    `copy.deepcopy` of it made before training (pass a callable if the env cannot be copied);
  - a string: a task of this package (`atari_pong`, `dmc_walker_walk`, `crafter_reward`,
    `gym_<id>`) or any registered gymnasium id (`'CartPole-v1'` means `gym_CartPole-v1`).

Observation and action rules: dreamerv2_tf/envs/gym_env.py (images → CNN, vectors → MLP, chosen by
the `encoder`/`decoder` `cnn_keys`/`mlp_keys` regexes; Discrete → one-hot, Box → [-1, 1];
terminated → is_terminal, truncated → is_last only, docs/reference.md §1). Runs of an API env record
the task `custom_<name>` (the env's spec id or class name, or `name=`) in `<logdir>/config.yaml`;
running `train` again on the same logdir resumes from its latest checkpoint, as train.py does.

This module imports no TensorFlow until `train` or `evaluate` runs.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any, Callable, Iterable, Mapping

from dreamerv2_tf import config as config_lib
from dreamerv2_tf.config import Config, ConfigError
from dreamerv2_tf.validate import validate

__all__ = ['load_config', 'train', 'evaluate', 'resolve_env']


def load_config(overlays: Iterable[str] = (), overrides: Mapping[str, Any] | None = None
                ) -> Config:
  """The run config: configs.yaml `defaults`, the `overlays` in order, then the dotted-key
  `overrides` (`{'rssm.deter': 200, 'steps': 1e5}`; values are converted to the defaults'
  types, strings as on the command line), checked by `validate.validate` as train.py does.

  Raises:
    ConfigError (a ValueError): an unknown overlay or key, a value of the wrong type, or a
      value that cannot work (one line naming it and what is allowed).
  """
  if isinstance(overlays, str):
    overlays = [overlays]
  config = config_lib.load_config(list(overlays), dict(overrides or {}))
  validate(config)
  return config


def _run_name(env: Any, name: str | None) -> str:
  """'custom_<name>': `name`, else the env's spec id, class name or function name, with every
  character other than letters, digits, '-', '.' and '_' replaced by '_'."""
  if name is None:
    spec = getattr(env, 'spec', None)
    name = getattr(spec, 'id', None) or getattr(env, '__name__', None) or type(env).__name__
  name = re.sub(r'[^A-Za-z0-9_.\-]', '_', str(name)).strip('_') or 'env'
  return f'custom_{name}'


def resolve_env(env: Any, name: str | None = None
                ) -> tuple[str, Callable[[], Any] | None]:
  """(task, env_fn) for `train`'s `env` argument (module docstring): a task string gives
  (task, None); an Env instance or a callable gives ('custom_<name>', factory).

  Raises:
    TypeError: for anything else, naming its type.
    ValueError: an unknown task or gymnasium id (closest names listed); an Env instance that
      cannot be deep-copied for evaluation.
  """
  import gymnasium as gym  # pylint: disable=import-outside-toplevel
  from dreamerv2_tf import envs  # pylint: disable=import-outside-toplevel
  if isinstance(env, str):
    suite = env.partition('_')[0]
    task = env if suite in envs.SUITES and suite != 'custom' else f'gym_{env}'
    envs.check_task(task)
    return task, None
  if isinstance(env, gym.Env):
    try:
      spare = copy.deepcopy(env)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(
          f'The env {env!r} cannot be copied for evaluation ({type(e).__name__}: {e}); pass a '
          'zero-argument function that returns a new env instead.') from None
    given = [env, spare]

    def instance_factory():
      if not given:
        raise ValueError('An Env instance serves one training and one evaluation env; pass a '
                         'zero-argument function that returns a new env for envs > 1.')
      return given.pop(0)

    return _run_name(env, name), instance_factory
  if callable(env):
    return _run_name(env, name), env
  raise TypeError(f'env must be a gymnasium Env, a zero-argument callable returning one, or a '
                  f'task or gymnasium id string; got {type(env).__name__}: {env!r}.')


def train(env: Any, config: Config | None = None, logdir: str | os.PathLike | None = None, *,
          name: str | None = None):
  """Trains DreamerV2 on `env` until `config.steps` agent steps (prefill included), logging to
  and resuming from `logdir` exactly as train.py (episodes, checkpoints, metrics.jsonl,
  TensorBoard events, config.yaml).

  Args:
    env: a gymnasium Env, a zero-argument callable returning one, or a task/id string (module
      docstring).
    config: from `load_config` (default: `load_config()`, the full-size defaults).
    logdir: run directory (default: `config.logdir`, else logdir/<task>).
    name: names the run of an Env or callable (`task: custom_<name>`).

  Returns:
    loop.RunResult: steps (agent steps), frames, updates, checkpoint, signal (None when
    `steps` was reached; SIGINT/SIGTERM stop the run after a checkpoint).

  Raises:
    ConfigError: a bad config, a logdir holding another task's run, a checkpoint that does not
      fit the config.
    TypeError: an env with an unsupported observation or action space, naming it.
    ValueError: an unknown task or id, or an Env instance with `envs` > 1.
  """
  config = load_config() if config is None else config
  if not isinstance(config, Config):
    raise TypeError(f'config must be a dreamerv2_tf Config (load_config), got '
                    f'{type(config).__name__}.')
  task, env_fn = resolve_env(env, name)
  if logdir is None:
    logdir = config.logdir or os.path.join('logdir', task)
  config = config.update({'task': task, 'logdir': os.fspath(logdir)})
  validate(config, check_task=env_fn is None)
  if env_fn is not None and _is_instance(env) and int(config.envs) > 1:
    raise ValueError(f'envs is {config.envs}, but an Env instance is one environment; pass a '
                     'zero-argument function that returns a new env.')
  from dreamerv2_tf import loop  # pylint: disable=import-outside-toplevel
  return loop.run(config, config.logdir, make_env=env_fn)


def _is_instance(env: Any) -> bool:
  import gymnasium as gym  # pylint: disable=import-outside-toplevel
  return isinstance(env, gym.Env)


def evaluate(logdir: str | os.PathLike, env: Any = None, episodes: int = 1, *,
             checkpoint: str | None = None, seed: int | None = None,
             video: str | os.PathLike | None = None,
             output: str | os.PathLike | None = None) -> dict:
  """Plays `episodes` evaluation episodes (the actor's mode) with the latest readable checkpoint
  of `logdir` (or `checkpoint`) and writes the result to `<logdir>/evaluation.json` (or
  `output`), as `dreamerv2-evaluate` does.

  Args:
    logdir: a run directory of `train` or train.py.
    env: for runs of an API env, the same kind of `env` as given to `train` (a callable or an
      Env instance); None builds the run's task (`config.yaml`).
    episodes: number of episodes (>= 1). seed: environment seed (default: the run's).
    video: an .mp4 (or .gif) path to record the episodes to (needs an `image` observation).

  Returns:
    {'checkpoint', 'task', 'agent_step', 'frames', 'seed', 'episodes', 'returns', 'lengths'
    (agent steps), 'mean', 'std'}.

  Raises:
    ConfigError: no run in `logdir`, no readable checkpoint, a checkpoint that does not fit,
      bad arguments; an API run evaluated without `env`.
  """
  from dreamerv2_tf import evaluate as evaluate_lib  # pylint: disable=import-outside-toplevel
  kwargs = dict(checkpoint=checkpoint, seed=seed, video=video, output=output)
  if env is not None:
    _, env_fn = resolve_env(env)
    if env_fn is not None:
      kwargs['env_fn'] = env_fn
  else:
    run = evaluate_lib.load_run_config(logdir)
    if str(run.task).startswith('custom_'):
      raise ConfigError(f'{logdir} is a run of the API env {run.task!r}: pass the env, e.g. '
                        'dreamerv2_tf.evaluate(logdir, env=make_env).')
  return evaluate_lib.evaluate(logdir, episodes, **kwargs)
