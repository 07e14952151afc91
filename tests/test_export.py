"""The exported SavedModel (issue 7): loadable without project code, accepted by the TF1 session
loader TF Serving uses, identical to the in-process agent's evaluation policy on real Pong
frames, seeded sampling, purity, and the export command's errors."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from conftest import run_tool, tool_env
from dreamerv2_tf import envs, export, nets
from dreamerv2_tf.agent import ActSpace, Agent
from dreamerv2_tf.checkpoint import Checkpointer, HostState
from dreamerv2_tf.config import load_config

STATE_KEYS = ('deter', 'stoch', 'prev_action')
PONG_OBS = {'image': ((64, 64, 1), np.uint8)}
PONG_ACT = ActSpace(discrete=True, size=6)
STEPS = 200


def make_run(logdir: pathlib.Path, seed: int = 0, step: int = 1234, scale: float = 0.1):
  """A training-run directory as the loop leaves it: config.yaml and a checkpoint (agent, step,
  TF generator, host state) of a debug-size Pong agent with `eval_state_mean: True`. The
  weights are perturbed (biases included) so that nothing equals its initial value. Keras' global
  seed is set to `seed` first: the initial weights, and so whether the policy depends on the
  frames, do not change from one process or test order to the next (unseeded, scale 0.5 still
  gave a constant policy now and then)."""
  keras.utils.set_random_seed(seed)
  config = load_config(['atari', 'debug'], {'eval_state_mean': True, 'seed': seed})
  step_var = tf.Variable(step, dtype=tf.int64, trainable=False, name='agent_step')
  agent = Agent(config, PONG_OBS, PONG_ACT, step_var)
  rng = np.random.default_rng(seed)
  for v in agent.trainable_variables:
    v.assign(v + scale * rng.standard_normal(v.shape).astype(np.float32))
  config.save(logdir / 'config.yaml')
  Checkpointer(logdir / 'checkpoints', step_var, agent=agent,
               tf_rng=tf.random.Generator.from_seed(seed), host=HostState()).save()
  return agent, config


def as_tensors(inputs):
  return {k: tf.constant(v) for k, v in inputs.items()}


def tree(path: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(path)) for p in path.rglob('*')) if path.exists() else []


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  logdir = tmp_path_factory.mktemp('run')
  agent, config = make_run(logdir, scale=0.5)  # at scale 0.1 the Pong policy was constant
  return logdir, agent, config


@pytest.fixture(scope='module')
def exported(run, tmp_path_factory):
  """The version folder written by `export_policy` into a new export folder."""
  out = tmp_path_factory.mktemp('models') / 'pong'
  assert export.export_policy(run[0], out) == out / '1'
  return out / '1'


@pytest.fixture(scope='module')
def loaded(exported):
  return tf.saved_model.load(str(exported))


def test_layout_warmup_and_metadata(exported, run):
  logdir, agent, _ = run
  assert sorted(p.name for p in exported.parent.iterdir()) == ['1']  # no temporary left
  assert (exported / 'saved_model.pb').is_file()
  assert (exported / 'variables' / 'variables.index').is_file()
  meta = json.loads((exported / 'assets.extra' / export.METADATA_FILE).read_text())
  assert meta['task'] == 'atari_pong' and meta['agent_step'] == 1234
  assert meta['frames'] == 1234 * 4 and meta['checkpoint'].endswith('ckpt-1234')
  assert meta['image_shape'] == [64, 64, 1] and meta['action_size'] == 6 and meta['discrete']
  records = list(tf.data.TFRecordDataset(
      str(exported / 'assets.extra' / export.WARMUP_FILE)).as_numpy_iterator())
  logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in records]
  assert [log.predict_log.request.model_spec.signature_name for log in logs] == [
      'initial_state', 'serving_default', 'sample']
  model = tf.saved_model.load(str(exported))
  for log in logs:  # every warm-up request runs
    request = log.predict_log.request
    inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
    outputs = model.signatures[request.model_spec.signature_name](**inputs)
    assert outputs['deter'].shape == (1, 32)


def test_only_acting_variables_restored_from_checkpoint(loaded, run):
  _, agent, _ = run
  acting = [agent.wm.encoder, agent.wm.rssm, agent.ac.actor]
  expected = [v for layer in acting for v in layer.weights]
  saved = loaded.policy_variables
  assert len(saved) == len(expected)
  assert sum(int(np.prod(v.shape)) for v in saved) == sum(nets.count_params(l) for l in acting)
  for got, want in zip(saved, expected):
    np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.slow
def test_fresh_process_with_only_tensorflow(exported, tmp_path):
  script = '''
import json, sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
state = model.signatures['initial_state'](batch_size=tf.constant(2))
inputs = dict(state, image=tf.zeros([2, 64, 64, 1], tf.uint8), is_first=tf.constant([True, False]))
out = model.signatures['serving_default'](**inputs)
sampled = model.signatures['sample'](seed=tf.constant([1, 2], tf.int64), **inputs)
ours = ('dreamerv2_tf', 'tensorflow_probability', 'tests')
project = sorted(m for m in sys.modules if m.split('.')[0] in ours)
print(json.dumps({'state': {k: [v.dtype.name, v.shape.as_list()] for k, v in state.items()},
                  'out': {k: [v.dtype.name, v.shape.as_list()] for k, v in out.items()},
                  'sample': sorted(sampled), 'project_modules': project,
                  'zeros': float(sum(np.abs(v.numpy()).sum() for v in state.values()))}))
'''
  env = tool_env()
  env.pop('PYTHONPATH')
  # -I: isolated mode, neither the repo nor the working directory is importable.
  result = subprocess.run([sys.executable, '-I', '-c', script, str(exported)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['project_modules'] == []
  assert report['zeros'] == 0.0
  assert report['state'] == {'deter': ['float32', [2, 32]], 'stoch': ['float32', [2, 4, 4]],
                             'prev_action': ['float32', [2, 6]]}
  assert report['out'] == {
      'action': ['float32', [2, 6]], 'action_index': ['int64', [2]],
      'deter': ['float32', [2, 32]], 'stoch': ['float32', [2, 4, 4]],
      'prev_action': ['float32', [2, 6]]}
  assert report['sample'] == sorted(report['out'])


def _cli(*args):
  cli = pathlib.Path(sys.executable).parent / 'saved_model_cli'
  return subprocess.run([str(cli), *args], env=tool_env(), capture_output=True, text=True,
                        timeout=300)


@pytest.mark.slow
def test_saved_model_cli_show_lists_three_signatures(exported):
  result = _cli('show', '--all', '--dir', str(exported))
  assert result.returncode == 0, result.stderr[-3000:]
  blocks = dict(re.findall(r"signature_def\['(\w+)'\]:(.*?)Method name is", result.stdout,
                           re.S))
  assert {'initial_state', 'serving_default', 'sample'} <= set(blocks)

  def tensors(block, kind):
    part = block.split('output(s):')[0 if kind == 'inputs' else 1]
    return {k: (d, s) for k, d, s in re.findall(
        r"\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: ([^\n]+)\n", part)}

  state_out = {'deter': ('DT_FLOAT', '(-1, 32)'), 'stoch': ('DT_FLOAT', '(-1, 4, 4)'),
               'prev_action': ('DT_FLOAT', '(-1, 6)')}
  step_in = dict(state_out, image=('DT_UINT8', '(-1, 64, 64, 1)'), is_first=('DT_BOOL', '(-1)'))
  step_out = dict(state_out, action=('DT_FLOAT', '(-1, 6)'), action_index=('DT_INT64', '(-1)'))
  assert tensors(blocks['initial_state'], 'inputs') == {'batch_size': ('DT_INT32', '()')}
  assert tensors(blocks['initial_state'], 'outputs') == state_out
  assert tensors(blocks['serving_default'], 'inputs') == step_in
  assert tensors(blocks['serving_default'], 'outputs') == step_out
  assert tensors(blocks['sample'], 'inputs') == dict(step_in, seed=('DT_INT64', '(2)'))
  assert tensors(blocks['sample'], 'outputs') == step_out


@pytest.mark.slow
def test_saved_model_cli_run_tf1_loader_matches(exported, loaded, tmp_path):
  """`saved_model_cli run` restores through the TF1 session loader (TF Serving's path)."""
  rng = np.random.default_rng(3)
  inputs = {
      'image': rng.integers(0, 256, (2, 64, 64, 1), dtype=np.uint8),
      'is_first': np.array([True, False]),
      'deter': rng.standard_normal((2, 32)).astype(np.float32),
      'stoch': np.eye(4, dtype=np.float32)[rng.integers(0, 4, (2, 4))],
      'prev_action': np.eye(6, dtype=np.float32)[[1, 4]],
      'seed': np.array([11, 12], np.int64),
  }
  for key, value in inputs.items():
    np.save(tmp_path / f'{key}.npy', value)
  for name in ('serving_default', 'sample'):
    keys = [k for k in inputs if k != 'seed' or name == 'sample']
    outdir = tmp_path / name
    result = _cli('run', '--dir', str(exported), '--tag_set', 'serve', '--signature_def', name,
                  '--inputs', ';'.join(f'{k}={tmp_path / k}.npy' for k in keys),
                  '--outdir', str(outdir))
    assert result.returncode == 0, result.stderr[-3000:]
    expected = loaded.signatures[name](**as_tensors({k: inputs[k] for k in keys}))
    assert sorted(p.stem for p in outdir.glob('*.npy')) == sorted(expected)
    for key, value in expected.items():
      got = np.load(outdir / f'{key}.npy')
      assert got.dtype == value.dtype.as_numpy_dtype
      np.testing.assert_allclose(got, value.numpy(), atol=1e-5)


def play_pong(agent, config, model, batch: int):
  """STEPS agent steps of `batch` real Pong envs acted by the agent's eval policy, the exported
  serving_default fed the same observations and its own returned state. Returns the per-step
  action indices of both, the max state difference, and the observations (for sample)."""
  serve = model.signatures['serving_default']
  pong = [envs.make_env('atari_pong', config, 'eval', seed) for seed in range(batch)]
  try:
    obs = [env.reset() for env in pong]
    agent_state = None
    state = {k: v.numpy() for k, v in
             model.signatures['initial_state'](batch_size=tf.constant(batch, tf.int32)).items()}
    agent_idx, served_idx, state_diff, record = [], [], 0.0, []
    for _ in range(STEPS):
      step_obs = {'image': np.stack([o['image'] for o in obs]),
                  'is_first': np.array([bool(o['is_first']) for o in obs])}
      record.append(step_obs)
      out, agent_state = agent.policy(step_obs, agent_state, mode='eval')
      served = serve(**as_tensors(dict(step_obs, **state)))
      action = out['action'].numpy()
      agent_idx.append(action.argmax(-1))
      served_idx.append(served['action_index'].numpy())
      np.testing.assert_array_equal(served['action'].numpy().argmax(-1), served_idx[-1])
      for key in STATE_KEYS:
        state_diff = max(state_diff, float(np.abs(served[key].numpy() -
                                                  agent_state[key].numpy()).max()))
      state = {k: served[k].numpy() for k in STATE_KEYS}  # round-tripped through the outputs
      obs = [env.reset() if o['is_last'] else env.step(a)
             for env, o, a in zip(pong, obs, action)]
  finally:
    for env in pong:
      env.close()
  return np.array(agent_idx), np.array(served_idx), state_diff, record


@pytest.fixture(scope='module')
def played(run, loaded):
  cache = {}

  def get(batch):
    if batch not in cache:
      cache[batch] = play_pong(run[1], run[2], loaded, batch)
    return cache[batch]

  return get


@pytest.mark.parametrize('batch', [1, 3])
def test_serving_default_matches_agent_eval_policy_on_pong(run, played, batch):
  assert run[2].eval_state_mean  # the agent's eval policy takes the posterior's mode
  agent_idx, served_idx, state_diff, _ = played(batch)
  assert agent_idx.shape == (STEPS, batch)
  np.testing.assert_array_equal(served_idx, agent_idx)
  assert state_diff <= 1e-5
  assert len(np.unique(agent_idx)) > 1  # the policy is not constant: the comparison has teeth


def test_sample_is_seeded(loaded, played):
  record = played(1)[3]
  sample = loaded.signatures['sample']

  def rollout(seed):
    state = {k: v.numpy() for k, v in
             loaded.signatures['initial_state'](batch_size=tf.constant(1)).items()}
    actions, stochs = [], []
    for t, step_obs in enumerate(record):
      out = sample(seed=tf.constant([seed, t], tf.int64), **as_tensors(dict(step_obs, **state)))
      state = {k: out[k].numpy() for k in STATE_KEYS}
      actions.append(out['action_index'].numpy()[0])
      stochs.append(state['stoch'])
      one_hot = out['action'].numpy()[0]
      assert sorted(one_hot.tolist()) == [0.0] * 5 + [1.0]  # exactly one-hot
    return np.array(actions), np.array(stochs)

  first, stoch_a = rollout(7)
  again, stoch_b = rollout(7)
  other, stoch_c = rollout(8)
  np.testing.assert_array_equal(first, again)
  np.testing.assert_array_equal(stoch_a, stoch_b)
  assert (first != other).any()
  assert (stoch_a != stoch_c).any()
  assert set(np.unique(stoch_a)) == {0.0, 1.0}


def test_pure_same_inputs_same_outputs_no_variable_changes(loaded):
  rng = np.random.default_rng(5)
  inputs = as_tensors({
      'image': rng.integers(0, 256, (3, 64, 64, 1), dtype=np.uint8),
      'is_first': np.array([False, True, False]),
      'deter': rng.standard_normal((3, 32)).astype(np.float32),
      'stoch': np.eye(4, dtype=np.float32)[rng.integers(0, 4, (3, 4))],
      'prev_action': np.eye(6, dtype=np.float32)[[0, 2, 5]],
  })
  before = [v.numpy().copy() for v in loaded.policy_variables]
  for name, extra in (('serving_default', {}),
                      ('sample', {'seed': tf.constant([3, 4], tf.int64)})):
    first = loaded.signatures[name](**inputs, **extra)
    second = loaded.signatures[name](**inputs, **extra)
    assert sorted(first) == sorted(second)
    for key in first:
      np.testing.assert_array_equal(first[key].numpy(), second[key].numpy())
  for value, variable in zip(before, loaded.policy_variables):
    np.testing.assert_array_equal(value, variable.numpy())
  # is_first zeroes the incoming state: any state gives the same answer for row 1.
  other = dict(inputs, deter=inputs['deter'] * 3.0 + 1.0)
  a = loaded.signatures['serving_default'](**inputs)
  b = loaded.signatures['serving_default'](**other)
  np.testing.assert_array_equal(a['deter'].numpy()[1], b['deter'].numpy()[1])
  assert not np.allclose(a['deter'].numpy()[0], b['deter'].numpy()[0])


def test_batch_mismatch_is_a_clear_error(loaded):
  inputs = {k: v for k, v in loaded.signatures['initial_state'](
      batch_size=tf.constant(2)).items()}
  with pytest.raises(tf.errors.InvalidArgumentError, match='batch size of image'):
    loaded.signatures['serving_default'](image=tf.zeros([3, 64, 64, 1], tf.uint8),
                                         is_first=tf.zeros([3], tf.bool), **inputs)


def test_continuous_actor_export(tmp_path):
  """DMC-style agent: no action_index, truncated-normal mode and seeded samples in [-1, 1]."""
  config = load_config(['dmc_vision', 'debug'], {'eval_state_mean': True})
  agent = Agent(config, {'image': ((64, 64, 3), np.uint8)}, ActSpace(False, 4),
                tf.Variable(0, dtype=tf.int64))
  module = export.build_policy_module(agent, (64, 64, 3))
  tf.saved_model.save(module, str(tmp_path / 'm'), signatures=export.signature_functions(module))
  model = tf.saved_model.load(str(tmp_path / 'm'))
  rng = np.random.default_rng(1)
  obs = {'image': rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8),
         'is_first': np.array([True, False])}
  state = {'deter': rng.standard_normal((2, 32)).astype(np.float32),
           'stoch': np.eye(4, dtype=np.float32)[rng.integers(0, 4, (2, 4))],
           'prev_action': rng.uniform(-1, 1, (2, 4)).astype(np.float32)}
  out, agent_state = agent.policy(obs, state, mode='eval')
  served = model.signatures['serving_default'](**as_tensors(dict(obs, **state)))
  assert 'action_index' not in served
  np.testing.assert_allclose(served['action'].numpy(), out['action'].numpy(), atol=1e-5)
  for key in STATE_KEYS:
    np.testing.assert_allclose(served[key].numpy(), agent_state[key].numpy(), atol=1e-5)
  seeded = [model.signatures['sample'](seed=tf.constant(s, tf.int64),
                                       **as_tensors(dict(obs, **state)))['action'].numpy()
            for s in ([1, 2], [1, 2], [1, 3])]
  np.testing.assert_array_equal(seeded[0], seeded[1])
  assert not np.array_equal(seeded[0], seeded[2])
  assert np.abs(seeded[0]).max() <= 1.0



