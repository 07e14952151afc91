"""Plays episodes through a TensorFlow Serving model server (issue 7).

    python -m dreamerv2_tf.serving play --server HOST:PORT --model NAME --task TASK \
        --episodes N [--rest] [--signature serving_default|sample] [--seed S] \
        [--configs atari ...] [--version V] [--timeout SECONDS] [--json PATH]

The server serves a policy exported by `python -m dreamerv2_tf.export` (see that module for the
signatures). TF Serving keeps no state between requests, so the client carries the policy state
(`deter`, `stoch`, `prev_action`): it sends it with every observation and keeps the state the
response returns; on `is_first` (a new episode) it resets the state to the `initial_state`
signature's zeros. Over gRPC (default) it uses tensorflow-serving-api's `PredictionService`
(Predict, GetModelMetadata); with `--rest` it uses TF Serving's REST API (`POST
/v1/models/NAME[/versions/V]:predict` with the columnar `{"signature_name", "inputs"}` body,
`GET .../metadata`).

Before playing, the model's signatures are checked against the task: the image shape and the
action size must match the environment's. Episodes come from `dreamerv2_tf.envs.make_env(task,
config, 'eval', seed)`, with the config of `--configs` (default: the suite's block, `atari` or
`dmc_vision`; add `debug` for 200-step episodes). The `sample` signature gets the seed
[seed, request index] for each request.

Output: one line per episode (return, length in agent steps), then the number of requests and
their latency (median and 95th percentile, milliseconds, measured around each Predict call
including (de)serialisation). `--json PATH` also writes {"returns", "lengths", "requests",
"latency_ms": {"median", "p95"}, ...} atomically. Errors (server unreachable, unknown model or
signature, a model that does not fit the task) exit with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pathlib
import sys
import tempfile
import time
from typing import Any, Callable, Mapping

import numpy as np

from dreamerv2_tf import cli

STATE_KEYS = ('deter', 'stoch', 'prev_action')
SIGNATURES = ('serving_default', 'sample')
# DataType enum names of tensorflow/core/framework/types.proto used by the policy's signatures.
NUMPY_DTYPES = {'DT_FLOAT': np.float32, 'DT_INT32': np.int32, 'DT_INT64': np.int64,
                'DT_UINT8': np.uint8, 'DT_BOOL': np.bool_}

# {signature: {'inputs'|'outputs': {key: (dtype name, shape with -1 for any)}}}
SignatureInfo = dict


class ServingError(RuntimeError):
  """The server could not be reached, refused a request, or serves a model unfit for the task."""


def parse_server(server: str) -> tuple[str, int]:
  """'HOST:PORT' → (host, port).

  Raises:
    ValueError: for a value without a port or with a port outside 1..65535.
  """
  host, sep, port = str(server).rpartition(':')
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"--server is {server!r}; expected HOST:PORT, e.g. localhost:8500 (gRPC) "
                     "or localhost:8501 (REST).")
  return host, int(port)


class GrpcPolicyClient:
  """Predict and GetModelMetadata over gRPC (tensorflow-serving-api's PredictionService).

  Args:
    server: 'HOST:PORT' of the gRPC endpoint (TF Serving's --port, 8500 by default).
    model: the served model's name; version: a version number, or None for the latest.
    timeout: seconds per request.
  """

  def __init__(self, server: str, model: str, version: int | None = None,
               timeout: float = 10.0):
    # pylint: disable=import-outside-toplevel
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (get_model_metadata_pb2, predict_pb2,
                                         prediction_service_pb2_grpc)
    parse_server(server)
    self._grpc, self._tf = grpc, tf
    self._predict_pb2, self._metadata_pb2 = predict_pb2, get_model_metadata_pb2
    self.server, self.model, self.version, self.timeout = server, model, version, timeout
    self.channel = grpc.insecure_channel(server)
    self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
    self.transport = 'gRPC'

  def _spec(self, spec) -> None:
    spec.name = self.model
    if self.version is not None:
      spec.version.value = int(self.version)

  def _call(self, method: Callable, request):
    try:
      return method(request, timeout=self.timeout)
    except self._grpc.RpcError as e:
      raise ServingError(f'{self.server} (gRPC, model {self.model!r}): {e.code().name}: '
                         f'{e.details()}') from None

  def signatures(self) -> SignatureInfo:
    """The model's signatures from GetModelMetadata (see SignatureInfo)."""
    request = self._metadata_pb2.GetModelMetadataRequest()
    self._spec(request.model_spec)
    request.metadata_field.append('signature_def')
    response = self._call(self.stub.GetModelMetadata, request)
    defs = self._metadata_pb2.SignatureDefMap()
    if not response.metadata['signature_def'].Unpack(defs):
      raise ServingError(f'{self.server}: the metadata response holds no SignatureDefMap.')
    return {name: _signature_info_from_proto(sig) for name, sig in defs.signature_def.items()}

  def predict(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One Predict request; returns {output key: array}."""
    request = self._predict_pb2.PredictRequest()
    self._spec(request.model_spec)
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
      request.inputs[key].CopyFrom(self._tf.make_tensor_proto(np.asarray(value)))
    response = self._call(self.stub.Predict, request)
    return {key: self._tf.make_ndarray(proto) for key, proto in response.outputs.items()}

  def close(self) -> None:
    self.channel.close()


class RestPolicyClient:
  """Predict and metadata over TF Serving's REST API (--rest_api_port, 8501 by default).

  Inputs are sent in the columnar format `{"signature_name": ..., "inputs": {key: nested
  lists}}`; outputs are converted to the dtypes the model's metadata declares. One persistent
  HTTP/1.1 connection is used.
  """

  def __init__(self, server: str, model: str, version: int | None = None,
               timeout: float = 10.0):
    self.host, self.port = parse_server(server)
    self.server, self.model, self.version, self.timeout = server, model, version, timeout
    self.path = f'/v1/models/{model}' + (f'/versions/{int(version)}' if version is not None
                                         else '')
    self.connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
    self.transport = 'REST'
    self._output_dtypes: dict[str, dict[str, Any]] = {}

  def _request(self, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {'Content-Type': 'application/json'} if data is not None else {}
    try:
      self.connection.request(method, path, body=data, headers=headers)
      response = self.connection.getresponse()
      payload = response.read()
    except (OSError, http.client.HTTPException) as e:
      self.connection.close()
      raise ServingError(f'{self.server} (REST): {method} {path} failed: {e}') from None
    try:
      result = json.loads(payload)
    except ValueError:
      result = None
    if response.status != 200:
      message = result.get('error') if isinstance(result, dict) else payload[:300]
      raise ServingError(f'{self.server} (REST, model {self.model!r}): HTTP {response.status}: '
                         f'{message}')
    if not isinstance(result, dict):
      raise ServingError(f'{self.server} (REST): {method} {path} answered no JSON object.')
    return result

  def signatures(self) -> SignatureInfo:
    """The model's signatures from `GET /v1/models/NAME[/versions/V]/metadata`."""
    result = self._request('GET', self.path + '/metadata')
    try:
      defs = result['metadata']['signature_def']['signature_def']
    except (KeyError, TypeError):
      raise ServingError(f'{self.server} (REST): the metadata response holds no signature_def '
                         'map.') from None
    info = {name: _signature_info_from_json(sig) for name, sig in defs.items()}
    self._output_dtypes = {
        name: {k: NUMPY_DTYPES.get(dtype) for k, (dtype, _) in sig['outputs'].items()}
        for name, sig in info.items()}
    return info

  def predict(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One `:predict` request (columnar format); returns {output key: array}."""
    body = {'signature_name': signature,
            'inputs': {k: np.asarray(v).tolist() for k, v in inputs.items()}}
    result = self._request('POST', self.path + ':predict', body)
    if 'outputs' not in result:
      raise ServingError(f'{self.server} (REST): the predict response has no "outputs".')
    outputs = result['outputs']
    dtypes = self._output_dtypes.get(signature, {})
    if not isinstance(outputs, dict):  # TF Serving unwraps a signature's single output
      (key,) = dtypes or ('output',)
      outputs = {key: outputs}
    return {k: np.asarray(v, dtypes.get(k)) for k, v in outputs.items()}

  def close(self) -> None:
    self.connection.close()


def _shape_from_dims(dims, unknown_rank: bool) -> tuple[int, ...] | None:
  return None if unknown_rank else tuple(int(d) for d in dims)


def _signature_info_from_proto(sig) -> dict:
  # pylint: disable=import-outside-toplevel
  from tensorflow.core.framework import types_pb2

  def info(tensors):
    return {k: (types_pb2.DataType.Name(t.dtype),
                _shape_from_dims([d.size for d in t.tensor_shape.dim],
                                 t.tensor_shape.unknown_rank))
            for k, t in tensors.items()}

  return {'inputs': info(sig.inputs), 'outputs': info(sig.outputs)}


def _signature_info_from_json(sig: Mapping[str, Any]) -> dict:
  def info(tensors):
    out = {}
    for key, tensor in (tensors or {}).items():
      shape = tensor.get('tensor_shape', {})
      out[key] = (tensor.get('dtype', 'DT_INVALID'),
                  _shape_from_dims([d.get('size', 0) for d in shape.get('dim', [])],
                                   bool(shape.get('unknown_rank', False))))
    return out

  return {'inputs': info(sig.get('inputs')), 'outputs': info(sig.get('outputs'))}


def check_model(signatures: SignatureInfo, signature: str, obs_space: Mapping[str, Any],
                act_space: Any) -> None:
  """Checks that the served model fits the task.

  Raises:
    ServingError: a missing `initial_state` or `signature`, or an image shape or action size
      that differs from the environment's.
  """
  for name in ('initial_state', signature):
    if name not in signatures:
      raise ServingError(f'The model has no {name!r} signature (it has '
                         f'{", ".join(sorted(signatures))}); export it with '
                         'python -m dreamerv2_tf.export.')
  inputs = signatures[signature]['inputs']
  missing = {'image', 'is_first', *STATE_KEYS} - set(inputs)
  if missing:
    raise ServingError(f'Signature {signature!r} lacks the inputs {sorted(missing)}.')
  image_shape = tuple(obs_space['image'][0])
  model_image = inputs['image'][1]
  if model_image is None or tuple(model_image[1:]) != image_shape:
    raise ServingError(f'The model takes images of shape {model_image and model_image[1:]}; '
                       f'the task gives {image_shape}.')
  model_actions = inputs['prev_action'][1] and inputs['prev_action'][1][-1]
  if model_actions != int(act_space.size):
    raise ServingError(f'The model has {model_actions} actions; the task has {act_space.size}.')


def play(client, env, episodes: int, signature: str = 'serving_default', seed: int = 0,
         log: Callable[[str], None] = print) -> dict:
  """Plays `episodes` episodes of `env` with actions from `client`.

  Args:
    client: GrpcPolicyClient or RestPolicyClient (anything with `predict(signature, inputs)`).
    env: a `dreamerv2_tf.envs.Env` (reset() / step(action [A]) → docs/reference.md §1 transitions).
    episodes: number of episodes (≥ 1).
    signature: 'serving_default' (deterministic) or 'sample' (seeded [seed, request index]).
  Returns:
    {'returns': [float], 'lengths': [int agent steps], 'requests': int, 'latency_ms':
    {'median': float, 'p95': float}, 'latencies_ms': [float]}.
  Raises:
    ValueError: for episodes < 1 or another signature. ServingError: from the client.
  """
  if episodes < 1:
    raise ValueError(f'--episodes must be at least 1, got {episodes}.')
  if signature not in SIGNATURES:
    raise ValueError(f'signature is {signature!r}; allowed: {", ".join(SIGNATURES)}.')
  initial = client.predict('initial_state', {'batch_size': np.array(1, np.int32)})
  initial = {k: np.asarray(initial[k], np.float32) for k in STATE_KEYS}
  state = dict(initial)
  returns, lengths, latencies = [], [], []
  for episode in range(episodes):
    obs = env.reset()
    score, length = 0.0, 0
    while True:
      score += float(obs['reward'])
      if obs['is_last']:
        break
      if obs['is_first']:
        state = dict(initial)
      inputs = {'image': np.asarray(obs['image'], np.uint8)[None],
                'is_first': np.array([bool(obs['is_first'])]), **state}
      if signature == 'sample':
        inputs['seed'] = np.array([seed, len(latencies)], np.int64)
      start = time.perf_counter()
      outputs = client.predict(signature, inputs)
      latencies.append(1000.0 * (time.perf_counter() - start))
      state = {k: np.asarray(outputs[k], np.float32) for k in STATE_KEYS}
      obs = env.step(np.asarray(outputs['action'], np.float32)[0])
      length += 1
    returns.append(score)
    lengths.append(length)
    log(f'Episode {episode + 1}/{episodes}: return {score:g}, length {length} agent steps.')
  latency = {'median': float(np.median(latencies)) if latencies else float('nan'),
             'p95': float(np.percentile(latencies, 95)) if latencies else float('nan')}
  return {'returns': returns, 'lengths': lengths, 'requests': len(latencies),
          'latency_ms': latency, 'latencies_ms': latencies}


def _write_json(path: pathlib.Path, data: Any) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix='.tmp-', suffix='.json')
  with os.fdopen(fd, 'w') as f:
    json.dump(data, f, indent=2)
    f.write('\n')
  os.replace(tmp, path)


def run_play(args: argparse.Namespace) -> dict:
  """The `play` command: builds the client and the environment, checks, plays, reports."""
  # pylint: disable=import-outside-toplevel
  from dreamerv2_tf import envs
  from dreamerv2_tf.config import load_config

  suite, _ = envs.parse_task(args.task)
  names = args.configs or [{'atari': 'atari', 'dmc': 'dmc_vision'}[suite]]
  config = load_config(names, {'task': args.task})
  client_class = RestPolicyClient if args.rest else GrpcPolicyClient
  client = client_class(args.server, args.model, args.version, args.timeout)
  try:
    signatures = client.signatures()
    env = envs.make_env(args.task, config, 'eval', args.seed)
    try:
      check_model(signatures, args.signature, env.obs_space, env.act_space)
      print(f'Playing {args.episodes} episode(s) of {args.task} through {client.transport} '
            f'{args.server}, model {args.model!r}'
            f'{"" if args.version is None else f" version {args.version}"}, signature '
            f'{args.signature!r}.', flush=True)
      result = play(client, env, args.episodes, args.signature, args.seed,
                    log=lambda line: print(line, flush=True))
    finally:
      env.close()
  finally:
    client.close()
  returns = np.asarray(result['returns'])
  print(f'Return over {len(returns)} episode(s): mean {returns.mean():g}, std {returns.std():g}.')
  print(f'{result["requests"]} requests over {client.transport}: latency median '
        f'{result["latency_ms"]["median"]:.2f} ms, p95 {result["latency_ms"]["p95"]:.2f} ms.',
        flush=True)
  if args.json:
    summary = {k: v for k, v in result.items() if k != 'latencies_ms'}
    summary.update(task=args.task, server=args.server, model=args.model,
                   transport=client.transport, signature=args.signature, seed=args.seed)
    _write_json(pathlib.Path(args.json), summary)
  return result


def main(argv: list[str] | None = None) -> int:
  parser = cli.ArgumentParser(
      prog='python -m dreamerv2_tf.serving',
      description='Client of a DreamerV2 policy served by TensorFlow Serving.')
  commands = parser.add_subparsers(dest='command', required=True)
  p = commands.add_parser('play', help='play episodes with actions from the model server')
  p.add_argument('--server', required=True,
                 help='HOST:PORT of the gRPC port (8500) or, with --rest, the REST port (8501)')
  p.add_argument('--model', required=True, help='model name on the server (--model_name)')
  p.add_argument('--task', required=True, help='e.g. atari_pong, dmc_walker_walk')
  p.add_argument('--episodes', type=int, default=1, help='episodes to play (default 1)')
  p.add_argument('--rest', action='store_true', help="use TF Serving's REST API, not gRPC")
  p.add_argument('--signature', choices=SIGNATURES, default='serving_default',
                 help='serving_default: deterministic (default); sample: seeded sampling')
  p.add_argument('--seed', type=int, default=0, help='environment (and sample) seed')
  p.add_argument('--configs', nargs='+', default=None,
                 help='configs.yaml blocks for the environment (default: atari or dmc_vision)')
  p.add_argument('--version', type=int, default=None, help='model version (default: latest)')
  p.add_argument('--timeout', type=float, default=10.0, help='seconds per request')
  p.add_argument('--json', default=None, help='also write the results to this JSON file')
  args = parser.parse_args(argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  try:
    run_play(args)
  except (ServingError, ValueError) as e:
    print(f'serving: error: {" ".join(str(e).split())}', file=sys.stderr, flush=True)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
