"""tf.distribute on a CPU (issue 15): config checks, and in subprocesses (logical devices and
strategies are chosen once per process) a mirrored update equal to the single-device one,
checkpoints across strategies, two multi-worker processes on 127.0.0.1, train.py end to end.

The update comparisons use `deterministic_check: true` (every random draw is its mode), so an
update depends on weights and batch alone (tests/distribute_worker.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import types

import numpy as np
import pytest

from conftest import REPO, run_tool, tool_env
from dreamerv2_tf import distribute
from dreamerv2_tf.config import ConfigError, load_config
from dreamerv2_tf.validate import validate

WORKER = str(REPO / 'tests' / 'distribute_worker.py')
# Relative tolerance of losses and weights, mirrored (2 replicas) vs one device: the two
# sums a gradient is made of are added in another order (measured: ~1e-7 on losses).
RTOL = 1e-4


# ------------------------------------------------------------------ checks, in-process


@pytest.mark.parametrize('overrides, message', [
    ({'strategy': 'tpu'}, "'strategy' is 'tpu'; allowed: default, mirrored, multi_worker"),
    ({'cpu_devices': -1}, "'cpu_devices' is -1; it must be >= 0"),
])
def test_bad_strategy_values_are_one_line_errors(overrides, message):
  with pytest.raises(ConfigError) as error:
    validate(load_config(['atari', 'debug'], overrides), check_task=False)
  assert message in str(error.value) and '\n' not in str(error.value)


def test_strategy_keys_default_to_one_device():
  config = load_config(['atari', 'debug'])
  assert config.strategy == 'default' and config.cpu_devices == 0


@pytest.mark.parametrize('tf_config, message', [
    (None, 'needs the TF_CONFIG environment variable'),
    ('{not json', 'TF_CONFIG is not valid'),
    ('{"cluster": {"worker": ["a:1"]}}', 'TF_CONFIG is not valid'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     'does not name one of the 2 workers'),
])
def test_tf_config_errors(monkeypatch, tf_config, message):
  if tf_config is None:
    monkeypatch.delenv('TF_CONFIG', raising=False)
  else:
    monkeypatch.setenv('TF_CONFIG', tf_config)
  with pytest.raises(ConfigError, match=message) as error:
    distribute._tf_config()  # pylint: disable=protected-access
  assert '\n' not in str(error.value)


def test_global_batch_must_split_evenly():
  three = types.SimpleNamespace(num_replicas_in_sync=3)
  assert distribute.per_replica_batch(three, 12) == 4
  with pytest.raises(ConfigError, match=r"'dataset.batch' is 4; .* multiple of the 3 replicas"):
    distribute.per_replica_batch(three, 4)


def test_replica_helpers_are_identities_on_one_device():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  x = tf.constant([1.0, 2.0])
  assert distribute.replica_mean(x) is x and distribute.num_replicas() == 1
  assert float(distribute.max_of_mean(tf.constant(0.5), 1.0)) == 1.0
  assert float(distribute.max_of_mean(tf.constant(1.5), 1.0)) == 1.5
  assert distribute.is_chief()


# ------------------------------------------------------------------ subprocesses


def worker(out, *args, env=None, wait=True):
  command = [sys.executable, WORKER, '--out', str(out), *map(str, args)]
  if not wait:
    return subprocess.Popen(command, cwd=REPO, env=env or tool_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  result = subprocess.run(command, cwd=REPO, env=env or tool_env(), capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return np.load(out)


def metrics_of(run, k) -> dict:
  return dict(zip(run['metric_names'], run[f'metrics_{k}']))


def assert_same_update(a, b, k):
  """Equal losses (every metric but the per-replica `*_std` statistics) and weights."""
  ma, mb = metrics_of(a, k), metrics_of(b, k)
  assert set(ma) == set(mb)
  for name in ma:
    if not name.endswith('_std'):
      np.testing.assert_allclose(mb[name], ma[name], rtol=RTOL, atol=1e-6, err_msg=name)
  assert int(a['num_variables']) == int(b['num_variables'])
  for i in range(int(a['num_variables'])):
    x, y = a[f'var_{i}'], b[f'var_{i}']
    if x.dtype.kind == 'f':  # Adam's second moments are ~1e-10: atol covers them.
      np.testing.assert_allclose(y, x, rtol=RTOL, atol=1e-8, err_msg=f'variable {i}')
    else:
      np.testing.assert_array_equal(y, x, err_msg=f'variable {i}')


@pytest.mark.slow
def test_mirrored_update_equals_single_device_and_checkpoints_cross(tmp_path):
  single = worker(tmp_path / 'a1.npz', '--save_init', tmp_path / 'init', '--save',
                  tmp_path / 'a1')
  # 1 -> 2 devices: the initial weights restore under mirrored; the update is the same.
  mirrored = worker(tmp_path / 'm1.npz', '--strategy', 'mirrored', '--cpu_devices', 2,
                    '--restore', tmp_path / 'init', '--save', tmp_path / 'm1')
  assert float(mirrored['replica_gap']) == 0.0  # both replicas hold the same weights
  assert_same_update(single, mirrored, 0)
  loss = metrics_of(mirrored, 0)['model_loss']
  assert np.isfinite(loss) and loss > 0
  # 2 -> 1 device: the mirrored checkpoint restores on one device and training continues
  # exactly as under mirrored from the single-device checkpoint (1 -> 2 devices).
  continued = worker(tmp_path / 'c2.npz', '--restore', tmp_path / 'm1', '--first_step', 1)
  mirrored2 = worker(tmp_path / 'd2.npz', '--strategy', 'mirrored', '--cpu_devices', 2,
                     '--restore', tmp_path / 'a1', '--first_step', 1)
  assert_same_update(continued, mirrored2, 1)
  assert not np.allclose(continued['var_0'], single['var_0'])  # it did train


def free_ports(n: int) -> list[int]:
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


@pytest.mark.slow
def test_multi_worker_two_processes_end_with_identical_weights(tmp_path):
  hosts = [f'127.0.0.1:{port}' for port in free_ports(2)]
  procs = []
  for index in range(2):
    env = tool_env()
    env['TF_CONFIG'] = json.dumps({'cluster': {'worker': hosts},
                                   'task': {'type': 'worker', 'index': index}})
    procs.append(worker(tmp_path / f'w{index}.npz', '--strategy', 'multi_worker', '--steps', 3,
                        env=env, wait=False))
  outputs = []
  for proc in procs:
    try:
      outputs.append(proc.communicate(timeout=900)[0])
    finally:
      proc.kill()
  for proc, output in zip(procs, outputs):
    assert proc.returncode == 0, output[-3000:]
  assert 'multi_worker over 2 replica(s)' in outputs[0]
  w0, w1 = np.load(tmp_path / 'w0.npz'), np.load(tmp_path / 'w1.npz')
  for k in range(3):
    np.testing.assert_allclose(w1[f'metrics_{k}'], w0[f'metrics_{k}'], rtol=1e-6)
    assert np.all(np.isfinite(w0[f'metrics_{k}']))
  for i in range(int(w0['num_variables'])):
    np.testing.assert_array_equal(w1[f'var_{i}'], w0[f'var_{i}'], err_msg=f'variable {i}')
  names = list(w0['metric_names'])
  updates = [int(w0[f'var_{i}']) for i in range(int(w0['num_variables']))
             if w0[f'var_{i}'].dtype.kind == 'i' and w0[f'var_{i}'].ndim == 0]
  assert 3 in updates, (names, updates)  # the `updates` counter (and Adam's iterations)


@pytest.mark.slow
def test_train_cli_mirrored_on_two_cpu_devices_then_resumed_on_one(tmp_path):
  logdir = tmp_path / 'run'
  args = ['train.py', '--configs', 'atari', 'debug', '--logdir', str(logdir)]
  result = run_tool([*args, '--strategy=mirrored', '--cpu_devices=2', '--steps=500',
                     '--eval_every=0', '--log_every=100'], timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert 'strategy mirrored over 2 replica(s) (CPU split into 2 logical devices)' in result.stdout
  records = [json.loads(line) for line in (logdir / 'metrics.jsonl').read_text().splitlines()]
  losses = [r['model_loss'] for r in records if 'model_loss' in r]
  assert losses and all(np.isfinite(losses))
  # The mirrored run's checkpoint resumes on one device and trains on.
  result = run_tool([*args, '--strategy=default', '--steps=600', '--eval_every=0'], timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  task_line = next(line for line in result.stdout.splitlines() if line.startswith('Task:'))
  assert 'Resumed from' in result.stdout and 'mirrored' not in task_line  # one device
  assert 'Finished at agent step 600' in result.stdout
