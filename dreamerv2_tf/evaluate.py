"""Evaluates a trained run: `python -m dreamerv2_tf.evaluate --logdir DIR --episodes N
[--video OUT.mp4] [--output FILE]`.

Loads `<logdir>/config.yaml` and the latest checkpoint in `<logdir>/checkpoints` (or
`--checkpoint PREFIX`), plays N episodes with the actor's mode (docs/reference.md §6, §8: `policy(...,
mode='eval')`; the latent is sampled unless the run's `eval_state_mean` is true) in a fresh
evaluation environment, prints the mean and standard deviation (population, ddof 0) of the
returns, and then writes them atomically to `--output` (default `<logdir>/evaluation.json`):

  {"checkpoint": prefix, "task": str, "agent_step": int, "frames": int, "seed": int,
   "episodes": N, "returns": [float], "lengths": [int agent steps], "mean": float, "std": float}

With `--video OUT.mp4` the N episodes are also recorded, one after the other, as an H.264 MP4
(imageio with the ffmpeg binary of imageio-ffmpeg; `OUT.gif` writes a looping GIF with Pillow
instead, held in memory until written: keep it short): one video frame per transition the agent
observed, i.e. the reset observation and then one per agent step, so an episode of L agent
steps gives L + 1 frames (with Atari's action repeat 4 an agent step is 4 emulator frames). The
frames are the observations the agent sees (`image`, e.g. 64×64 grayscale for Atari, written as
RGB), enlarged `--video_scale` times (nearest neighbour), at `--fps` frames per second (default
15 = the ALE's 60 Hz / action repeat 4). The file is written under a temporary name beside
OUT.mp4 and renamed when complete.

Nothing is added to the run's replay. Errors (no config, a config.yaml that does not parse or
holds a bad value, no readable checkpoint, a checkpoint that does not fit the config, bad
arguments, a video path whose folder does not exist or is not writable, a video of an env without
an `image` observation) exit with status 2 and
a one-line message, before any episode is played. When the latest checkpoint cannot be read
(e.g. a truncated data file) the newest readable one is used, with a warning naming the bad one.

A result that cannot be saved (e.g. a read-only run directory) is printed first; then one line
`evaluate: error: cannot write ...` says why it was not saved and the exit status is 2, so that
scripts notice; `--output` elsewhere saves it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import pathlib
import sys
import tempfile
import types
from typing import Any

import numpy as np

# TensorFlow is imported inside `evaluate` only: DMC's worker process re-imports this module.
from dreamerv2_tf import cli
from dreamerv2_tf.config import Config, ConfigError, load_config, read_blocks
from dreamerv2_tf.validate import validate

VIDEO_SUFFIXES = ('.mp4', '.gif')


class SaveError(OSError):
  """The evaluation ran, but its result could not be written; the message says where and why."""


def load_run_config(logdir: str | os.PathLike) -> Config:
  """The config saved by the run in `<logdir>/config.yaml`, checked against today's keys and
  values (`validate.validate`).

  Raises:
    ConfigError: when the file is missing, does not parse, or holds keys/values this version
      does not accept.
  """
  path = pathlib.Path(logdir) / 'config.yaml'
  if not path.exists():
    raise ConfigError(f'{path} does not exist: is {logdir} a training run directory?')
  try:
    config = load_config([]).update(read_blocks(path))
    validate(config)
  except ConfigError as e:
    raise ConfigError(f'{path}: {e}' if str(path) not in str(e) else str(e)) from None
  return config


def _temporary_beside(path: pathlib.Path, suffix: str) -> str:
  """A new empty file in `path`'s folder, named `.tmp-*<suffix>`, with the usual (umask)
  permissions instead of mkstemp's 0600."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix='.tmp-', suffix=suffix)
  os.close(fd)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)
  return tmp


def write_json(path: str | os.PathLike, data: Any) -> None:
  """Writes JSON atomically (temporary file in the same folder, then os.replace).

  Raises:
    OSError: when the folder cannot be written (nothing is left behind).
  """
  path = pathlib.Path(path)
  tmp = _temporary_beside(path, '.json')
  try:
    with open(tmp, 'w') as f:
      json.dump(data, f, indent=2)
      f.write('\n')
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def check_writable(path: str | os.PathLike, what: str) -> pathlib.Path:
  """Fails before playing when `path` could not be created: its folder is missing or not
  writable, or `path` is a folder.

  Raises:
    ConfigError: naming the path and the reason.
  """
  path = pathlib.Path(path).expanduser()
  folder = path.parent
  if path.is_dir():
    raise ConfigError(f'{what} {path} is a folder; give a file name.')
  if not folder.is_dir():
    raise ConfigError(f'{what} {path}: the folder {folder} does not exist.')
  if not os.access(folder, os.W_OK | os.X_OK):
    raise ConfigError(f'{what} {path}: the folder {folder} is not writable.')
  return path


