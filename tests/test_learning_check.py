"""The learning check's task, its report, and (slow) its machinery end to end at tiny scale."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dreamerv2_tf import learning_task

pytest.importorskip('minigrid')

ROOT = pathlib.Path(__file__).resolve().parent.parent
LEFT, RIGHT, FORWARD = 0, 1, 2


def test_task_spaces_and_pixels():
  env = learning_task.make_task()
  obs, _ = env.reset(seed=0)
  assert env.observation_space.shape == (64, 64, 3) and env.action_space.n == 3
  assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
  # The 40x40 render enlarged by nearest neighbour: every pixel comes from the 8-pixel tiles.
  small = env.unwrapped.get_frame(highlight=env.unwrapped.highlight,
                                  tile_size=learning_task.TILE_SIZE)
  np.testing.assert_array_equal(obs, learning_task.enlarge(small))
  assert obs[0, 0].tolist() != obs[32, 32].tolist()  # walls and floor differ


def test_shortest_path_gets_the_optimal_return():
  env = learning_task.make_task(max_steps=30)
  env.reset(seed=0)
  rewards, ends = [], []
  for action in (FORWARD, FORWARD, RIGHT, FORWARD, FORWARD):
    _, reward, terminated, truncated, _ = env.step(action)
    rewards.append(reward)
    ends.append((terminated, truncated))
  assert rewards[:4] == [0, 0, 0, 0]
  assert rewards[4] == pytest.approx(1 - 0.9 * 5 / 30) == pytest.approx(
      learning_task.optimal_return(30))
  assert ends[-1] == (True, False) and not any(t for t, _ in ends[:-1])


def test_turning_only_is_truncated_at_max_steps_with_zero_return():
  env = learning_task.make_task(max_steps=7)
  returns, lengths = learning_task.play(env, lambda tran: LEFT, episodes=2, seed=3)
  assert returns == [0.0, 0.0] and lengths == [7, 7]


def test_bad_task_arguments():
  with pytest.raises(ValueError, match='Unknown MiniGrid task'):
    learning_task.make_task('CartPole-v1')
  with pytest.raises(ValueError, match='max_steps'):
    learning_task.make_task(max_steps=0)
  with pytest.raises(ValueError, match='out of range'):
    learning_task.make_task().step(3)


def test_play_passes_transitions_and_random_policy_is_seeded():
  seen = []

  def policy(tran):
    seen.append((tran['is_first'], tran['image'].shape))
    return FORWARD

  returns, lengths = learning_task.play(learning_task.make_task(max_steps=4), policy, 2, 0)
  # Forward twice reaches the wall, then bumps into it: no goal within 4 steps.
  assert returns == [0.0, 0.0] and lengths == [4, 4]
  assert [s[0] for s in seen] == [True, False, False, False] * 2
  a = learning_task.play(learning_task.make_task(), learning_task.random_policy(5), 30, 0)
  b = learning_task.play(learning_task.make_task(), learning_task.random_policy(5), 30, 0)
  assert a == b
  assert 0 < np.mean(np.array(a[0]) > 0) < 1  # a random policy sometimes reaches the goal


def test_episode_curve_and_bins(tmp_path):
  for name, rewards in (('20260101T000000000001-a-3', [0, 0, 0.5]),
                        ('20260101T000000000002-b-4', [0, 0, 0, 0])):
    np.savez(tmp_path / f'{name}.npz', reward=np.asarray(rewards, np.float32))
  steps, returns = learning_task.episode_curve(tmp_path)
  np.testing.assert_allclose(steps, [2, 5])
  np.testing.assert_allclose(returns, [0.5, 0.0])
  x, y = learning_task.binned(np.array([1, 2, 6, 9.0]), np.array([1, 3, 5, 7.0]), 5, total=15)
  np.testing.assert_array_equal(x, [5, 10, 15])
  np.testing.assert_allclose(y[:2], [2, 6])
  assert np.isnan(y[2])


def test_pass_margin():
  from dreamerv2_tf.learning_check import passes
  assert passes(0.6, 0.13, 0.85)
  assert not passes(0.45, 0.13, 0.85)  # 3.5x random but not half-way (0.49)
  assert not passes(0.2, 0.13, 0.85)
  assert not passes(0.0, 0.0, 0.85)


def _fake_result(impl, seed, learned):
  return dict(impl=impl, seed=seed, steps=1000, train_wall_s=120.0, train_cpu_s=200.0,
              learned=[learned] * 4, random=[0.0, 0.4, 0.0, 0.0],
              curve_steps=[30, 60, 80, 110], curve_returns=[0.0, 0.2, 0.5, 0.7])


def test_report_table_png_and_status(tmp_path):
  from dreamerv2_tf import learning_check
  for impl, seed, learned in (('port', 0, 0.8), ('authors', 0, 0.7), ('port', 1, 0.15)):
    (tmp_path / f'{impl}_{seed}.json').write_text(json.dumps(_fake_result(impl, seed, learned)))
  png = tmp_path / 'curves.png'
  status = learning_check.main(['--report', '--outdir', str(tmp_path), '--png', str(png),
                                '--bin', '50'])
  assert status == 1  # port seed 1: 0.15 is not half-way from 0.1 to 0.85
  table = (tmp_path / 'table.md').read_text().splitlines()
  rows = [line for line in table if line.startswith('| port') or line.startswith('| authors')]
  assert rows[0].startswith('| port | 0 | 0.100 (25%) | 0.800 (100%) | 1,000 | 2.0 | 200 | yes')
  assert rows[1].startswith('| port | 1 |') and rows[1].endswith('NO |')
  assert rows[2].startswith('| authors | 0 |')
  import matplotlib.image
  image = matplotlib.image.imread(png)
  assert image.ndim == 3 and image.shape[0] > 200 and png.stat().st_size < 200_000


def test_bad_arguments_exit_2(capsys):
  from dreamerv2_tf import learning_check
  with pytest.raises(SystemExit) as e:
    learning_check.main(['--episodes', '0'])
  assert e.value.code == 2
  with pytest.raises(SystemExit):
    learning_check.main(['--set', 'steps'])
  assert "KEY=VALUE items, got 'steps'" in capsys.readouterr().err


TINY = ['steps=160', 'prefill=60', 'pretrain=1', 'train_every=40', 'log_every=80',
        'eval_every=1000', 'eval_eps=1', 'dataset.batch=2', 'imag_horizon=3',
        'rssm.hidden=16', 'rssm.deter=16', 'rssm.stoch=4', 'rssm.discrete=4',
        'encoder.cnn_depth=2', 'decoder.cnn_depth=2', 'reward_head.units=8',
        'discount_head.units=8', 'actor.units=8', 'critic.units=8']


@pytest.mark.slow
def test_learning_check_end_to_end_tiny(tmp_path):
  png = tmp_path / 'curves.png'
  proc = subprocess.run(
      [sys.executable, '-m', 'dreamerv2_tf.learning_check', '--seeds', '0', '--episodes', '3',
       '--outdir', str(tmp_path), '--png', str(png), '--bin', '40', '--set', *TINY],
      cwd=ROOT, capture_output=True, text=True, timeout=1800)
  out = proc.stdout + proc.stderr
  assert proc.returncode in (0, 1), out  # 1: a 160-step run is not expected to beat random
  assert '[port s0]' in out and 'Prefill' in out  # the loop's progress lines, relayed
  result = json.loads((tmp_path / 'port_0.json').read_text())
  assert len(result['learned']) == 3 and len(result['random']) == 3
  assert result['steps'] == 160 and result['train_cpu_s'] > 0
  assert result['curve_steps'][-1] <= 160 and len(result['curve_returns']) >= 2
  assert '| port | 0 |' in (tmp_path / 'table.md').read_text()
  assert png.exists() and png.stat().st_size < 200_000
