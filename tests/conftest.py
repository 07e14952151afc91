"""Shared pytest set-up: the `slow` marker and a helper to run this repo's command-line tools."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `pytest` (not `python -m pytest`) does not add the cwd
  sys.path.insert(0, str(REPO))


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'slow: end-to-end tests that take tens of seconds (deselect with -m "not slow")')


def tool_env() -> dict[str, str]:
  """Environment for subprocesses: quiet TensorFlow, this repo importable, no GPU needed."""
  env = dict(os.environ)
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
  env.setdefault('PYTHONUNBUFFERED', '1')
  return env


def run_tool(args: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
  """Runs `python <args>` from the repo root with this interpreter; captures text output."""
  return subprocess.run([sys.executable, *args], cwd=REPO, env=tool_env(), capture_output=True,
                        text=True, timeout=timeout, **kwargs)


@pytest.fixture
def repo() -> pathlib.Path:
  return REPO