def test_gaussian_latent_export(tmp_path):
  """rssm.discrete 0: stoch is [B, S]; serving_default is the agent's eval policy (posterior
  mean), `sample` draws the latent with the seed, and the warm-up requests have the shape."""
  config = load_config(['atari', 'debug'], {'eval_state_mean': True, 'rssm.discrete': 0})
  agent = Agent(config, PONG_OBS, PONG_ACT, tf.Variable(0, dtype=tf.int64))
  module = export.build_policy_module(agent, (64, 64, 1))
  assert module.info['stoch_shape'] == [4]
  requests = export.warmup_requests(module.info)
  assert len(requests) == 3
  tf.saved_model.save(module, str(tmp_path / 'm'), signatures=export.signature_functions(module))
  model = tf.saved_model.load(str(tmp_path / 'm'))
  initial = model.signatures['initial_state'](batch_size=tf.constant(2))
  assert initial['stoch'].shape == (2, 4)
  rng = np.random.default_rng(2)
  obs = {'image': rng.integers(0, 256, (2, 64, 64, 1), dtype=np.uint8),
         'is_first': np.array([True, False])}
  state = {'deter': rng.standard_normal((2, 32)).astype(np.float32),
           'stoch': rng.standard_normal((2, 4)).astype(np.float32),
           'prev_action': np.eye(6, dtype=np.float32)[[1, 4]]}
  out, agent_state = agent.policy(obs, state, mode='eval')
  served = model.signatures['serving_default'](**as_tensors(dict(obs, **state)))
  np.testing.assert_array_equal(served['action'].numpy(), out['action'].numpy())
  for key in STATE_KEYS:
    np.testing.assert_allclose(served[key].numpy(), agent_state[key].numpy(), atol=1e-5)
  stochs = [model.signatures['sample'](seed=tf.constant(s, tf.int64),
                                       **as_tensors(dict(obs, **state)))['stoch'].numpy()
            for s in ([1, 2], [1, 2], [1, 3])]
  np.testing.assert_array_equal(stochs[0], stochs[1])
  assert not np.array_equal(stochs[0], stochs[2])
  assert not np.allclose(stochs[0], served['stoch'].numpy())  # a draw, not the mean

