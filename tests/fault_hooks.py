"""Runs `train.py ARGS` with pauses at chosen moments, so a test can SIGKILL it there.

    python tests/fault_hooks.py train.py --configs atari debug ...   (env FAULT_HOOKS=a,b)

Hooks (each prints `HOOK <name>` and sleeps 60 s, once per process):
- `checkpoint`: inside a checkpoint save, after the data and index files are written and
  before the state file names the new checkpoint;
- `episode`: inside an episode save, after the temporary file is written and before it is
  renamed to its final name;
- `eval`: in the middle of the second evaluation's episode.
A test-only tool: nothing in the package imports it.
"""

from __future__ import annotations

import os
import runpy
import sys
import time

HOOKS = set(filter(None, os.environ.get('FAULT_HOOKS', '').split(',')))
_fired: set[str] = set()


def pause(name: str) -> None:
  if name in HOOKS and name not in _fired:
    _fired.add(name)
    print(f'HOOK {name}', flush=True)
    time.sleep(60)


def install() -> None:
  if 'checkpoint' in HOOKS:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    real_write = tf.train.Checkpoint._write  # pylint: disable=protected-access

    def write(self, prefix, options=None):
      callbacks = list(options.experimental_write_callbacks or []) if options else []
      if options is not None:
        options.experimental_write_callbacks = None
      path = real_write(self, prefix, options=options)
      pause('checkpoint')
      for callback in callbacks:
        callback(path)
      return path

    tf.train.Checkpoint._write = write  # pylint: disable=protected-access
  if 'episode' in HOOKS:
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
      if str(dst).endswith('.npz') and '_episodes' in str(dst):
        pause('episode')
      return real_replace(src, dst, *args, **kwargs)

    os.replace = replace
  if 'eval' in HOOKS:
    from dreamerv2_tf import runner  # pylint: disable=import-outside-toplevel
    real_step = runner.Runner.on_eval_step
    counts = {'evals': 0, 'steps': 0}

    def on_eval_step(self, transition, worker):
      real_step(self, transition, worker)
      if self.phase == 'train':
        counts['steps'] += 1
        if counts['steps'] == 200 + 50:  # 50 steps into the second evaluation (debug episodes)
          pause('eval')

    runner.Runner.on_eval_step = on_eval_step


if __name__ == '__main__':
  install()
  sys.argv = sys.argv[1:]
  runpy.run_path(sys.argv[0], run_name='__main__')
