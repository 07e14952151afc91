"""TEST DOUBLES of TensorFlow Serving: a loopback gRPC PredictionService and a REST server.

These are NOT TensorFlow Serving. No `tensorflow_model_server` can be installed on these machines
(it is not on PyPI or in Debian's archive), so the client `dreamerv2_tf.serving` is tested end to
end against these stand-ins, which serve the same SavedModel version folder the way TF Serving's
documented APIs do:

- `ServedModelDouble` loads the newest numeric version under a model base path (TF Serving's
  default "latest" version policy), replays its `assets.extra/tf_serving_warmup_requests` (and
  fails if one does not run), reads the SignatureDefs from `saved_model.pb`, and answers
  Predict requests by calling the signature's concrete function (`tf.saved_model.load`), after
  checking the model name, version, signature name, input keys, dtypes and shapes the way the
  server rejects bad requests (NOT_FOUND / INVALID_ARGUMENT).
- `PredictionServiceDouble`: tensorflow-serving-api's generated `PredictionServiceServicer`
  with Predict and GetModelMetadata (signature_def), on a grpc server bound to 127.0.0.1.
- `RestDouble`: an HTTP server on 127.0.0.1 following TF Serving's REST API:
  `GET /v1/models/NAME[/versions/V]` (status), `GET .../metadata`, `POST ...:predict` with the
  columnar (`inputs` → `outputs`) or row (`instances` → `predictions`) JSON formats, and
  `{"error": message}` bodies for failures.

Both record the signature of every request they answered in `ServedModelDouble.requests`.

Run by hand, with flags named like tensorflow_model_server's:
    python -m tests.serving_double --model_name=pong --model_base_path=/tmp/pong_export \
        --port=8500 --rest_api_port=8501
"""

from __future__ import annotations

import argparse
import http.server
import json
import pathlib
import re
import sys
import threading
from concurrent import futures
from typing import Any, Mapping

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, predict_pb2,
                                     prediction_log_pb2, prediction_service_pb2_grpc)

WARMUP_PATH = pathlib.Path('assets.extra') / 'tf_serving_warmup_requests'


class DoubleError(Exception):
  """A request the double rejects; `code` is the grpc.StatusCode TF Serving would answer."""

  def __init__(self, code: grpc.StatusCode, message: str):
    super().__init__(message)
    self.code = code


class ServedModelDouble:
  """One model as TF Serving would serve it from `base_path` (newest numeric version).

  Args:
    name: the model name requests must carry.
    base_path: folder of version folders `<int>/saved_model.pb` (TF Serving's model_base_path).
  Raises:
    ValueError: no version folder; a warm-up request that fails.
  """

  def __init__(self, name: str, base_path: str | pathlib.Path):
    self.name = name
    base = pathlib.Path(base_path)
    versions = sorted(int(p.name) for p in base.iterdir()
                      if p.is_dir() and p.name.isdigit() and (p / 'saved_model.pb').is_file())
    if not versions:
      raise ValueError(f'No servable version under {base} (expected <int>/saved_model.pb).')
    self.version = versions[-1]
    self.path = base / str(self.version)
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((self.path / 'saved_model.pb').read_bytes())
    serve = [m for m in proto.meta_graphs if 'serve' in m.meta_info_def.tags]
    if not serve:
      raise ValueError(f'{self.path} has no MetaGraph tagged "serve".')
    self.signature_defs = {k: v for k, v in serve[0].signature_def.items()
                           if not k.startswith('__')}
    self.loaded = tf.saved_model.load(str(self.path), tags=['serve'])
    self.lock = threading.Lock()
    self.requests: list[str] = []
    self.warmup_count = self._warm_up()

  def _warm_up(self) -> int:
    path = self.path / WARMUP_PATH
    if not path.exists():
      return 0
    count = 0
    for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
      log = prediction_log_pb2.PredictionLog.FromString(record)
      if log.WhichOneof('log_type') != 'predict_log':
        raise ValueError(f'Warm-up record {count} is a {log.WhichOneof("log_type")}, not a '
                         'predict_log.')
      request = log.predict_log.request
      inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
      try:
        self.run(request.model_spec.signature_name, inputs, check_dtypes=True)
      except DoubleError as e:
        raise ValueError(f'Warm-up request {count} failed: {e}') from e
      count += 1
    return count

  def check_spec(self, name: str, version: int | None) -> None:
    if name != self.name:
      raise DoubleError(grpc.StatusCode.NOT_FOUND,
                        f'Servable not found for request: Latest({name})')
    if version is not None and version != self.version:
      raise DoubleError(grpc.StatusCode.NOT_FOUND,
                        f'Servable not found for request: Specific({name}, {version})')

  def signature(self, name: str):
    name = name or 'serving_default'
    if name not in self.signature_defs:
      raise DoubleError(grpc.StatusCode.INVALID_ARGUMENT,
                        f'Serving signature name: "{name}" not found in signature def')
    return name, self.signature_defs[name]

  def run(self, signature_name: str, inputs: Mapping[str, Any],
          check_dtypes: bool = True) -> dict[str, np.ndarray]:
    """Runs a signature. gRPC inputs must have the signature's dtypes (`check_dtypes`); REST
    inputs (JSON values) are converted to them, as TF Serving does."""
    name, sig = self.signature(signature_name)
    expected, given = set(sig.inputs), set(inputs)
    if expected != given:
      raise DoubleError(grpc.StatusCode.INVALID_ARGUMENT,
                        f'input size does not match signature: {len(given)}!={len(expected)} '
                        f'len({{{", ".join(sorted(given))}}}) != '
                        f'len({{{", ".join(sorted(expected))}}})')
    tensors = {}
    for key, info in sig.inputs.items():
      dtype = tf.dtypes.as_dtype(info.dtype)
      value = inputs[key]
      if check_dtypes:
        value = np.asarray(value)
        if value.dtype != dtype.as_numpy_dtype:
          raise DoubleError(grpc.StatusCode.INVALID_ARGUMENT,
                            f'Expects arg[{key}] to be {dtype.name} but {value.dtype} is '
                            'provided')
      else:
        try:
          value = np.asarray(value, dtype.as_numpy_dtype)
        except (TypeError, ValueError, OverflowError) as e:
          raise DoubleError(grpc.StatusCode.INVALID_ARGUMENT,
                            f'Input {key} cannot be converted to {dtype.name}: {e}') from None
      shape = info.tensor_shape
      if not shape.unknown_rank:
        dims = [d.size for d in shape.dim]
        if len(dims) != value.ndim or any(d != -1 and d != s for d, s in zip(dims, value.shape)):
          raise DoubleError(grpc.StatusCode.INVALID_ARGUMENT,
                            f'Input {key} has shape {list(value.shape)}; the signature takes '
                            f'{dims} (-1: any).')
      tensors[key] = tf.constant(value, dtype)
    try:
      outputs = self.loaded.signatures[name](**tensors)
    except tf.errors.OpError as e:
      raise DoubleError(grpc.StatusCode.INVALID_ARGUMENT, e.message) from None
    with self.lock:
      self.requests.append(name)
    return {k: v.numpy() for k, v in outputs.items()}

  def signature_def_map(self):
    defs = get_model_metadata_pb2.SignatureDefMap()
    for key, value in self.signature_defs.items():
      defs.signature_def[key].CopyFrom(value)
    return defs


