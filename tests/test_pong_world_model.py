"""scripts/pong_world_model.py at debug size (issue 17): prefill, world-model updates, the
open-loop GIF and the losses CSV, and a second session that resumes the first."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest

from conftest import run_tool
from dreamerv2_tf.config import load_config

DEBUG = load_config(['atari', 'debug'])


def read_gif(path) -> np.ndarray:
  import imageio.v2 as imageio
  return np.stack([frame for frame in imageio.get_reader(path)])


def read_rows(path) -> list[dict]:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
def test_debug_sessions_write_the_video_and_resume(tmp_path):
  args = ['scripts/pong_world_model.py', '--configs', 'atari', 'debug', '--budget_min', '0.2',
          '--prefill', '300', '--columns', '2', '--scale', '1', '--logdir', str(tmp_path / 'run'),
          '--out', str(tmp_path / 'openloop.gif'), '--print_every', '1000']
  first = run_tool(args, timeout=900)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  video = read_gif(tmp_path / 'openloop.gif')
  # dataset.length frames; rows truth | model | error of 64x64 frames, 2 sequences side by side.
  height, width = DEBUG.render_size
  assert video.shape[:3] == (DEBUG.dataset.length, 3 * height, 2 * width)
  rows = read_rows(tmp_path / 'openloop.csv')
  assert rows and [int(r['update']) for r in rows] == list(range(1, len(rows) + 1))
  assert all(3000 < float(r['image_loss']) < 4500 for r in rows)  # nats per 64x64 image
  assert 'image_loss: first' in first.stdout

  second = run_tool(args, timeout=900)
  assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
  assert f'Resuming {tmp_path / "run" / "world_model"}' in second.stdout
  assert f'after {len(rows)} updates' in second.stdout
  again = read_rows(tmp_path / 'openloop.csv')
  assert again[:len(rows)] == rows and len(again) > len(rows)
  assert [int(r['update']) for r in again] == list(range(1, len(again) + 1))
  assert float(again[-1]['seconds']) > float(rows[-1]['seconds'])