class VideoWriter:
  """Streams observation frames into an MP4 (imageio's ffmpeg plugin) or a GIF (Pillow), renamed
  into place by `close()`; `abort()` deletes the partial file.

  Args:
    path: the final `.mp4` or `.gif` path (its folder must exist).
    fps: frames per second of the video.
    scale: integer nearest-neighbour enlargement of every frame.
  """

  def __init__(self, path: pathlib.Path, fps: float, scale: int):
    import imageio.v2 as imageio  # pylint: disable=import-outside-toplevel
    self.path = path
    self.scale = int(scale)
    self.frames = 0
    self.tmp = _temporary_beside(path, path.suffix)
    if path.suffix.lower() == '.gif':
      self._writer = imageio.get_writer(self.tmp, format='GIF', mode='I',
                                        duration=1000.0 / fps, loop=0)
    else:
      # macro_block_size 2: H.264 with yuv420p needs even sizes; other sizes are left alone.
      self._writer = imageio.get_writer(self.tmp, format='FFMPEG', mode='I', fps=fps,
                                        codec='libx264', quality=8, macro_block_size=2)

  def add(self, image: np.ndarray) -> None:
    """Appends one uint8 [H, W, C] observation (C = 1 or 3)."""
    frame = np.asarray(image, np.uint8)
    if frame.ndim == 2:
      frame = frame[..., None]
    if frame.shape[-1] == 1:
      frame = np.repeat(frame, 3, axis=-1)
    if self.scale > 1:
      frame = np.repeat(np.repeat(frame, self.scale, axis=0), self.scale, axis=1)
    self._writer.append_data(frame)
    self.frames += 1

  def close(self) -> None:
    self._writer.close()
    os.replace(self.tmp, self.path)

  def abort(self) -> None:
    try:
      self._writer.close()
    except Exception:  # pylint: disable=broad-except
      pass
    pathlib.Path(self.tmp).unlink(missing_ok=True)


def find_checkpoint(logdir: pathlib.Path, checkpoint: str | None) -> str:
  """The checkpoint prefix to evaluate: `checkpoint` after checking it can be read, else the
  newest readable one in `<logdir>/checkpoints` (a warning on stderr names unreadable ones).

  Raises:
    ConfigError: no checkpoint, a missing one, or none that can be read.
  """
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  from dreamerv2_tf.checkpoint import CheckpointError, latest_readable, unreadable
  if checkpoint is None:
    try:
      found = latest_readable(logdir / 'checkpoints',
                              lambda line: print(line, file=sys.stderr, flush=True))
    except CheckpointError as e:
      raise ConfigError(str(e)) from None
    if found is None:
      raise ConfigError(f'No checkpoint in {logdir / "checkpoints"}.')
    return found
  if not tf.io.gfile.exists(checkpoint + '.index'):
    raise ConfigError(f'Checkpoint {checkpoint} does not exist (no {checkpoint}.index).')
  reason = unreadable(checkpoint)
  if reason:
    raise ConfigError(f'Checkpoint {checkpoint} cannot be read ({reason}).')
  return checkpoint


def restored_policy(config: Config, env: Any, checkpoint: str, config_path: pathlib.Path):
  """Builds the agent, restores `checkpoint` into it and returns (eval policy for the Driver,
  agent-step variable). The first policy call builds the remaining variables and checks that
  every checkpoint value found its variable.

  Raises:
    ConfigError: when the checkpoint does not fit the agent of `config` (at restore or at the
      first call).
  """
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  from dreamerv2_tf.agent import Agent
  from dreamerv2_tf.loop import agent_policy

  step = tf.Variable(0, dtype=tf.int64, trainable=False, name='agent_step')
  agent = Agent(config, env.obs_space, env.act_space, step)
  fit_errors = (AssertionError, ValueError, IndexError, tf.errors.OpError)

  def does_not_fit(error):
    first_line = str(error).splitlines()[0] if str(error) else ''
    return ConfigError(
        f'Checkpoint {checkpoint} does not fit the agent of {config_path} '
        f'({type(error).__name__}: {first_line}); was the config changed after training?')

  # Only the agent and the step; variables built by the first policy call are restored then.
  try:
    status = tf.train.Checkpoint(step=step, agent=agent).restore(checkpoint)
  except fit_errors as e:
    raise does_not_fit(e) from None
  status.expect_partial()
  policy = agent_policy(agent, 'eval')
  checked = []

  def checked_policy(obs, state):
    if checked:
      return policy(obs, state)
    try:  # The first call builds the remaining variables, which restores them (deferred).
      out = policy(obs, state)
      status.assert_existing_objects_matched()
    except fit_errors as e:
      raise does_not_fit(e) from None
    checked.append(True)
    return out

  return checked_policy, step


