"""Episode files and sequence replay (issues 3, 11, 12, 13; docs/reference.md §1, §6)."""

from __future__ import annotations

import errno
import logging
import os
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
  # Exact probabilities of the last window (docs/reference.md §6): 1/91 without, 11/101 with.
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
  assert records[1].getMessage().endswith(
      'minlen 10 agent steps (49 more like this in the last 61 s).')
  assert not list(tmp_path.glob('*.npz'))
  # Loading a folder of short episodes: one warning for all of them.
  for _ in range(3):
    save_episode(tmp_path, make_episode(4))
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger='dreamerv2_tf.replay'):
    assert load_episodes(tmp_path, minlen=10) == {}
  assert len(caplog.records) == 1
  assert 'Skipping 3 episode file(s)' in caplog.records[0].getMessage()


def test_minlen_and_capacity_count_agent_steps_as_the_authors(tmp_path):
  """The authors' replay (dreamerv2 2.2.0, common/replay.py) measures an episode by
  `len(action) - 1`: with minlen 50 it skips an episode of 50 transitions (49 agent steps) and
  keeps one of 51; after each episode it evicts the oldest while more than one is held and the
  held agent steps exceed the capacity."""
  replay = Replay(tmp_path, capacity=100, minlen=50, seed=0)
  assert replay.add_episode(make_episode(50)) is None  # 49 agent steps < 50
  assert replay.num_episodes == 0 and not list(tmp_path.glob('*.npz'))
  for i in range(3):
    assert replay.add_episode(make_episode(51, base=1000 * i)) is not None  # 50 agent steps
  # 3 x 50 = 150 > 100: the oldest goes; 2 x 50 = 100 is not more than the capacity: kept.
  assert replay.num_episodes == 2 and replay.num_agent_steps == 100 and replay.num_steps == 102
  assert replay.total_agent_steps == 150 and replay.total_steps == 153
  assert set((replay.sample(32, 51, False)['reward'][:, 0] // 1000).astype(int)) == {1, 2}
  restarted = Replay(tmp_path, capacity=100, minlen=50)  # newest first, within the capacity
  assert restarted.episode_names() == replay.episode_names()
  # Unlike the authors' (who hold it alone), an episode with more agent steps than the memory
  # ring's rows (capacity + capacity // minlen = 102) is kept on disk only.
  assert replay.add_episode(make_episode(121, base=5000)) is not None
  assert replay.num_episodes == 2 and len(list(tmp_path.glob('*.npz'))) == 4


def test_episodes_of_another_task_are_refused_naming_file_and_mismatch(tmp_path, caplog):
  old = save_episode(tmp_path, make_episode(20, image_shape=(4, 4, 1)))
  newer = save_episode(tmp_path, make_episode(20, image_shape=(4, 4, 3)))
  with caplog.at_level(logging.WARNING, logger='dreamerv2_tf.replay'):
    replay = Replay(tmp_path, capacity=None, minlen=5)
  assert replay.episode_names() == [newer.name]  # the newest file decides the shapes
  message = ' '.join(r.getMessage() for r in caplog.records)
  assert str(old) in message
  assert "key 'image' is (4, 4, 1) uint8, the replay holds (4, 4, 3) uint8" in message
  with pytest.raises(ValueError, match=r"key 'reward' is \(\) int32"):
    replay.add_episode({**make_episode(20, image_shape=(4, 4, 3)),
                        'reward': np.zeros(20, np.int64)})


def test_failed_episode_write_names_the_path_and_leaves_no_partial_file(tmp_path, monkeypatch):
  from dreamerv2_tf import replay as replay_lib
  replay = Replay(tmp_path, capacity=None, minlen=5)
  replay.add_episode(make_episode(20))
  before = sorted(p.name for p in tmp_path.iterdir())

  def full_disk(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(replay_lib.os, 'fsync', full_disk)
  with pytest.raises(replay_lib.EpisodeWriteError) as error:
    replay.add_episode(make_episode(20))
  message = str(error.value)
  assert re.search(rf'cannot write episode file {re.escape(str(tmp_path))}/\S+-20\.npz: '
                   r'No space left on device', message), message
  assert error.value.errno == errno.ENOSPC
  assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary or partial file
  assert replay.num_episodes == 1  # nothing stored that is not on disk
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  with pytest.raises(replay_lib.EpisodeWriteError, match='cannot create the episode folder'):
    save_episode(blocker / 'episodes', make_episode(20))


def _rss() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def test_dmc_shaped_replay_memory_grows_with_content_and_stays_bounded(tmp_path):
  """64x64x3 episodes of 501 transitions into a 20,000-step replay: the store allocates as it
  fills (one chunk for the first episode) and, after 100 episodes (50,000 agent steps), resident
  memory has grown by less than the replay's full size (20,400 rows x 12,319 B = 251 MB) plus
  100 MB, where holding every episode would take 617 MB."""
  capacity, length = 20_000, 501
  episode = {**make_episode(length, image_shape=(64, 64, 3)),
             'action': np.zeros((length, 6), np.float32)}
  del episode['log_step']
  replay = Replay(tmp_path, capacity=capacity, minlen=50)
  replay.add_episode(episode)
  bytes_per_step = 64 * 64 * 3 + 6 * 4 + 4 + 3
  assert replay.bytes_per_step == bytes_per_step
  full = (capacity + capacity // 50) * bytes_per_step
  assert replay.nbytes <= full // 32 + bytes_per_step * 32  # one chunk so far
  start = _rss()
  for _ in range(100):
    replay.add_episode(episode)
  grown = _rss() - start
  assert replay.num_agent_steps <= capacity and replay.nbytes <= full
  assert grown < full + 100e6, f'resident memory grew by {grown / 1e6:.0f} MB'
  batch = replay.sample(4, 50, False)
  assert batch['image'].shape == (4, 50, 64, 64, 3)


def test_a_capacity_that_cannot_fit_is_refused_with_the_numbers():
  from dreamerv2_tf import replay as replay_lib
  total, _ = replay_lib.memory_bytes()
  if total is None:
    pytest.skip('this system reports no memory size (no /proc/meminfo, no sysconf pages)')
  with pytest.raises(MemoryError) as error:
    replay_lib.check_memory(12_319, 10**9, minlen=50)
  message = str(error.value)
  assert '\n' not in message
  assert 'replay.capacity 1,000,000,000 agent steps x 12,319 bytes per step' in message
  assert '12565.4 GB at full size' in message and f'{total / 1e9:.1f} GB of memory' in message
  assert re.search(r'Use --replay.capacity=\d+ or less', message)
  assert replay_lib.check_memory(12_319, 1000, minlen=50) is None


def _tree_rss(pid: int) -> int:
  """Resident bytes of a process and its descendants (Linux /proc)."""
  total, todo = 0, [pid]
  while todo:
    current = todo.pop()
    try:
      with open(f'/proc/{current}/statm') as f:
        total += int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
      with open(f'/proc/{current}/task/{current}/children') as f:
        todo += [int(c) for c in f.read().split()]
    except (OSError, ValueError):
      continue
  return total


DMC_DEBUG_RSS_BOUND = 3.0e9  # bytes, trainer and DMC worker processes together


@pytest.mark.slow
def test_dmc_debug_run_resident_memory_stays_bounded(tmp_path):
  """A DMC debug run (prefill, an evaluation episode, the first updates) stays under
  DMC_DEBUG_RSS_BOUND of resident memory, sampled every 0.5 s; its replay (capacity 100,000 agent
  steps, 1.4 GB at full size) holds only what it was given. About 1-2 minutes on 2 idle cores
  (DMC renders at 3-7 agent steps/s when the cores are shared)."""
  import subprocess
  import sys
  import time
  from conftest import REPO, tool_env
  if not os.path.exists(f'/proc/{os.getpid()}/task/{os.getpid()}/children'):
    pytest.skip('needs Linux /proc/<pid>/task/<pid>/children to follow the worker processes')
  command = [sys.executable, 'train.py', '--configs', 'dmc_vision', 'debug', '--task',
             'dmc_walker_walk', '--logdir', str(tmp_path / 'run'), '--steps=300', '--prefill=200',
             '--eval_every=0']
  process = subprocess.Popen(command, cwd=REPO, env=tool_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  peak, deadline = 0, time.monotonic() + 1500
  while process.poll() is None and time.monotonic() < deadline:
    peak = max(peak, _tree_rss(process.pid))
    time.sleep(0.5)
  if process.poll() is None:
    process.kill()
  output = process.communicate()[0]
  assert process.returncode == 0, output[-3000:]
  assert len(list((tmp_path / 'run' / 'train_episodes').glob('*.npz'))) >= 1
  assert peak < DMC_DEBUG_RSS_BOUND, f'peak resident memory {peak / 1e9:.2f} GB'
  print(f'DMC debug run: peak resident memory {peak / 1e9:.2f} GB')
