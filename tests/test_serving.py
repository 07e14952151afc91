"""The serving client (issue 7) end to end against the loopback TEST DOUBLES of TF Serving in
serving_double.py (gRPC PredictionService and REST API over the same exported SavedModel): no
TensorFlow Serving binary can be installed on these machines."""

from __future__ import annotations

import http.client
import json
import socket

import numpy as np
import pytest
import tensorflow as tf

import serving_double
from conftest import run_tool
from dreamerv2_tf import envs, export, serving
from dreamerv2_tf.config import load_config
from test_export import make_run

MODEL = 'pong'
EPISODES = 2


class LocalClient:
  """Reference: the same SavedModel called in this process, no server in between."""

  def __init__(self, path):
    self.model = tf.saved_model.load(str(path))
    self.actions = []

  def predict(self, signature, inputs):
    out = self.model.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    out = {k: v.numpy() for k, v in out.items()}
    if 'action_index' in out:
      self.actions.append(int(out['action_index'][0]))
    return out


@pytest.fixture(scope='module')
def served(tmp_path_factory):
  logdir = tmp_path_factory.mktemp('run')
  # Perturbed strongly enough that the untrained policy's actions depend on the frames whatever
  # the initial weights (which depend on the TF ops run before, i.e. on the test order).
  make_run(logdir, seed=1, scale=0.5)
  base = tmp_path_factory.mktemp('models') / MODEL
  version = export.export_policy(logdir, base)
  model = serving_double.ServedModelDouble(MODEL, base)
  grpc_server, grpc_port = serving_double.start_grpc(model)
  rest = serving_double.RestDouble(model)
  yield {'model': model, 'version': version, 'grpc': f'127.0.0.1:{grpc_port}',
         'rest': f'127.0.0.1:{rest.port}'}
  rest.stop()
  grpc_server.stop(0)


@pytest.fixture(scope='module')
def reference(served):
  """Returns and lengths of EPISODES debug Pong episodes (seed 0) played in-process."""
  config = load_config(['atari', 'debug'], {'task': 'atari_pong'})
  client = LocalClient(served['version'])
  env = envs.make_env('atari_pong', config, 'eval', 0)
  try:
    result = serving.play(client, env, EPISODES, log=lambda line: None)
  finally:
    env.close()
  assert len(set(client.actions)) > 1  # the policy is not constant
  return result


def test_double_replayed_the_warmup_requests(served):
  assert served['model'].warmup_count == 3
  assert served['model'].version == 1


def random_inputs(batch=3, seed=0):
  rng = np.random.default_rng(seed)
  return {
      'image': rng.integers(0, 256, (batch, 64, 64, 1), dtype=np.uint8),
      'is_first': np.arange(batch) == 1,
      'deter': rng.standard_normal((batch, 32)).astype(np.float32),
      'stoch': np.eye(4, dtype=np.float32)[rng.integers(0, 4, (batch, 4))],
      'prev_action': np.eye(6, dtype=np.float32)[rng.integers(0, 6, batch)],
  }


@pytest.mark.parametrize('client_class', [serving.GrpcPolicyClient, serving.RestPolicyClient])
def test_clients_return_what_the_model_computes(served, client_class):
  key = 'rest' if client_class is serving.RestPolicyClient else 'grpc'
  client = client_class(served[key], MODEL)
  local = LocalClient(served['version'])
  try:
    signatures = client.signatures()
    assert set(signatures) == {'initial_state', 'serving_default', 'sample'}
    assert signatures['serving_default']['inputs']['image'] == ('DT_UINT8', (-1, 64, 64, 1))
    assert signatures['sample']['inputs']['seed'] == ('DT_INT64', (2,))
    assert signatures['serving_default']['outputs']['action_index'] == ('DT_INT64', (-1,))
    state = client.predict('initial_state', {'batch_size': np.array(3, np.int32)})
    assert {k: (v.dtype, v.shape) for k, v in state.items()} == {
        'deter': (np.float32, (3, 32)), 'stoch': (np.float32, (3, 4, 4)),
        'prev_action': (np.float32, (3, 6))}
    inputs = random_inputs()
    for name, extra in (('serving_default', {}), ('sample', {'seed': np.array([4, 2])})):
      got = client.predict(name, dict(inputs, **extra))
      want = local.predict(name, dict(inputs, **{k: v.astype(np.int64)
                                                 for k, v in extra.items()}))
      assert sorted(got) == sorted(want)
      for k in want:
        assert got[k].dtype == want[k].dtype, k
        np.testing.assert_array_equal(got[k], want[k])  # JSON floats round-trip exactly
  finally:
    client.close()


@pytest.mark.slow
def test_play_over_grpc_end_to_end(served, reference, tmp_path):
  before = len(served['model'].requests)
  summary = tmp_path / 'grpc.json'
  result = run_tool(['-m', 'dreamerv2_tf.serving', 'play', '--timeout', '120', '--server', served['grpc'],
                     '--model', MODEL, '--task', 'atari_pong', '--episodes', str(EPISODES),
                     '--configs', 'atari', 'debug', '--json', str(summary)])
  assert result.returncode == 0, result.stderr[-3000:]
  data = json.loads(summary.read_text())
  assert data['returns'] == reference['returns']
  assert data['lengths'] == reference['lengths'] == [200] * EPISODES
  assert data['requests'] == sum(reference['lengths'])
  assert data['transport'] == 'gRPC'
  assert 0 < data['latency_ms']['median'] <= data['latency_ms']['p95']
  requests = served['model'].requests[before:]
  assert requests.count('initial_state') == 1
  assert requests.count('serving_default') == data['requests']
  for i, value in enumerate(reference['returns']):
    assert f'Episode {i + 1}/{EPISODES}: return {value:g}, length 200 agent steps.' in (
        result.stdout)
  assert 'requests over gRPC: latency median' in result.stdout