def play(env: Any, policy, episodes: int, video: VideoWriter | None) -> tuple[list, list]:
  """Plays `episodes` episodes with `policy` in the 1-worker `env`; returns (returns, lengths in
  agent steps). Every transition's image goes to `video` when given."""
  from dreamerv2_tf.driver import Driver  # pylint: disable=import-outside-toplevel
  returns, lengths = [], []

  def on_episode(stats, worker):
    del worker
    returns.append(float(stats['return']))
    lengths.append(int(stats['length']))
    print(f'Episode {len(returns)}/{episodes}: return {returns[-1]:g}, '
          f'length {lengths[-1]} agent steps.', flush=True)

  on_step = [] if video is None else [lambda tran, worker: video.add(tran['image'])]
  Driver(env, on_step=on_step, on_episode=[on_episode])(policy, episodes=episodes)
  return returns[:episodes], lengths[:episodes]


def evaluate(logdir: str | os.PathLike, episodes: int, checkpoint: str | None = None,
             seed: int | None = None, video: str | os.PathLike | None = None,
             fps: float = 15.0, video_scale: int = 1,
             output: str | os.PathLike | None = None, env_fn=None) -> dict:
  """Plays `episodes` evaluation episodes with the checkpointed agent; prints and returns the
  result dict of the module docstring, then writes it to `output` (default
  `<logdir>/evaluation.json`); records them to the MP4 (or GIF) `video` when given. `env_fn`: a
  zero-argument callable returning the gymnasium Env of a run of the Python API (None builds
  the run's task).

  Raises:
    ConfigError: bad `episodes`/`fps`/`video_scale`/`video`, a missing or bad config, no
      readable checkpoint, or a checkpoint that does not fit the config (all before playing).
    SaveError: the result (already printed and returned in `error.result`) could not be written.
  """
  logdir = pathlib.Path(logdir)
  video_path = _check_arguments(episodes, video, fps, video_scale)
  output = pathlib.Path(output) if output is not None else logdir / 'evaluation.json'
  config = load_run_config(logdir)  # fails fast, before TensorFlow loads
  checkpoint = find_checkpoint(logdir, checkpoint)
  seed = config.seed if seed is None else seed
  result = _play_checkpoint(config, logdir, checkpoint, episodes, seed, video_path, fps,
                            video_scale, env_fn)
  print(f'Return over {result["episodes"]} episodes: mean {result["mean"]:.3f}, '
        f'std {result["std"]:.3f} (frame {result["frames"]:,}).', flush=True)
  try:
    write_json(output, result)
  except OSError as e:
    error = SaveError(f'cannot write {output} ({e.strerror or e}); the result above was not '
                      'saved (use --output FILE to save it elsewhere).')
    error.result = result
    raise error from None
  print(f'Written to {output}.', flush=True)
  return result


def _check_arguments(episodes: int, video, fps: float, video_scale: int) -> pathlib.Path | None:
  """Checks the command-line values; returns the video path (or None).

  Raises:
    ConfigError: naming the bad value and what is allowed.
  """
  if episodes < 1:
    raise ConfigError(f'--episodes must be at least 1, got {episodes}.')
  if not fps > 0:
    raise ConfigError(f'--fps must be positive, got {fps}.')
  if video_scale < 1:
    raise ConfigError(f'--video_scale must be at least 1, got {video_scale}.')
  if video is None:
    return None
  path = check_writable(video, '--video')
  needs = 'PIL' if path.suffix.lower() == '.gif' else 'imageio_ffmpeg'
  for module in ('imageio', needs):
    if importlib.util.find_spec(module) is None:
      raise ConfigError(f'--video needs the Python package {module!r}, which is not installed '
                        "(pip install 'dreamerv2_tf[video]' or -r requirements.txt).")
  if path.suffix.lower() not in VIDEO_SUFFIXES:
    raise ConfigError(f'--video {path}: the file name must end in '
                      f'{" or ".join(VIDEO_SUFFIXES)}, got {path.suffix or "no extension"!r}.')
  return path