class PredictionServiceDouble(prediction_service_pb2_grpc.PredictionServiceServicer):
  """gRPC PredictionService test double (Predict and GetModelMetadata) over ServedModelDouble."""

  def __init__(self, model: ServedModelDouble):
    self.model = model

  @staticmethod
  def _version(spec) -> int | None:
    return spec.version.value if spec.HasField('version') else None

  def Predict(self, request, context):  # pylint: disable=invalid-name
    try:
      self.model.check_spec(request.model_spec.name, self._version(request.model_spec))
      inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
      name, _ = self.model.signature(request.model_spec.signature_name)
      outputs = self.model.run(name, inputs, check_dtypes=True)
    except DoubleError as e:
      context.abort(e.code, str(e))
    response = predict_pb2.PredictResponse()
    response.model_spec.name = self.model.name
    response.model_spec.version.value = self.model.version
    response.model_spec.signature_name = name
    wanted = set(request.output_filter) or set(outputs)
    for key in wanted:
      if key not in outputs:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f'output tensor alias not found in signature: {key}')
      response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key]))
    return response

  def GetModelMetadata(self, request, context):  # pylint: disable=invalid-name
    try:
      self.model.check_spec(request.model_spec.name, self._version(request.model_spec))
    except DoubleError as e:
      context.abort(e.code, str(e))
    if list(request.metadata_field) != ['signature_def']:
      context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                    'Metadata field(s) must be exactly "signature_def"')
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = self.model.name
    response.model_spec.version.value = self.model.version
    response.metadata['signature_def'].Pack(self.model.signature_def_map())
    return response


def start_grpc(model: ServedModelDouble, port: int = 0) -> tuple[grpc.Server, int]:
  """Starts the gRPC double on 127.0.0.1 (`port` 0: a free port); returns (server, port)."""
  server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      PredictionServiceDouble(model), server)
  bound = server.add_insecure_port(f'127.0.0.1:{port}')
  if not bound:
    raise OSError(f'Could not bind 127.0.0.1:{port}.')
  server.start()
  return server, bound


_HTTP_STATUS = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400}
_MODEL_PATH = re.compile(r'^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?'
                         r'(?P<rest>/metadata|:predict)?$')


