"""Exports a trained policy as a SavedModel for TensorFlow Serving (docs/reference.md §8; issue 7).

    python -m dreamerv2_tf.export --logdir DIR --out EXPORT_DIR [--version N]

Loads `<logdir>/config.yaml` and, from the latest checkpoint in `<logdir>/checkpoints`, the
agent step and the variables of the layers it exports (not the optimisers, so a run trained in
mixed float16 exports as well), and writes `EXPORT_DIR/<N>/` (N: the next free integer unless
given), the layout TF Serving watches (`--model_base_path=EXPORT_DIR`). Only what acting needs
is exported: the encoder, the RSSM and the actor, as the raw float32 variables of those Keras
layers held by a plain `tf.Module` (`PolicyModule`); a plain `tf.saved_model.save` of Keras 3
layers fails TF1's session loader, the loader TF Serving uses (../shared/STACK.md). The serving
functions call the agent's own layers and distributions while tracing, so they compute what the
agent computes; they are ordinary (non-XLA) TF graphs and always compute in float32, whatever
precision trained them.

Signatures (every input and output a flat named tensor; B is any batch size; D = rssm.deter,
S = rssm.stoch, K = rssm.discrete, A = action size, H×W×C the image shape of the task; stoch
is [B, S, K] for categorical latents and [B, S] for Gaussian ones, `rssm.discrete: 0`):

  initial_state   batch_size int32 []                → deter float32 [B, D],
                                                       stoch float32 [B, S, K] or [B, S],
                                                       prev_action float32 [B, A]  (zeros)
  serving_default image uint8 [B, H, W, C], is_first bool [B], deter, stoch, prev_action
                                                     → action float32 [B, A], action_index int64
                                                       [B] (discrete tasks only), deter, stoch,
                                                       prev_action (the next state)
  sample          the same inputs and seed int64 [2] → the same outputs

`serving_default` is deterministic: the posterior's mode for the latent (the authors'
`eval_state_mean: True`) and the actor's mode for the action. `sample` draws the latent and the
action with stateless random ops seeded by `seed` (same request, same answer). Where `is_first`
is True the state and previous action are zeroed first (as `RSSM.obs_step` does), so the state
of a new episode may be anything; the image is preprocessed inside (x / 255 − 0.5).

Also written: `assets.extra/tf_serving_warmup_requests` (a TFRecord of `PredictionLog` protos,
one Predict request per signature at batch 1, replayed by TF Serving when it loads the version)
and `assets.extra/dreamerv2_policy.json` (task, shapes, agent step, source checkpoint).

The version folder is written under a temporary name inside EXPORT_DIR and renamed into place
when complete, so a server watching EXPORT_DIR never sees a partial version. Errors (no config
or checkpoint in the logdir, an EXPORT_DIR that exists and is not an export folder, a version
that exists, an EXPORT_DIR that cannot be created or written, a config.yaml that does not parse,
no readable checkpoint) are reported before anything is written; the command then exits with
status 2. A newer checkpoint that cannot be read is skipped with a warning; a checkpoint saved
before the first update (a run stopped during prefill) exports with a warning that the policy is
untrained.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import sys
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from dreamerv2_tf import cli
from dreamerv2_tf import envs
from dreamerv2_tf.agent import Agent
from dreamerv2_tf.checkpoint import CheckpointError, latest_readable
from dreamerv2_tf.config import ConfigError
from dreamerv2_tf.evaluate import load_run_config
from dreamerv2_tf.world_model import preprocess_image

SERVING_DEFAULT = 'serving_default'
SAMPLE = 'sample'
INITIAL_STATE = 'initial_state'
SIGNATURES = (INITIAL_STATE, SERVING_DEFAULT, SAMPLE)
STATE_KEYS = ('deter', 'stoch', 'prev_action')
WARMUP_FILE = 'tf_serving_warmup_requests'
METADATA_FILE = 'dreamerv2_policy.json'
TEMP_PREFIX = '.export-tmp-'


class ExportError(ValueError):
  """A logdir or export folder that cannot be exported from or to; nothing was written."""


def _raw_variable(variable):
  """The tf.Variable behind a Keras 3 variable (or the variable itself)."""
  raw = getattr(variable, 'value', variable)
  if not isinstance(raw, tf.Variable):
    raise TypeError(f'Expected a Keras or TF variable, got {type(variable).__name__} '
                    f'({getattr(variable, "path", variable)!r}).')
  return raw


def build_policy_module(agent, image_shape) -> Any:
  """The `tf.Module` that the SavedModel holds: the acting part of `agent` (docs/reference.md §8).

  Args:
    agent: a built `dreamerv2_tf.agent.Agent` computing in float32 (precision 32, or a CPU).
    image_shape: (H, W, C) of the task's uint8 observations.
  Returns:
    A `PolicyModule` with tf.functions `initial_state(batch_size)`, `policy(image, is_first,
    deter, stoch, prev_action)` (serving_default) and `sample(..., seed)`, and the attribute
    `policy_variables` (the raw variables of the encoder, RSSM and actor, in that order; the
    same objects as the agent's, not copies). Shapes and dtypes: module docstring.
  Raises:
    ValueError: when the agent computes in another dtype than float32.
  """
  wm, ac = agent.wm, agent.ac
  encoder, rssm, actor = wm.encoder, wm.rssm, ac.actor
  for layer in (encoder, rssm, actor):
    if layer.compute_dtype != 'float32':
      raise ValueError(f'The {layer.name} computes in {layer.compute_dtype}; export needs a '
                       'float32 agent (build it with precision 32).')
  discrete = bool(agent.discrete)
  height, width, channels = (int(s) for s in image_shape)
  if tuple(encoder.image_shape) != (height, width, channels):
    raise ValueError(f'image_shape {tuple(image_shape)} differs from the encoder\'s '
                     f'{tuple(encoder.image_shape)}.')
  deter_size, stoch_shape = rssm.deter, list(rssm.stoch_shape)
  action_size = int(agent.action_size)

  def step(image, is_first, deter, stoch, prev_action, seed=None):
    batch = tf.shape(image)[0]
    checks = [
        tf.debugging.assert_equal(tf.shape(tensor)[0], batch, message=(
            f'{name} must have the batch size of image (its first dimension)'))
        for name, tensor in (('is_first', is_first), ('deter', deter), ('stoch', stoch),
                             ('prev_action', prev_action))]
    with tf.control_dependencies(checks):  # every later op waits for the checks
      image, is_first, deter, stoch, prev_action = (
          tf.identity(t) for t in (image, is_first, deter, stoch, prev_action))
    embed = encoder(preprocess_image(image, tf.float32))
    latent = {'deter': deter, 'stoch': stoch}
    post, _ = rssm.obs_step(latent, prev_action, embed, is_first, sample=False,
                            with_prior=False)
    if seed is None:
      new_stoch = post['stoch']
    else:
      # Two independent int32 seed pairs (TFP's stateless seed dtype) from the int64 seed.
      seeds = tf.random.stateless_uniform([2, 2], seed=seed, minval=None, maxval=None,
                                          dtype=tf.int32)
      new_stoch = rssm.get_dist(post).sample(seed=seeds[0])
    feat = rssm.get_feat({'deter': post['deter'], 'stoch': new_stoch})
    dist = ac.policy(feat)
    action = tf.cast(dist.mode() if seed is None else dist.sample(seed=seeds[1]), tf.float32)
    outputs = {'action': action}
    if discrete:
      outputs['action_index'] = tf.argmax(action, -1, output_type=tf.int64)
    outputs.update(deter=tf.cast(post['deter'], tf.float32),
                   stoch=tf.cast(new_stoch, tf.float32), prev_action=action)
    return outputs

  state_specs = [
      tf.TensorSpec([None, height, width, channels], tf.uint8, name='image'),
      tf.TensorSpec([None], tf.bool, name='is_first'),
      tf.TensorSpec([None, deter_size], tf.float32, name='deter'),
      tf.TensorSpec([None, *stoch_shape], tf.float32, name='stoch'),
      tf.TensorSpec([None, action_size], tf.float32, name='prev_action'),
  ]

  def policy(image, is_first, deter, stoch, prev_action):
    return step(image, is_first, deter, stoch, prev_action)

  def sample(image, is_first, deter, stoch, prev_action, seed):
    return step(image, is_first, deter, stoch, prev_action, seed)

  def initial_state(batch_size):
    checks = [tf.debugging.assert_non_negative(batch_size, message='batch_size must be >= 0')]
    with tf.control_dependencies(checks):
      batch = tf.identity(batch_size)
    return {
        'deter': tf.zeros(tf.stack([batch, deter_size]), tf.float32),
        'stoch': tf.zeros(tf.stack([batch, *stoch_shape]), tf.float32),
        'prev_action': tf.zeros(tf.stack([batch, action_size]), tf.float32),
    }

  module = PolicyModule(
      [_raw_variable(v) for layer in (encoder, rssm, actor) for v in layer.weights])
  # The functions close over the Keras layers; only the raw variables they read are tracked.
  module.initial_state = tf.function(
      initial_state, input_signature=[tf.TensorSpec([], tf.int32, name='batch_size')])
  module.policy = tf.function(policy, input_signature=state_specs)
  module.sample = tf.function(
      sample, input_signature=state_specs + [tf.TensorSpec([2], tf.int64, name='seed')])
  module.info = {'image_shape': [height, width, channels], 'action_size': action_size,
                 'discrete': discrete, 'deter': deter_size, 'stoch': rssm.stoch,
                 'classes': rssm.classes, 'stoch_shape': stoch_shape}
  return module


class PolicyModule(tf.Module):
  """What the SavedModel's object graph holds: the policy's raw `tf.Variable`s, and the
  tf.functions that `build_policy_module` attaches. No Keras object is tracked."""

  def __init__(self, variables):
    super().__init__(name='dreamerv2_policy')
    self.policy_variables = list(variables)


def signature_functions(module) -> dict:
  """{signature name: concrete function} for `tf.saved_model.save`."""
  return {
      INITIAL_STATE: module.initial_state.get_concrete_function(),
      SERVING_DEFAULT: module.policy.get_concrete_function(),
      SAMPLE: module.sample.get_concrete_function(),
  }


def warmup_requests(info: Mapping[str, Any]) -> list:
  """One `PredictionLog` per signature at batch 1 (zero image, is_first True, zero state).

  TF Serving replays `assets.extra/tf_serving_warmup_requests` when it loads a version, so the
  first client request does not pay for graph optimisation.
  """
  height, width, channels = info['image_shape']
  step_inputs = {
      'image': np.zeros([1, height, width, channels], np.uint8),
      'is_first': np.ones([1], bool),
      'deter': np.zeros([1, info['deter']], np.float32),
      'stoch': np.zeros([1, *info['stoch_shape']], np.float32),
      'prev_action': np.zeros([1, info['action_size']], np.float32),
  }
  inputs = {
      INITIAL_STATE: {'batch_size': np.array(1, np.int32)},
      SERVING_DEFAULT: step_inputs,
      SAMPLE: dict(step_inputs, seed=np.zeros([2], np.int64)),
  }
  try:
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConfigError('writing the warm-up requests needs the package tensorflow-serving-api '
                      "(pip install 'dreamerv2_tf[serving]' or -r requirements.txt).") from e
  logs = []
  for name in SIGNATURES:
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = name
    for key, value in inputs[name].items():
      request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    logs.append(prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)))
  return logs


def is_export_folder(path: pathlib.Path) -> bool:
  """True for a directory that holds only version folders (`<int>/saved_model.pb`) and
  leftovers of interrupted exports (`.export-tmp-*`); an empty directory counts."""
  if not path.is_dir():
    return False
  for entry in path.iterdir():
    if entry.name.startswith(TEMP_PREFIX) and entry.is_dir():
      continue
    if not (entry.is_dir() and entry.name.isdigit() and (entry / 'saved_model.pb').is_file()):
      return False
  return True


def existing_versions(path: pathlib.Path) -> list[int]:
  """Sorted version numbers of an export folder (none when it does not exist)."""
  if not path.is_dir():
    return []
  return sorted(int(e.name) for e in path.iterdir() if e.is_dir() and e.name.isdigit())


def check_destination(out: pathlib.Path, version: int | None) -> int:
  """Validates the export folder and returns the version to write.

  Raises:
    ExportError: `out` exists and is not an export folder, `out` cannot be created (a file on
      its path, no write permission) or written, `version` is not positive, or the version
      folder exists.
  """
  if out.exists() and not is_export_folder(out):
    kind = 'a directory' if out.is_dir() else 'a file'
    entries = ''
    if out.is_dir():
      names = sorted(e.name for e in out.iterdir())
      entries = f' (holds {", ".join(names[:5])}{", ..." if len(names) > 5 else ""})'
    raise ExportError(
        f'--out {out} exists and is {kind} that is not an export folder{entries}. An export '
        'folder holds only numbered version folders (1/, 2/, ... each with saved_model.pb); '
        'choose a new or empty path.')
  if out.is_dir():
    if not os.access(out, os.W_OK | os.X_OK):
      raise ExportError(f'--out {out} is not writable (no write permission); choose another '
                        'path.')
  else:
    ancestor = out.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
      ancestor = ancestor.parent
    if not ancestor.is_dir():
      raise ExportError(f'--out {out} cannot be created: {ancestor} is a file, not a folder.')
    if not os.access(ancestor, os.W_OK | os.X_OK):
      raise ExportError(f'--out {out} cannot be created: no write permission in {ancestor}.')
  versions = existing_versions(out)
  if version is None:
    return (versions[-1] + 1) if versions else 1
  if version < 1:
    raise ExportError(f'--version is {version}; it must be a positive integer.')
  if (out / str(version)).exists():
    raise ExportError(f'Version {version} already exists in {out} (versions there: '
                      f'{", ".join(map(str, versions))}); choose another --version or omit it.')
  return version


def find_checkpoint(logdir: pathlib.Path) -> str:
  """The latest checkpoint prefix in `<logdir>/checkpoints`.

  Raises:
    ExportError: when the logdir, its config.yaml or a checkpoint is missing.
  """
  if not logdir.is_dir():
    raise ExportError(f'--logdir {logdir} is not a directory.')
  if not (logdir / 'config.yaml').is_file():
    raise ExportError(f'{logdir / "config.yaml"} does not exist: is {logdir} a training run '
                      'directory?')
  directory = logdir / 'checkpoints'
  try:
    prefix = latest_readable(directory, lambda line: print(
        f'export: {line[0].lower()}{line[1:]}', file=sys.stderr, flush=True)) \
        if directory.is_dir() else None
  except CheckpointError as e:
    raise ExportError(str(e)) from None
  if not prefix:
    raise ExportError(f'No checkpoint in {directory}: train first (the training loop writes '
                      'one at every evaluation and when it stops).')
  return prefix


def _restore_agent(logdir: pathlib.Path, checkpoint: str):
  """(config, agent, env spaces, agent step) restored from the run in `logdir`, in float32."""
  try:
    config = load_run_config(logdir).update({'precision': 32})
  except ConfigError as e:
    path = logdir / 'config.yaml'
    raise ExportError(str(e) if str(path) in str(e) else f'Cannot read {path}: {e}') from None
  env = envs.make_env(config.task, config, 'eval', config.seed)
  try:
    obs_space, act_space = env.obs_space, env.act_space
  finally:
    env.close()
  step = tf.Variable(0, dtype=tf.int64, trainable=False, name='agent_step')
  agent = Agent(config, obs_space, act_space, step)
  # Only the step and the exported layers are restored, by the paths the training loop's
  # checkpoint gives them (`Checkpointer(step=..., agent=...)`): the optimisers of a float32
  # agent do not match those of a mixed-float16 run (loss scaling), and export needs none of
  # them. `assert_existing_objects_matched` fails unless every exported variable was found.
  ckpt = tf.train.Checkpoint
  partial = ckpt(step=step, agent=ckpt(
      wm=ckpt(encoder=agent.wm.encoder, rssm=agent.wm.rssm), ac=ckpt(actor=agent.ac.actor)))
  try:
    partial.restore(checkpoint).expect_partial().assert_existing_objects_matched()
  except (AssertionError, ValueError, IndexError, tf.errors.OpError) as e:
    raise ExportError(f'Checkpoint {checkpoint} does not fit the agent of '
                      f'{logdir / "config.yaml"}: {" ".join(str(e).split())[:600]}') from e
  return config, agent, obs_space, act_space, int(step.numpy())


def checkpoint_updates(checkpoint: str) -> int | None:
  """Agent updates (`agent.updates`) recorded in a training checkpoint; None if it has none."""
  reader = tf.train.load_checkpoint(checkpoint)
  key = 'agent/ac/updates/.ATTRIBUTES/VARIABLE_VALUE'
  return int(reader.get_tensor(key)) if reader.has_tensor(key) else None


def export_policy(logdir: str | os.PathLike, out: str | os.PathLike,
                  version: int | None = None) -> pathlib.Path:
  """Exports the latest checkpoint of `logdir` to `out/<version>/` (see module docstring).

  Args:
    logdir: training run directory (config.yaml, checkpoints/).
    out: export folder (created if missing), the `--model_base_path` of TF Serving.
    version: version number; None takes the next free one (1 for a new folder).
  Returns:
    the version folder written.
  Raises:
    ExportError: bad logdir, checkpoint or destination (nothing is written then).
  """
  logdir = pathlib.Path(logdir).expanduser()
  out = pathlib.Path(out).expanduser()
  checkpoint = find_checkpoint(logdir)
  version = check_destination(out, version)
  config, agent, obs_space, act_space, agent_step = _restore_agent(logdir, checkpoint)
  if checkpoint_updates(checkpoint) == 0:
    print(f'export: warning: {checkpoint} was saved before the first update (e.g. a run stopped '
          'during prefill): the exported policy is untrained.', file=sys.stderr, flush=True)
  module = build_policy_module(agent, obs_space['image'][0])
  signatures = signature_functions(module)

  created_out = not out.exists()
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ExportError(f'--out {out} cannot be created ({type(e).__name__}: {e.strerror}).') \
        from None
  temp = out / f'{TEMP_PREFIX}{version}-{os.getpid()}'
  final = out / str(version)
  try:
    tf.saved_model.save(module, str(temp), signatures=signatures)
    extra = temp / 'assets.extra'
    extra.mkdir()
    with tf.io.TFRecordWriter(str(extra / WARMUP_FILE)) as writer:
      for log in warmup_requests(module.info):
        writer.write(log.SerializeToString())
    metadata = dict(
        module.info, task=config.task, agent_step=agent_step,
        frames=agent_step * int(config.action_repeat), checkpoint=str(checkpoint),
        logdir=str(logdir.resolve()), signatures=list(SIGNATURES),
        exported_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))
    (extra / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + '\n')
    if final.exists():
      raise ExportError(f'Version folder {final} appeared while exporting; not replacing it.')
    os.rename(temp, final)
  except BaseException:
    # Only what this call created: its temporary folder, and `out` if it made it and it is
    # still empty.
    shutil.rmtree(temp, ignore_errors=True)
    if created_out:
      try:
        out.rmdir()
      except OSError:
        pass
    raise
  print(f'Exported {checkpoint} (agent step {agent_step:,}, task {config.task}) to {final}.')
  print(f'Signatures: {", ".join(SIGNATURES)}; image {tuple(module.info["image_shape"])} uint8, '
        f'action size {module.info["action_size"]} '
        f'({"one-hot" if module.info["discrete"] else "continuous"}).', flush=True)
  return final


def main(argv: list[str] | None = None) -> int:
  parser = cli.ArgumentParser(
      prog='python -m dreamerv2_tf.export',
      description='Export the latest checkpoint of a training run as a SavedModel version '
                  'folder for TensorFlow Serving.')
  parser.add_argument('--logdir', required=True, help='training run directory')
  parser.add_argument('--out', required=True,
                      help='export folder (TF Serving --model_base_path); created if missing')
  parser.add_argument('--version', type=int, default=None,
                      help='version number (default: the next free integer, 1 for a new folder)')
  args = parser.parse_args(argv)
  try:
    export_policy(args.logdir, args.out, args.version)
  except ExportError as e:
    print(f'export: error: {" ".join(str(e).split())}', file=sys.stderr, flush=True)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