def _play_checkpoint(config, logdir, checkpoint, episodes, seed, video_path, fps,
                     video_scale, env_fn=None) -> dict:
  """Restores `checkpoint`, plays the episodes (recording them when `video_path`) and returns
  the result dict."""
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  from dreamerv2_tf import envs
  from dreamerv2_tf.loop import setup_device
  device, precision = setup_device(config.precision)
  tf.config.run_functions_eagerly(not config.jit)
  tf.random.set_seed(seed)
  np.random.seed(seed % 2**32)
  env = envs.make_vec_env(config.task, config, 'eval', 1, seed, env_fn=env_fn)
  if video_path is not None and 'image' not in env.obs_space:
    env.close()
    raise ConfigError(f'--video needs an image observation; {config.task} has '
                      f'{sorted(env.obs_space)}.')
  video = None
  try:
    policy, step = restored_policy(config, env, checkpoint, logdir / 'config.yaml')
    print(f'Evaluating {checkpoint} on {config.task} ({device}, {precision}).', flush=True)
    video = VideoWriter(video_path, fps, video_scale) if video_path else None
    returns, lengths = play(env, policy, episodes, video)
    if video is not None:
      video.close()
      print(f'Video: {video_path} ({video.frames} frames, {fps:g} fps).', flush=True)
      video = None
  finally:
    if video is not None:
      video.abort()
    env.close()
  agent_step = int(step.numpy())
  return {
      'checkpoint': str(checkpoint), 'task': config.task, 'agent_step': agent_step,
      'frames': agent_step * int(config.action_repeat), 'seed': int(seed),
      'episodes': len(returns), 'returns': returns, 'lengths': lengths,
      'mean': float(np.mean(returns)), 'std': float(np.std(returns)),
  }


def main(argv: list[str] | None = None) -> int:
  """Command line; returns the exit status (0 done, 2 bad input or result not saved)."""
  parser = cli.ArgumentParser(
      prog='python -m dreamerv2_tf.evaluate',
      description='Play evaluation episodes with the latest checkpoint of a training run.')
  parser.add_argument('--logdir', required=True, help='run directory written by train.py')
  parser.add_argument('--episodes', type=int, default=10, help='episodes to play (default 10)')
  parser.add_argument('--checkpoint', default=None,
                      help='checkpoint prefix (default: the latest in <logdir>/checkpoints)')
  parser.add_argument('--seed', type=int, default=None,
                      help="environment and sampling seed (default: the run's seed)")
  parser.add_argument('--output', default=None, metavar='FILE',
                      help='where to write the result JSON (default: <logdir>/evaluation.json)')
  parser.add_argument('--video', default=None, metavar='OUT.mp4',
                      help='record the episodes to this .mp4 (or .gif), one frame per observation')
  parser.add_argument('--fps', type=float, default=15.0,
                      help='frames per second of --video (default 15: Atari 60 Hz / repeat 4)')
  parser.add_argument('--video_scale', type=int, default=1,
                      help='enlarge --video frames this many times (default 1: 64x64 as seen)')
  args = parser.parse_args(argv)
  try:
    evaluate(args.logdir, args.episodes, args.checkpoint, args.seed, args.video, args.fps,
             args.video_scale, args.output)
  except (ConfigError, SaveError) as e:
    # TensorFlow warns at exit about the objects of a failed restore; the error line says it all.
    logging.getLogger('tensorflow').setLevel(logging.ERROR)
    print(f'evaluate: error: {" ".join(str(e).split())}', file=sys.stderr, flush=True)
    return 2
  return 0



class _CallableModule(types.ModuleType):
  """This module, callable as `dreamerv2_tf.evaluate(logdir, env=..., ...)` = `api.evaluate`:
  importing a submodule sets the package attribute of its name to the module, so the module is
  made callable rather than shadowed by the function."""

  def __call__(self, *args, **kwargs):
    from dreamerv2_tf import api  # pylint: disable=import-outside-toplevel
    return api.evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == '__main__':
  sys.exit(main())
