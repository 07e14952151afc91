"""The benchmark command runs at tiny size and reports every key as a positive number.

Benchmarks print numbers; nothing here asserts a speed (house rule). The fast-path test checks
that compiling the train step (tf.function, the default) computes the same losses and gradients
as running the same code eagerly.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import run_tool

REQUIRED = ('update_s', 'update_cpu_s', 'first_update_s', 'policy_s', 'env_steps_per_s',
            'replay_batches_per_s')


def test_bench_json_at_debug_size():
  proc = run_tool(['-m', 'dreamerv2_tf.bench', '--configs', 'atari,debug', '--json',
                   '--repeats', '1', '--updates', '1', '--policy-steps', '3', '--envs', '1',
                   '--env-steps', '50', '--replay-steps', '200', '--replay-batches', '5',
                   '--loop-updates', '1', '--skip', 'matmul'], timeout=2400)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  for key in (*REQUIRED, 'policy16_s', 'raw_ale_steps_per_s', 'train_frames_per_s',
              'peak_rss_mb', 'build_s'):
    assert isinstance(out[key], float) and math.isfinite(out[key]) and out[key] > 0, key
  assert out['batch'] == [2, 10]
  assert out['replay_bytes_per_step'] == 64 * 64 + 6 * 4 + 4 + 3  # image, action, reward, flags
  assert out['machine']['logical_cpus'] >= 1 and out['machine']['cpu']
  assert out['update_s'] < out['first_update_s']  # the first update includes tracing
  assert 'authors' not in out and 'floor_fraction' not in out  # no peer, debug size


def test_bench_rejects_bad_arguments():
  proc = run_tool(['-m', 'dreamerv2_tf.bench', '--repeats', '0'], timeout=120)
  assert proc.returncode == 2
  assert '--repeats' in proc.stderr.splitlines()[-1]
  proc = run_tool(['-m', 'dreamerv2_tf.bench', '--peer', 'python', '--peer-script', '/nope.py'],
                  timeout=120)
  assert proc.returncode == 2 and '/nope.py' in proc.stderr.splitlines()[-1]


def _agent(jit: bool):
  import tensorflow as tf
  from dreamerv2_tf import envs, seeding
  from dreamerv2_tf.agent import Agent
  from dreamerv2_tf.config import load_config
  config = load_config(['atari', 'debug'], {'jit': jit, 'deterministic_check': True})
  env = envs.make_env('atari_pong', config)
  spaces = env.obs_space, env.act_space
  env.close()
  seeding.set_global_seeds(0)
  return Agent(config, *spaces, tf.Variable(0, dtype=tf.int64))


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-6)))


def test_compiled_update_matches_eager_update():
  """tf.function without AutoGraph (the fast path) vs the same step run eagerly, with draws
  replaced by modes (`deterministic_check`), from the same weights on the same batch.

  Tolerances: losses 1e-5 relative; per-variable gradient norms 1e-3 relative (Grappler fuses
  matmul/conv + bias + ELU and reorders float32 sums; one decoder gradient norm differed by
  1.0e-4 in a measured run); weights after the update 5e-4 absolute (Adam's first step moves
  each weight by about lr·sign(gradient), lr ≤ 2e-4, so only near-zero gradient entries can
  differ, by at most 2·lr)."""
  from dreamerv2_tf.bench import synthetic_batch
  fast, eager = _agent(True), _agent(False)
  assert len(fast.variables) == len(eager.variables)
  for a, b in zip(eager.variables, fast.variables):
    b.assign(a)  # identical starting weights whatever the initialisers did
  data = synthetic_batch(2, 10, (64, 64, 1), 6, seed=3)
  out_fast, out_eager = fast.train(data), eager.train(data)
  assert set(out_fast) == set(out_eager)
  grads = [k for k in out_fast if 'grad_norm' in k]
  losses = [k for k in out_fast if k.endswith('_loss')]
  assert len(grads) > 20 and {'model_loss', 'actor_loss', 'critic_loss'} <= set(losses)
  for keys, rtol in ((losses, 1e-5), (grads, 1e-3)):
    worst = max(keys, key=lambda k: _rel(out_fast[k], out_eager[k]))
    assert _rel(out_fast[worst], out_eager[worst]) < rtol, (
        worst, float(out_fast[worst]), float(out_eager[worst]))
  for a, b in zip(eager.variables, fast.variables):
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=5e-4, err_msg=a.name)


def test_bf16_start_up_note_follows_the_cpu_flags():
  """AMX: no note; AVX512_BF16 alone: measured both faster (AMD EPYC) and slower (Intel Xeon), so
  the note asks for a bench run; neither: bf16 is emulated and slower, use float32."""
  from dreamerv2_tf import device
  assert device.bf16_cpu_note({'amx_bf16', 'avx512_bf16', 'avx2'}) == ''
  note = device.bf16_cpu_note({'avx512_bf16', 'avx512f'})
  assert '1.5x faster' in note and '--precision bf16' in note
  assert 'use precision: 32 here' in device.bf16_cpu_note({'avx2', 'fma'})
  assert device.cpu_has_amx() == ('amx_bf16' in device.cpu_flags())