@pytest.mark.slow
def test_cli_exports_next_version(run, exported, tmp_path):
  out = tmp_path / 'models'
  shutil.copytree(exported, out / '4')
  result = run_tool(['-m', 'dreamerv2_tf.export', '--logdir', str(run[0]), '--out', str(out)])
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'to {out / "5"}' in result.stdout
  assert sorted(p.name for p in out.iterdir()) == ['4', '5']
  assert (out / '5' / 'assets.extra' / export.WARMUP_FILE).is_file()


def test_versions_are_numbered_and_never_replaced(run, tmp_path):
  out = tmp_path / 'models'  # a new folder starts at 1: see the `exported` fixture
  assert export.export_policy(run[0], out, version=5) == out / '5'
  assert export.export_policy(run[0], out) == out / '6'
  before = tree(out)
  with pytest.raises(export.ExportError, match='Version 5 already exists'):
    export.export_policy(run[0], out, version=5)
  with pytest.raises(export.ExportError, match='positive'):
    export.export_policy(run[0], out, version=0)
  assert tree(out) == before


def test_errors_write_nothing(run, tmp_path):
  logdir = run[0]
  # A logdir without a checkpoint.
  empty = tmp_path / 'empty_run'
  (empty / 'checkpoints').mkdir(parents=True)
  load_config(['atari', 'debug']).save(empty / 'config.yaml')
  out = tmp_path / 'out'
  with pytest.raises(export.ExportError, match='No checkpoint in'):
    export.export_policy(empty, out)
  assert not out.exists()
  with pytest.raises(export.ExportError, match='missing is not a directory'):
    export.export_policy(tmp_path / 'missing', out)
  with pytest.raises(export.ExportError, match='config.yaml does not exist'):
    export.export_policy(tmp_path / 'empty_run' / 'checkpoints', out)
  assert not out.exists()
  # --out is a file, or a directory that is not an export folder.
  target = tmp_path / 'file.txt'
  target.write_text('keep me')
  with pytest.raises(export.ExportError, match='is a file that is not an export folder'):
    export.export_policy(logdir, target)
  assert target.read_text() == 'keep me'
  folder = tmp_path / 'other'
  (folder / 'data').mkdir(parents=True)
  (folder / 'notes.txt').write_text('x')
  before = tree(folder)
  with pytest.raises(export.ExportError, match=r'not an export folder \(holds data, notes.txt'):
    export.export_policy(logdir, folder)
  assert tree(folder) == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ['empty_run', 'file.txt', 'other']


