"""The training loop of docs/reference.md §6: prefill → pretrain → act/train/evaluate/log/checkpoint.

Units: every count in the config (`steps`, `prefill`, `train_every`, `eval_every`, `log_every`)
is in AGENT steps (one policy decision; a transition with `is_first` False). Every logged `step`
is in FRAMES = agent steps × `action_repeat`.

Order of a run in `<logdir>`:
1. Refuse a logdir whose `config.yaml` names another task or action repeat (`check_logdir`);
   print device, precision, spaces, replay contents.
2. Restore the newest readable checkpoint if there is one (agent, step counter, RNG states,
   loop counters; a newer unreadable one is renamed aside with a warning); otherwise the step
   counter starts at the agent steps already stored on disk. A checkpoint that does not fit
   the config stops the run with the logdir's `config.yaml` unchanged. Only once the
   checkpoint fits (or there is none) is `<logdir>/config.yaml` written (a different previous
   one is kept as `config.yaml.previous-<UTC time>`). Metrics lines newer than the restored
   step are moved aside (`Logger.rewind`).
   Before anything is written, `<logdir>/.lock` is locked (`lock.LogdirLock`): a second run on
   the same logdir stops at once naming the PID and host of the first; a lock left by a process
   that is gone is taken over (and said so).
3. Prefill with a uniform random policy until the train replay holds `prefill` agent steps
   (counting episodes already on disk) and at least one episode, and the eval replay one
   episode. Prefill steps count towards `steps`.
4. If the agent has never been updated: the first update (creates the variables) and `pretrain`
   more; then print the parameter table. During pretraining and training a progress line
   (agent steps, frames, updates, updates/s, next log and evaluation, ETA) comes at least every
   `progress_every_s` seconds, on the terminal and in `<logdir>/progress.log`.
5. Evaluate (actor's mode, separate environment of min(envs, eval_eps) workers, `eval_eps`
   episodes scored whatever `envs` is) when training starts and
   then every `eval_every` agent steps, each evaluation followed by a checkpoint. Act with the
   agent's training policy; every `train_every` agent steps do `train_steps` updates; every
   `log_every` agent steps, counted from the start of training, write the interval's mean
   training metrics, rates, the mean return of the training episodes finished in it (prefill
   episodes excluded) and an open-loop video; stop at `steps`. TensorBoard also gets
   `train_policy_image` (a training episode's frames, once per `eval_every`) and
   `eval_policy_image` (the first episode of each evaluation).
6. On finishing, SIGINT (Ctrl-C) or SIGTERM: save a checkpoint and return. A second Ctrl-C
   aborts at once without one. The signal is seen within a fraction of a second in every phase
   (updates run in a worker thread while the main thread waits in short slices); a running
   update or environment step is finished first. During the first update (building and tracing
   the train step, minutes on a CPU for the full model) the run instead aborts at once without a
   checkpoint and exits with 128 + the signal number; the logdir stays valid and the same command
   starts over from the episodes on disk. SIGKILL loses what happened after the last checkpoint,
   except finished episodes, which are files on disk and reload.
7. Faults stop the run with one line (`faults.RunError`): a non-finite loss or gradient norm
   (float32; no checkpoint is written from those weights), `env_max_failures` environment
   failures in a row (a failing env is rebuilt and its unfinished episodes dropped, counted in
   the logged `env_failures`), a checkpoint that cannot be written (full disk: its partial files
   are removed, the earlier checkpoints stay valid).

The phases are the methods of `runner.Runner`; this module is the entry point.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from dreamerv2_tf.config import Config
from dreamerv2_tf.counters import Every, Mean  # pylint: disable=unused-import
from dreamerv2_tf.device import setup_device  # pylint: disable=unused-import
from dreamerv2_tf.rundir import check_logdir, save_config  # pylint: disable=unused-import
from dreamerv2_tf.runner import (RunResult, Runner, agent_policy,  # pylint: disable=unused-import
                                 format_param_table, stored_agent_steps)
from dreamerv2_tf.signals import StopRequest

__all__ = ['run', 'Runner', 'RunResult', 'StopRequest', 'Every', 'Mean', 'agent_policy',
           'format_param_table', 'stored_agent_steps', 'setup_device']


def run(config: Config, logdir: str | os.PathLike, stop: StopRequest | None = None,
        make_env: Callable[[], Any] | None = None) -> RunResult:
  """Trains the agent of `config` on `config.task` (or on `make_env()`'s environments),
  logging to and resuming from `logdir`.

  Args:
    config: the full config (`load_config`); step-like keys are in agent steps.
    logdir: run directory (episodes, checkpoints, metrics.jsonl, TensorBoard events).
    stop: a StopRequest; by default one is created and installed for SIGINT/SIGTERM.
    make_env: zero-argument factory of a gymnasium Env, or None to build `config.task`.

  Returns:
    RunResult (agent steps, frames, updates, last checkpoint, stopping signal or None).

  Raises:
    ConfigError / ValueError: a bad config value or unknown task (from the env factory), a
      logdir of another run or in use by another process.
    faults.RunError: non-finite values, failing environments, a checkpoint write failure.
  """
  return Runner(config, logdir, stop=stop, make_env=make_env).run()