@pytest.mark.slow
def test_play_over_rest_end_to_end(served, reference, tmp_path):
  before = len(served['model'].requests)
  summary = tmp_path / 'rest.json'
  result = run_tool(['-m', 'dreamerv2_tf.serving', 'play', '--timeout', '120', '--server', served['rest'], '--rest',
                     '--model', MODEL, '--task', 'atari_pong', '--episodes', '1',
                     '--configs', 'atari', 'debug', '--json', str(summary)])
  assert result.returncode == 0, result.stderr[-3000:]
  data = json.loads(summary.read_text())
  assert data['returns'] == reference['returns'][:1]
  assert data['lengths'] == reference['lengths'][:1]
  assert data['transport'] == 'REST'
  assert served['model'].requests[before:].count('serving_default') == 200
  assert 'requests over REST: latency median' in result.stdout


def test_sample_signature_through_grpc_is_seeded(served):
  config = load_config(['atari', 'debug'], {'task': 'atari_pong', 'time_limit': 30})
  results = []
  for seed in (3, 3, 4):
    client = serving.GrpcPolicyClient(served['grpc'], MODEL)
    recorder = []
    original = client.predict

    def predict(signature, inputs, original=original, recorder=recorder):
      out = original(signature, inputs)
      if signature == 'sample':
        recorder.append(int(out['action_index'][0]))
      return out

    client.predict = predict
    env = envs.make_env('atari_pong', config, 'eval', 0)
    try:
      serving.play(client, env, 1, signature='sample', seed=seed, log=lambda line: None)
    finally:
      env.close()
      client.close()
    results.append(recorder)
  assert len(results[0]) == 30
  assert results[0] == results[1]
  assert results[0] != results[2]


def test_rest_double_row_format_and_errors(served):
  host, port = served['rest'].split(':')
  conn = http.client.HTTPConnection(host, int(port), timeout=10)

  def call(method, path, body=None):
    conn.request(method, path, body=None if body is None else json.dumps(body))
    response = conn.getresponse()
    return response.status, json.loads(response.read())

  inputs = random_inputs(2)
  instances = [{k: v[i].tolist() for k, v in inputs.items()} for i in range(2)]
  status, body = call('POST', f'/v1/models/{MODEL}:predict', {'instances': instances})
  assert status == 200 and len(body['predictions']) == 2
  local = LocalClient(served['version']).predict('serving_default', inputs)
  assert [p['action_index'] for p in body['predictions']] == local['action_index'].tolist()
  status, body = call('GET', f'/v1/models/{MODEL}')
  assert status == 200 and body['model_version_status'][0]['state'] == 'AVAILABLE'
  status, body = call('POST', '/v1/models/other:predict', {'inputs': {}})
  assert status == 404 and 'Servable not found' in body['error']
  status, body = call('POST', f'/v1/models/{MODEL}:predict',
                      {'signature_name': 'nope', 'inputs': {}})
  assert status == 400 and 'nope' in body['error']
  conn.close()


def test_client_errors_are_clear(served):
  grpc_client = serving.GrpcPolicyClient(served['grpc'], 'other')
  with pytest.raises(serving.ServingError, match="NOT_FOUND: Servable not found"):
    grpc_client.signatures()
  grpc_client.close()
  rest_client = serving.RestPolicyClient(served['rest'], 'other')
  with pytest.raises(serving.ServingError, match='HTTP 404'):
    rest_client.signatures()
  rest_client.close()
  client = serving.GrpcPolicyClient(served['grpc'], MODEL)
  with pytest.raises(serving.ServingError, match='INVALID_ARGUMENT: Expects arg\\[image\\]'):
    client.predict('serving_default', dict(random_inputs(1),
                                           image=np.zeros((1, 64, 64, 1), np.float32)))
  signatures = client.signatures()
  client.close()
  dmc_obs = {'image': ((64, 64, 3), np.uint8)}
  with pytest.raises(serving.ServingError, match=r'images of shape \(64, 64, 1\); the task '
                                                 r'gives \(64, 64, 3\)'):
    serving.check_model(signatures, 'serving_default', dmc_obs, envs.ActSpace(False, 6))
  with pytest.raises(serving.ServingError, match='The model has 6 actions; the task has 18'):
    serving.check_model(signatures, 'serving_default', {'image': ((64, 64, 1), np.uint8)},
                        envs.ActSpace(True, 18))
  with pytest.raises(ValueError, match='expected HOST:PORT'):
    serving.parse_server('localhost')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_cli_unreachable_server_exits_2():
  port = _free_port()
  result = run_tool(['-m', 'dreamerv2_tf.serving', 'play', '--server', f'127.0.0.1:{port}',
                     '--rest', '--model', MODEL, '--task', 'atari_pong', '--episodes', '1'])
  assert result.returncode == 2
  assert f'serving: error: 127.0.0.1:{port} (REST): GET /v1/models/{MODEL}/metadata failed' in (
      result.stderr)