@pytest.mark.slow
def test_cli_error_exit_status(tmp_path):
  (tmp_path / 'run').mkdir()
  load_config(['atari', 'debug']).save(tmp_path / 'run' / 'config.yaml')
  result = run_tool(['-m', 'dreamerv2_tf.export', '--logdir', str(tmp_path / 'run'), '--out',
                     str(tmp_path / 'out')])
  assert result.returncode == 2
  assert 'export: error: No checkpoint in' in result.stderr
  assert not (tmp_path / 'out').exists()


def test_mixed_precision_checkpoint_exports_in_float32(tmp_path, monkeypatch):
  """A run trained with precision 16 on a GPU (mixed float16, loss-scaled optimisers) exports
  to the same float32 graphs: only the step and the acting layers are restored."""
  config = load_config(['atari', 'debug'], {'precision': 16})
  real = tf.config.list_physical_devices
  monkeypatch.setattr(tf.config, 'list_physical_devices',
                      lambda kind=None: ['fake GPU'] if kind == 'GPU' else real(kind))
  step = tf.Variable(7, dtype=tf.int64)
  agent = Agent(config, PONG_OBS, PONG_ACT, step)
  monkeypatch.undo()
  assert agent.precision == 'mixed_float16'
  config.save(tmp_path / 'run' / 'config.yaml')
  Checkpointer(tmp_path / 'run' / 'checkpoints', step, agent=agent).save()
  try:
    path = export.export_policy(tmp_path / 'run', tmp_path / 'out')
  finally:
    keras.mixed_precision.set_global_policy('float32')
  model = tf.saved_model.load(str(path))
  acting = [agent.wm.encoder, agent.wm.rssm, agent.ac.actor]
  for got, want in zip(model.policy_variables, [v for l in acting for v in l.weights]):
    np.testing.assert_array_equal(got.numpy(), want.numpy())
  state = model.signatures['initial_state'](batch_size=tf.constant(1))
  out = model.signatures['serving_default'](image=tf.zeros([1, 64, 64, 1], tf.uint8),
                                            is_first=tf.constant([True]), **state)
  assert out['action'].dtype == tf.float32 and out['deter'].dtype == tf.float32