class _RestHandler(http.server.BaseHTTPRequestHandler):
  """TF Serving's REST API (status, metadata, predict) over the server's `model`."""

  protocol_version = 'HTTP/1.1'  # keep-alive, like the real server
  disable_nagle_algorithm = True  # headers and body go out in separate writes
  model: ServedModelDouble

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    del format, args  # quiet

  def _send(self, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    self.send_response(status)
    self.send_header('Content-Type', 'application/json')
    self.send_header('Content-Length', str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def _route(self, method: str):
    match = _MODEL_PATH.match(self.path)
    if not match:
      raise DoubleError(grpc.StatusCode.NOT_FOUND, f'Malformed request: {method} {self.path}')
    version = int(match['version']) if match['version'] else None
    self.model.check_spec(match['name'], version)
    return match['rest'] or ''

  def do_GET(self):  # pylint: disable=invalid-name
    try:
      rest = self._route('GET')
      if rest == ':predict':
        raise DoubleError(grpc.StatusCode.NOT_FOUND, f'Malformed request: GET {self.path}')
    except DoubleError as e:
      return self._send(_HTTP_STATUS.get(e.code, 500), {'error': str(e)})
    spec = {'name': self.model.name, 'signature_name': '', 'version': str(self.model.version)}
    if rest == '/metadata':
      defs = json_format.MessageToDict(self.model.signature_def_map(),
                                       preserving_proto_field_name=True)
      return self._send(200, {'model_spec': spec, 'metadata': {'signature_def': defs}})
    return self._send(200, {'model_version_status': [{
        'version': str(self.model.version), 'state': 'AVAILABLE',
        'status': {'error_code': 'OK', 'error_message': ''}}]})

  def do_POST(self):  # pylint: disable=invalid-name
    length = int(self.headers.get('Content-Length', 0))
    raw = self.rfile.read(length)
    try:
      if self._route('POST') != ':predict':
        raise DoubleError(grpc.StatusCode.NOT_FOUND, f'Malformed request: POST {self.path}')
      try:
        body = json.loads(raw)
      except ValueError as e:
        raise DoubleError(grpc.StatusCode.INVALID_ARGUMENT, f'JSON Parse error: {e}') from None
      if not isinstance(body, dict) or ('inputs' in body) == ('instances' in body):
        raise DoubleError(grpc.StatusCode.INVALID_ARGUMENT,
                          'Missing or both "inputs" and "instances" keys in the request.')
      name, sig = self.model.signature(body.get('signature_name', ''))
      if 'inputs' in body:
        inputs = body['inputs']
        if not isinstance(inputs, dict):
          (key,) = sig.inputs if len(sig.inputs) == 1 else (None,)
          inputs = {key: inputs}
        outputs = self.model.run(name, inputs, check_dtypes=False)
        listed = {k: v.tolist() for k, v in outputs.items()}
        return self._send(200, {'outputs': listed if len(listed) > 1 else
                                next(iter(listed.values()))})
      instances = body['instances']
      if not isinstance(instances, list) or not all(isinstance(i, dict) for i in instances):
        raise DoubleError(grpc.StatusCode.INVALID_ARGUMENT,
                          '"instances" must be a list of objects with the named inputs.')
      inputs = {k: [i.get(k) for i in instances] for k in sig.inputs}
      outputs = self.model.run(name, inputs, check_dtypes=False)
      predictions = [{k: v[i].tolist() for k, v in outputs.items()}
                     for i in range(len(instances))]
      return self._send(200, {'predictions': predictions})
    except DoubleError as e:
      return self._send(_HTTP_STATUS.get(e.code, 500), {'error': str(e)})


class RestDouble:
  """REST test double on 127.0.0.1 (`port` 0: a free port); serves in a daemon thread."""

  def __init__(self, model: ServedModelDouble, port: int = 0):
    handler = type('Handler', (_RestHandler,), {'model': model})
    self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', port), handler)
    self.httpd.daemon_threads = True
    self.port = self.httpd.server_address[1]
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
    self.thread.start()

  def stop(self) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description='TEST DOUBLE of tensorflow_model_server (gRPC + REST on 127.0.0.1).')
  parser.add_argument('--model_name', required=True)
  parser.add_argument('--model_base_path', required=True)
  parser.add_argument('--port', type=int, default=8500)
  parser.add_argument('--rest_api_port', type=int, default=8501)
  args = parser.parse_args(argv)
  model = ServedModelDouble(args.model_name, args.model_base_path)
  server, port = start_grpc(model, args.port)
  rest = RestDouble(model, args.rest_api_port)
  print(f'TEST DOUBLE serving {model.path} (version {model.version}, {model.warmup_count} '
        f'warm-up requests replayed) as {args.model_name!r}: gRPC 127.0.0.1:{port}, REST '
        f'127.0.0.1:{rest.port}. Ctrl-C stops.', flush=True)
  try:
    server.wait_for_termination()
  except KeyboardInterrupt:
    pass
  rest.stop()
  server.stop(0)
  return 0


if __name__ == '__main__':
  sys.exit(main())
