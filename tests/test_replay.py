"""Episode files and sequence replay (issue 3; SPEC.md §1, §6)."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from dreamerv2_tf.replay import Replay, load_episodes, save_episode


def make_episode(length: int, base: int = 0, image_shape=(4, 4, 1)) -> dict[str, np.ndarray]:
  """action[t] = one-hot(t mod 4), reward[t] = base + t, image filled with t mod 256."""
  t = np.arange(length)
  return {
      'image': np.broadcast_to((t % 256).astype(np.uint8)[:, None, None, None],
                               (length,) + image_shape).copy(),
      'action': np.eye(4, dtype=np.float32)[t % 4] * (t > 0)[:, None],
      'reward': (base + t).astype(np.float64),  # stored as float32
      'is_first': t == 0,
      'is_last': t == length - 1,
      'is_terminal': t == length - 1,
      'log_step': t.astype(np.int64),  # stored as int32, never sampled
  }


def collect(dataset, sequences: int) -> dict[str, np.ndarray]:
  batches = []
  for batch in dataset:
    batches.append({k: v.numpy() for k, v in batch.items()})
    if sum(len(b['reward']) for b in batches) >= sequences:
      break
  return {k: np.concatenate([b[k] for b in batches])[:sequences] for k in batches[0]}


def test_episode_file_round_trip(tmp_path):
  episode = make_episode(60)
  path = save_episode(tmp_path, episode)
  assert re.fullmatch(r'\d{8}T\d{12}-[0-9a-f]{32}-60\.npz', path.name)
  assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
  loaded = load_episodes(tmp_path)
  assert list(loaded) == [path.name]
  back = loaded[path.name]
  assert back['reward'].dtype == np.float32 and back['log_step'].dtype == np.int32
  assert back['image'].dtype == np.uint8 and back['is_first'].dtype == bool
  for key in episode:
    np.testing.assert_array_equal(back[key], episode[key])


def test_corrupt_truncated_and_foreign_files_are_skipped(tmp_path, caplog):
  good = save_episode(tmp_path, make_episode(60))
  truncated = tmp_path / ('20200101T000000-' + 'a' * 32 + '-60.npz')
  truncated.write_bytes(good.read_bytes()[:200])
  garbage = tmp_path / 'garbage.npz'
  garbage.write_bytes(b'not a zip at all')
  foreign = tmp_path / 'foreign.npz'
  np.savez(foreign, weights=np.zeros(3))
  uneven = tmp_path / 'uneven.npz'
  np.savez(uneven, **{**make_episode(60), 'reward': np.zeros(59)})
  with caplog.at_level(logging.WARNING, logger='dreamerv2_tf.replay'):
    replay = Replay(tmp_path, capacity=None, minlen=1)
  assert replay.episode_names() == [good.name]
  for bad in (truncated, garbage, foreign, uneven):
    assert bad.exists()  # never deleted
    assert any(str(bad) in record.getMessage() for record in caplog.records), bad.name


def test_replay_fidelity_and_is_first(tmp_path):
  replay = Replay(tmp_path, capacity=None, minlen=10, seed=0)
  for i, length in enumerate((10, 37, 80, 200)):
    replay.add_episode(make_episode(length, base=1000 * i))
  dataset = replay.dataset(batch=16, length=10, prioritize_ends=True, prefetch=2)
  batch = collect(dataset, 1000)
  assert set(batch) == {'image', 'action', 'reward', 'is_first', 'is_last', 'is_terminal'}
  assert batch['image'].shape == (1000, 10, 4, 4, 1) and batch['image'].dtype == np.uint8
  assert batch['action'].dtype == np.float32 and batch['reward'].dtype == np.float32
  t = batch['reward'] % 1000  # the time index inside the episode
  np.testing.assert_array_equal(np.diff(batch['reward'], axis=1), 1)  # contiguous windows
  expected_action = np.eye(4)[t.astype(int) % 4] * (t > 0)[..., None]
  assert np.sum(np.any(batch['action'] != expected_action, axis=-1)) == 0
  assert np.array_equal(batch['image'][:, :, 0, 0, 0], (t % 256).astype(np.uint8))
  assert batch['is_first'][:, 0].all() and not batch['is_first'][:, 1:].any()
  # is_last only at an episode's final step.
  lengths = np.array([10, 37, 80, 200])[(batch['reward'] // 1000).astype(int)]
  np.testing.assert_array_equal(batch['is_last'], t == lengths - 1)


def test_prioritize_ends_samples_episode_ends_more_often(tmp_path):
  length, window, n = 100, 10, 3200
  replay = Replay(tmp_path, capacity=None, minlen=window, seed=1)
  replay.add_episode(make_episode(length))
  share = {}
  for prioritize in (False, True):
    batch = collect(replay.dataset(32, window, prioritize), n)
    share[prioritize] = batch['is_last'].any(axis=1).mean()
    starts = batch['reward'][:, 0].astype(int)
    assert starts.min() >= 0 and starts.max() == length - window
  # Exact probabilities of the last window (SPEC.md §6): 1/91 without, 11/101 with.
  assert share[False] == pytest.approx(1 / 91, abs=5 * np.sqrt(1 / 91 / n))
  assert share[True] == pytest.approx(11 / 101, abs=5 * np.sqrt(11 / 101 / n))
  assert share[True] > 4 * share[False]


def test_capacity_evicts_oldest_from_memory_only(tmp_path):
  replay = Replay(tmp_path, capacity=250, minlen=10, seed=0)
  for i in range(5):
    replay.add_episode(make_episode(100, base=1000 * i))
  assert replay.num_steps == 200 and replay.num_episodes == 2
  assert replay.total_steps == 500 and replay.total_episodes == 5
  assert len(list(tmp_path.glob('*.npz'))) == 5  # files stay on disk
  batch = replay.sample(64, 20, prioritize_ends=True)
  episodes = set((batch['reward'][:, 0] // 1000).astype(int))
  assert episodes == {3, 4}  # only the two newest, read correctly across the ring's wrap
  np.testing.assert_array_equal(np.diff(batch['reward'], axis=1), 1)
  t = batch['reward'] % 1000
  np.testing.assert_array_equal(batch['image'][:, :, 0, 0, 0], t.astype(np.uint8))
  restarted = Replay(tmp_path, capacity=250, minlen=10)  # resumes from the newest files
  assert restarted.num_steps == 200 and restarted.episode_names() == replay.episode_names()


def test_add_step_per_worker_minlen_and_restart(tmp_path, caplog):
  replay = Replay(tmp_path, capacity=None, minlen=5, seed=0)
  episodes = {0: make_episode(7, base=0), 1: make_episode(3, base=1000)}
  rows = {w: [{k: v[t] for k, v in ep.items()} for t in range(len(ep['reward']))]
          for w, ep in episodes.items()}
  done = {}
  with caplog.at_level(logging.INFO, logger='dreamerv2_tf.replay'):
    for t in range(7):
      for worker in (0, 1):
        if t < len(rows[worker]):
          result = replay.add_step(rows[worker][t], worker=worker)
          if result is not None:
            done[worker] = result
  assert set(done) == {0, 1} and len(done[0]['reward']) == 7
  assert replay.num_episodes == 1 and replay.num_steps == 7  # the 3-step episode is too short
  assert any('3 transitions' in r.getMessage() for r in caplog.records)
  assert len(list(tmp_path.glob('*.npz'))) == 1
  # An is_first transition restarts the worker's episode; the unfinished one is dropped.
  replay.add_step(rows[0][0])
  replay.add_step(rows[0][1])
  for row in rows[0]:
    replay.add_step(row)
  assert replay.num_episodes == 2 and replay.num_steps == 14
  with pytest.raises(ValueError, match='is_first False'):
    replay.add_step(rows[0][3], worker=5)
  restarted = Replay(tmp_path, capacity=None, minlen=5)
  assert restarted.num_episodes == 2 and restarted.num_steps == 14
  assert restarted.total_steps == 14


def test_sampling_is_seeded_and_checks_content(tmp_path):
  replay = Replay(tmp_path, capacity=None, minlen=10, seed=3)
  with pytest.raises(ValueError, match='no episode of at least 10'):
    replay.dataset(4, 10, True)
  for i in range(3):
    replay.add_episode(make_episode(50, base=1000 * i))
  first = replay.sample(8, 10, True, seed=5)
  np.testing.assert_array_equal(first['reward'], replay.sample(8, 10, True, seed=5)['reward'])
  assert not np.array_equal(first['reward'], replay.sample(8, 10, True, seed=6)['reward'])
  with pytest.raises(ValueError, match='differ from the stored'):
    replay.add_episode(make_episode(50, image_shape=(8, 8, 1)))
  with pytest.raises(ValueError, match='lacks the keys'):
    replay.add_episode({'reward': np.zeros(20)})
  with pytest.raises(ValueError, match='capacity'):
    Replay(tmp_path, capacity=0)


def test_episode_files_get_the_usual_permissions_and_garbage_is_named(tmp_path):
  import os
  from dreamerv2_tf.replay import load_episode
  umask = os.umask(0o022)
  try:
    path = save_episode(tmp_path, make_episode(12))
  finally:
    os.umask(umask)
  assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
  garbage = tmp_path / 'garbage.npz'
  garbage.write_bytes(b'garbage')  # 7 bytes: numpy would call this pickled data
  with pytest.raises(ValueError, match=r'garbage.npz: not a valid .npz \(7 bytes') as error:
    load_episode(garbage)
  assert 'pickle' not in str(error.value)
  npy = tmp_path / 'array.npz'
  with open(npy, 'wb') as f:
    np.save(f, np.zeros(3))  # a .npy under an .npz name
  with pytest.raises(ValueError, match='not a valid .npz'):
    load_episode(npy)


def test_short_episode_warnings_are_visible_and_rate_limited(tmp_path, caplog, monkeypatch):
  from dreamerv2_tf import replay as replay_lib
  clock = [1000.0]
  monkeypatch.setattr(replay_lib.time, 'monotonic', lambda: clock[0])
  replay = Replay(tmp_path, capacity=None, minlen=10)
  with caplog.at_level(logging.WARNING, logger='dreamerv2_tf.replay'):
    for _ in range(50):  # 50 short episodes within a minute: one warning
      assert replay.add_episode(make_episode(4)) is None
    clock[0] += 61
    replay.add_episode(make_episode(5))
  records = [r for r in caplog.records if r.name == 'dreamerv2_tf.replay']
  assert [r.levelno for r in records] == [logging.WARNING] * 2
  assert 'episode of 4 transitions' in records[0].getMessage()
  assert 'minlen 10' in records[0].getMessage()
  assert records[1].getMessage().endswith('minlen 10 (49 more like this in the last 61 s).')
  assert not list(tmp_path.glob('*.npz'))
  # Loading a folder of short episodes: one warning for all of them.
  for _ in range(3):
    save_episode(tmp_path, make_episode(4))
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger='dreamerv2_tf.replay'):
    assert load_episodes(tmp_path, minlen=10) == {}
  assert len(caplog.records) == 1
  assert 'Skipping 3 episode file(s)' in caplog.records[0].getMessage()