def test_checkpoint_that_does_not_fit_the_config(run, tmp_path):
  other = tmp_path / 'run'
  shutil.copytree(run[0] / 'checkpoints', other / 'checkpoints')
  load_config(['atari', 'debug'], {'rssm.deter': 48}).save(other / 'config.yaml')
  with pytest.raises(export.ExportError, match='does not fit the agent'):
    export.export_policy(other, tmp_path / 'out')
  assert not (tmp_path / 'out').exists()


def test_out_that_cannot_be_created_is_a_one_line_error(run, tmp_path, capsys, monkeypatch):
  target = tmp_path / 'file.txt'
  target.write_text('keep me')
  # --out under a file (NotADirectoryError from mkdir before this check existed).
  assert export.main(['--logdir', str(run[0]), '--out', str(target / 'models')]) == 2
  err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert len(err) == 1 and err[0].startswith('export: error: --out'), err
  assert f'{target} is a file, not a folder' in err[0]
  # No write permission (simulated: the tests may run as root, which chmod does not stop).
  (tmp_path / 'empty').mkdir()
  monkeypatch.setattr(export.os, 'access', lambda path, mode: False)
  with pytest.raises(export.ExportError, match=f'no write permission in {tmp_path}'):
    export.export_policy(run[0], tmp_path / 'new' / 'models')
  with pytest.raises(export.ExportError, match='empty is not writable'):
    export.export_policy(run[0], tmp_path / 'empty')
  assert sorted(p.name for p in tmp_path.iterdir()) == ['empty', 'file.txt']
  assert not list((tmp_path / 'empty').iterdir())
  assert target.read_text() == 'keep me'


def test_corrupt_config_yaml_is_an_export_error(run, tmp_path):
  other = tmp_path / 'run'
  shutil.copytree(run[0] / 'checkpoints', other / 'checkpoints')
  (other / 'config.yaml').write_text('task: atari_pong\nrssm: {deter: 32\n')
  with pytest.raises(export.ExportError, match=f'cannot parse {other / "config.yaml"}: .*line 3'):
    export.export_policy(other, tmp_path / 'out')
  assert not (tmp_path / 'out').exists()


def test_untrained_checkpoint_exports_with_a_warning(run, tmp_path, capsys):
  # make_run's checkpoint holds an agent that was never updated (like a run stopped in
  # prefill): the export works and says the policy is untrained.
  assert export.checkpoint_updates(tf.train.latest_checkpoint(str(run[0] / 'checkpoints'))) == 0
  export.export_policy(run[0], tmp_path / 'models')
  err = capsys.readouterr().err
  assert 'export: warning:' in err and 'the exported policy is untrained' in err
