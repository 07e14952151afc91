"""Trains DreamerV2 (docs/reference.md §6, the training loop).

Usage:
  python train.py [--configs NAME ...] [--task TASK] [--logdir DIR] [--dotted.key=VALUE ...]
  python train.py --logdir DIR            (resumes the run in DIR with its config.yaml)
  python train.py --help                  (the overlays of configs.yaml and the main keys)

Without --configs, the task's suite picks its overlay (atari_* -> atari, dmc_* -> dmc_vision,
crafter_* -> crafter). Every step-like key is in agent steps; logged steps are frames. Every
failure a user can cause ends in one line on stderr and exit status 2. The command line lives in
`dreamerv2_tf/train_cli.py` (also the `dreamerv2-train` console script), which documents it.
"""

# No TensorFlow import here: the DMC environment's worker process is started with `spawn`, which
# re-imports this module, and TensorFlow must not load in that process.
from dreamerv2_tf.train_cli import run

if __name__ == '__main__':
  run()
