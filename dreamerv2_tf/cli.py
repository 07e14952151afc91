"""Console scripts of the installed package (pyproject.toml `[project.scripts]`).

  dreamerv2-train            = python train.py                      (absl flags, see train.py)
  dreamerv2-evaluate         = python -m dreamerv2_tf.evaluate
  dreamerv2-export           = python -m dreamerv2_tf.export
  dreamerv2-parity           = python -m dreamerv2_tf.parity
  dreamerv2-serve            = python -m dreamerv2_tf.serving
  dreamerv2-import-authors   = python -m dreamerv2_tf.import_authors

Each function imports its tool only when called, so `dreamerv2-parity --help` does not load
TensorFlow, and exits with the tool's status.
"""

from __future__ import annotations

import argparse
import sys


def train() -> None:
  """`dreamerv2-train`: the command line of train.py (absl flags; exits 2 on a bad config)."""
  from dreamerv2_tf import train_cli  # pylint: disable=import-outside-toplevel
  train_cli.run()


def evaluate() -> None:
  """`dreamerv2-evaluate`: evaluates a run's checkpoint (dreamerv2_tf.evaluate)."""
  from dreamerv2_tf import evaluate as tool  # pylint: disable=import-outside-toplevel
  sys.exit(tool.main())


def export() -> None:
  """`dreamerv2-export`: exports a policy SavedModel for TF Serving (dreamerv2_tf.export)."""
  from dreamerv2_tf import export as tool  # pylint: disable=import-outside-toplevel
  sys.exit(tool.main())


def parity() -> None:
  """`dreamerv2-parity`: published curves, aggregates and comparisons (dreamerv2_tf.parity)."""
  from dreamerv2_tf.parity import __main__ as tool  # pylint: disable=import-outside-toplevel
  sys.exit(tool.main())


def serve() -> None:
  """`dreamerv2-serve`: plays episodes with a policy served by TF Serving (dreamerv2_tf.serving)."""
  from dreamerv2_tf import serving as tool  # pylint: disable=import-outside-toplevel
  sys.exit(tool.main())


def import_authors() -> None:
  """`dreamerv2-import-authors`: converts the authors' checkpoints (dreamerv2_tf.import_authors)."""
  from dreamerv2_tf import import_authors as tool  # pylint: disable=import-outside-toplevel
  sys.exit(tool.main())


class ArgumentParser(argparse.ArgumentParser):
  """argparse.ArgumentParser whose errors are the project's one line, `<prog>: error: <message>`,
  with exit status 2 (argparse's own prints the whole usage block first). `--help` is unchanged.
  Sub-command parsers made by `add_subparsers` are of this class too."""

  def error(self, message: str):
    self.exit(2, f'{self.prog}: error: {message} (--help lists the options)\n')
