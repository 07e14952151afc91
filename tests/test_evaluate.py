"""`python -m dreamerv2_tf.evaluate`: the episode video and saving the result (issues 11, 17).

The slow tests train one `--configs atari debug` run on real Pong (module fixture, about a minute
on 2 cores) and evaluate it in subprocesses, as a user would.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import time

import numpy as np
import pytest

from conftest import run_tool
from dreamerv2_tf.config import load_config

DEBUG = load_config(['atari', 'debug'])


def evaluate_args(logdir, *extra):
  return ['-m', 'dreamerv2_tf.evaluate', '--logdir', str(logdir), *extra]


def read_video(path) -> list[np.ndarray]:
  """Every frame of a video file (imageio's ffmpeg reader; its len() is inf, so no list())."""
  import imageio.v2 as imageio
  with imageio.get_reader(path) as reader:
    return [frame for frame in reader]


def assert_one_line_error(result, *fragments):
  assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
  assert 'Traceback' not in result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith('evaluate: error:')]
  assert len(lines) == 1, result.stderr[-2000:]
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  return lines[0]


# ----------------------------------------------------------------------------- fast

@pytest.mark.parametrize('video, message', [
    ('missing/out.mp4', 'does not exist'),
    ('out.avi', "must end in .mp4 or .gif, got '.avi'"),
    ('.', 'is a folder'),
])
def test_bad_video_path_fails_before_anything_runs(tmp_path, video, message):
  # No run in tmp_path at all: the video path is checked first, before the config.
  result = run_tool(evaluate_args(tmp_path, '--video', str(tmp_path / video)))
  assert_one_line_error(result, '--video', message)
  assert list(tmp_path.iterdir()) == []


def test_bad_video_scale_and_fps(tmp_path):
  assert_one_line_error(run_tool(evaluate_args(tmp_path, '--video_scale', '0')),
                        '--video_scale must be at least 1, got 0')
  assert_one_line_error(run_tool(evaluate_args(tmp_path, '--fps', '-3')),
                        '--fps must be positive, got -3')


def test_write_json_leaves_nothing_when_the_target_cannot_be_replaced(tmp_path):
  from dreamerv2_tf.evaluate import write_json
  (tmp_path / 'evaluation.json').mkdir()  # os.replace of a file onto a folder fails, even as root
  with pytest.raises(OSError):
    write_json(tmp_path / 'evaluation.json', {'mean': 1.0})
  assert [p.name for p in tmp_path.iterdir()] == ['evaluation.json']


@pytest.mark.parametrize('name', ['v.mp4', 'v.gif'])
def test_video_writer_frames_and_scale(tmp_path, name):
  from dreamerv2_tf.evaluate import VideoWriter
  writer = VideoWriter(tmp_path / name, fps=15, scale=2)
  rng = np.random.default_rng(0)
  frames = [np.full((64, 64, 1), 10 * i, np.uint8) for i in range(7)]
  frames[3] = rng.integers(0, 255, (64, 64, 1), dtype=np.uint8)
  for frame in frames:
    writer.add(frame)
  assert not (tmp_path / name).exists()  # written under a temporary name until closed
  writer.close()
  assert [p.name for p in tmp_path.iterdir()] == [name]
  back = [frame[..., :3] for frame in read_video(tmp_path / name)]  # GIFs may read as RGBA
  assert len(back) == 7 and back[0].shape == (128, 128, 3)
  # Flat grey frames come back grey at their level (H.264 is lossy, but not on flat frames).
  for i in (0, 2, 6):
    assert abs(float(back[i].mean()) - 10 * i) < 3, (i, back[i].mean())
  assert float(back[3].std()) > 20  # the noise frame is not smoothed away


# ----------------------------------------------------------------------------- slow

@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
  logdir = tmp_path_factory.mktemp('evaluate') / 'run'
  start = time.time()
  result = run_tool(['train.py', '--configs', 'atari', 'debug', '--logdir', str(logdir)],
                    timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  print(f'debug run: {time.time() - start:.0f} s')
  return logdir


@pytest.mark.slow
def test_video_reads_back_with_one_frame_per_observation(trained_run, tmp_path):
  video = tmp_path / 'episodes.mp4'
  result = run_tool(evaluate_args(trained_run, '--episodes', '2', '--video', str(video),
                                  '--video_scale', '2', '--output', str(tmp_path / 'e.json')))
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  data = json.loads((tmp_path / 'e.json').read_text())
  assert data['lengths'] == [DEBUG.time_limit] * 2
  frames = read_video(video)
  # Each episode: its reset observation, then one per agent step.
  assert len(frames) == sum(data['lengths']) + 2 == 402
  height, width = DEBUG.render_size
  assert frames[0].shape == (2 * height, 2 * width, 3)
  stack = np.stack(frames).astype(np.float32)
  # Grayscale observations as RGB: the channels agree (up to H.264's chroma rounding).
  assert np.abs(stack[..., 0] - stack[..., 1]).mean() < 3
  # Pong moves: between most pairs of frames some pixels (paddles, ball) change strongly.
  moved = (np.abs(np.diff(stack[..., 0], axis=0)) > 40).any(axis=(1, 2))
  assert moved.mean() > 0.5, moved.mean()
  assert f'Video: {video} (402 frames, 15 fps).' in result.stdout
  assert sorted(p.name for p in tmp_path.iterdir()) == ['e.json', 'episodes.mp4']


@pytest.mark.slow
def test_unwritable_result_is_printed_then_one_line_and_status_2(trained_run, tmp_path):
  run = tmp_path / 'run'
  shutil.copytree(trained_run, run)
  (run / 'evaluation.json').unlink(missing_ok=True)
  (run / 'evaluation.json').mkdir()  # the result cannot be written there, even as root
  result = run_tool(evaluate_args(run, '--episodes', '1'))
  line = assert_one_line_error(result, f'cannot write {run / "evaluation.json"}',
                               '--output FILE')
  assert 'Return over 1 episodes: mean' in result.stdout  # printed before the failed write
  assert 'not saved' in line
  assert not [p for p in run.iterdir() if p.name.startswith('.tmp-')]


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_read_only_run_directory(trained_run, tmp_path):
  run = tmp_path / 'run'
  shutil.copytree(trained_run, run)
  (run / 'evaluation.json').unlink(missing_ok=True)
  os.chmod(run, 0o555)
  try:
    result = run_tool(evaluate_args(run, '--episodes', '1'))
    assert_one_line_error(result, 'cannot write', 'Permission denied')
    assert 'Return over 1 episodes' in result.stdout
  finally:
    os.chmod(run, 0o755)
