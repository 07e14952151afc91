"""Episode files, the in-memory episode store and tf.data sequence sampling (SPEC.md §1, §6).

Episodes. An episode is a dict of numpy arrays stacked along time, `{key: [L, ...]}`, one row per
transition of SPEC.md §1 (row 0 is the reset transition). Its length L is the number of
transitions. Dtypes are normalised on save: floats -> float32, signed ints -> int32, uint8 and
bool kept.

Files. `save_episode` writes one compressed `.npz` per episode, named
`{timestamp}-{uuid}-{length}.npz` (timestamp `%Y%m%dT%H%M%S%f`, UTC, microseconds so that
names sort in saving order), atomically: a temporary file
in the same folder, then `os.replace`. `load_episodes` reads a folder back (newest files first
when a capacity is given) and skips, with a warning naming the file, anything that is not a
readable episode: files that are not zip archives, corrupt or truncated zips, foreign `.npz`
files, arrays of unequal length, object arrays. Episode files get the usual file permissions
(0666 less the umask, 0644 by default). Nothing on disk is ever deleted or rewritten by this
module.

Replay. `Replay(directory, capacity, minlen)` loads the folder's episodes on construction (a
restarted run resumes), takes new ones through `add_step` (per-worker accumulation, saved on
`is_last`) or `add_episode`, and evicts the oldest episodes from memory (never from disk) when
the stored agent steps would exceed `capacity`. Episodes shorter than `minlen` are neither saved
nor stored; a warning says so (logged at WARNING, at most one a minute with a count of the ones
left out, so that it cannot flood the output). Memory holds the non-`log_` keys in CPU
tf.Variables (a ring buffer of steps, see `Replay`).

Sampling (`Replay.dataset`), exactly SPEC.md §6, per sequence:
  episode  ~ uniform over stored episodes with L >= T (whatever their length),
  upper    = L - T + 1, or L + 1 with prioritize_ends,
  start    = min(randint(upper), L - T),
  sequence = episode[start : start + T], with is_first[0] set True.
With prioritize_ends the last window gets probability (T + 1) / (L + 1) instead of
1 / (L - T + 1). (The authors' "randomised length" reduces to a fixed T because their replay uses
minlen = maxlen = T; it is not a separate step here.) Batches are `{key: [B, T, ...]}`, `log_*`
keys left out, sampled and gathered in-graph with stateless random ops and prefetched.
"""

from __future__ import annotations

import collections
import datetime
import io
import logging
import os
import pathlib
import tempfile
import threading
import time
import uuid
import zipfile
from typing import Any, Mapping

import numpy as np

logger = logging.getLogger(__name__)

# Zip archives (every .npz) start with a local file header, or an end-of-central-directory
# record when empty.
ZIP_MAGIC = (b'PK\x03\x04', b'PK\x05\x06')


class RateLimitedWarning:
  """Logs a warning at most once per `seconds`; the next one that gets through says how many
  were left out in between. One instance per kind of message.
  """

  def __init__(self, seconds: float = 60.0):
    self.seconds = float(seconds)
    self._last: float | None = None
    self._suppressed = 0

  def __call__(self, message: str, *args: Any) -> bool:
    """Logs `message % args` at WARNING unless one was logged in the last `seconds`; returns
    whether it was logged."""
    now = time.monotonic()
    if self._last is not None and now - self._last < self.seconds:
      self._suppressed += 1
      return False
    if self._suppressed:
      note = f' ({self._suppressed} more like this in the last {now - self._last:.0f} s)'
      message = message[:-1] + note + '.' if message.endswith('.') else message + note
    logger.warning(message, *args)
    self._last, self._suppressed = now, 0
    return True

# Keys every stored episode must have (SPEC.md §1); others (e.g. `log_*`) are optional.
REQUIRED_KEYS = ('image', 'reward', 'is_first', 'is_last', 'is_terminal', 'action')


def convert(value: Any) -> np.ndarray:
  """SPEC.md §1 storage dtype: floats -> float32, signed ints -> int32, others kept."""
  value = np.asarray(value)
  if np.issubdtype(value.dtype, np.floating):
    return value.astype(np.float32, copy=False)
  if np.issubdtype(value.dtype, np.signedinteger):
    return value.astype(np.int32, copy=False)
  return value


def episode_length(episode: Mapping[str, np.ndarray]) -> int:
  """Number of transitions L of an episode (length of its arrays' time axis)."""
  return len(next(iter(episode.values())))


def check_episode(episode: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Returns the episode with SPEC.md §1 dtypes after checking that it is well formed.

  Raises:
    ValueError: naming the problem: a missing required key, an object array, arrays of
      unequal length, or an empty episode.
  """
  if not isinstance(episode, Mapping) or not episode:
    raise ValueError(f'An episode must be a non-empty dict of arrays, got {type(episode).__name__}.')
  missing = [k for k in REQUIRED_KEYS if k not in episode]
  if missing:
    raise ValueError(
        f'Episode lacks the keys {missing}; required: {list(REQUIRED_KEYS)}, got {sorted(episode)}.')
  result = {}
  for key, value in episode.items():
    value = convert(value)
    if value.dtype == object or value.ndim == 0:
      raise ValueError(f"Episode key '{key}' must be an array stacked along time, got "
                       f'dtype {value.dtype} with shape {value.shape}.')
    result[key] = value
  lengths = {k: len(v) for k, v in result.items()}
  if len(set(lengths.values())) != 1:
    raise ValueError(f'Episode arrays differ in length along time: {lengths}.')
  if not next(iter(lengths.values())):
    raise ValueError('Episode is empty (0 transitions).')
  return result


def save_episode(directory: str | os.PathLike, episode: Mapping[str, Any]) -> pathlib.Path:
  """Writes `episode` to `directory/{timestamp}-{uuid}-{length}.npz` atomically.

  Args:
    directory: created if missing.
    episode: {key: [L, ...]} arrays (converted to SPEC.md §1 dtypes).

  Returns:
    The path of the new file.

  Raises:
    ValueError: for a malformed episode (see check_episode).
  """
  episode = check_episode(episode)
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%S%f')
  path = directory / f'{stamp}-{uuid.uuid4().hex}-{episode_length(episode)}.npz'
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **episode)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix='.npz')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(buffer.getbuffer())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; episodes get the usual permissions
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)  # our own partial temporary file, never an episode
    raise
  return path


def load_episode(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads one episode file (no pickles).

  Raises:
    ValueError: naming the file, if it is not a readable, well-formed episode.
  """
  try:
    with open(path, 'rb') as f:
      head = f.read(4)
  except OSError as e:
    raise ValueError(f'{path}: not a readable file ({type(e).__name__}: {e}).') from None
  if head not in ZIP_MAGIC:
    size = os.path.getsize(path)
    raise ValueError(f'{path}: not a valid .npz ({size} bytes that do not start with a zip '
                     f'header, starting {head!r}).') from None
  try:
    with np.load(path, allow_pickle=False) as data:
      episode = {key: data[key] for key in data.files}
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile) as e:
    raise ValueError(f'{path}: not a readable .npz file ({type(e).__name__}: {e}).') from None
  except Exception as e:  # noqa: BLE001 (zlib.error and friends from a damaged zip)
    raise ValueError(f'{path}: not a readable .npz file ({type(e).__name__}: {e}).') from None
  try:
    return check_episode(episode)
  except ValueError as e:
    raise ValueError(f'{path}: not an episode: {e}') from None


def load_episodes(directory: str | os.PathLike, capacity: int | None = None,
                  minlen: int = 1) -> dict[str, dict[str, np.ndarray]]:
  """Loads the episodes of a folder, oldest first.

  Files are read newest first (by file name, whose timestamp sorts chronologically) while the
  loaded transitions stay within `capacity`, then returned oldest first. Files that fail to load
  are skipped with a warning naming them; episodes with fewer than `minlen` transitions are
  skipped with one warning for all of them. Nothing is deleted.

  Args:
    directory: episode folder; a missing folder gives {}.
    capacity: maximum transitions to load (None: all).
    minlen: minimum transitions of a loaded episode.

  Returns:
    {file name: episode}, oldest first.
  """
  directory = pathlib.Path(directory)
  if not directory.exists():
    return {}
  paths = sorted((p for p in directory.glob('*.npz') if not p.name.startswith('.tmp-')),
                 reverse=True)
  loaded, steps, short = [], 0, []
  for path in paths:
    try:
      episode = load_episode(path)
    except ValueError as e:
      logger.warning('Skipping episode file %s: %s', path, e)
      continue
    length = episode_length(episode)
    if length < minlen:
      short.append((path, length))
      continue
    if capacity is not None and steps + length > capacity:
      break
    loaded.append((path.name, episode))
    steps += length
  if short:  # one line for all of them
    logger.warning('Skipping %d episode file(s) in %s shorter than replay minlen %d transitions '
                   '(e.g. %s: %d).', len(short), directory, minlen, short[0][0].name, short[0][1])
  return dict(reversed(loaded))


class Replay:
  """Stores complete episodes on disk and in memory; samples training sequences (SPEC.md §6).

  Memory layout: every non-`log_` key lives in one CPU `tf.Variable` of shape [alloc, ...] used
  as a ring buffer of agent steps; episodes sit contiguously in insertion order, and a small
  table variable [num_episodes, 2] holds each one's (offset, length). With a capacity the ring
  is reserved whole at the first episode, uninitialised, so resident memory grows only as steps
  are written (about 4.1 kB per Atari step; a 2M-step capacity reserves 8.3 GB of address
  space); a new episode that does not fit evicts the oldest ones (from memory only; files stay
  on disk) and overwrites their slots. Without a capacity the buffer doubles as needed (each
  doubling copies). `log_` keys stay on disk only.
  The tf.data pipeline samples and gathers entirely in-graph (no Python per batch), which is what
  makes 16 x 50 Atari batches cheap on 2 cores (scripts/bench_data.py).

  Args:
    directory: episode folder (e.g. `<logdir>/train_episodes`); existing episodes are loaded.
    capacity: maximum transitions (agent steps) held in memory; None for unbounded. An episode
      longer than the capacity is saved to disk but not held (a warning says so).
    minlen: episodes with fewer transitions are neither saved nor stored (a rate-limited
      warning says so).
    seed: seeds the sampling; dataset number k of this replay uses the stream (seed, k).

  Attributes:
    num_steps / num_episodes: transitions / episodes held in memory now.
    total_steps / total_episodes: ever added, episodes loaded at start included, not reduced by
      eviction.
    spec: {key: (per-step shape, dtype)} of the stored (non-log) keys; None while empty.

  Construct it outside any `tf.distribute` strategy scope (its variables are plain CPU
  variables). `add_*` may run while a dataset iterator samples in tf.data's threads; a sequence
  drawn in the same instant its episode is evicted at capacity could mix in the newer episode's
  steps (the window is one gather op; the authors' replay has no such window, but its Python
  sampling is far slower).
  """

  def __init__(self, directory: str | os.PathLike, capacity: int | float | None = None,
               minlen: int = 1, seed: int = 0):
    if capacity is not None:
      if float(capacity) != int(capacity) or int(capacity) < 1:
        raise ValueError(f'Replay capacity must be a positive whole number of steps or None, '
                         f'got {capacity!r}.')
      capacity = int(capacity)
    if int(minlen) < 1:
      raise ValueError(f'Replay minlen must be >= 1 transitions, got {minlen!r}.')
    self.directory = pathlib.Path(directory)
    self.directory.mkdir(parents=True, exist_ok=True)
    self.capacity = capacity
    self.minlen = int(minlen)
    self.seed = int(seed)
    self._lock = threading.Lock()
    self._entries: collections.deque[tuple[str, int, int]] = collections.deque()  # name, offset, L
    self._ongoing: dict[int, list[dict[str, np.ndarray]]] = collections.defaultdict(list)
    self._spec: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None
    self._storage: dict[str, Any] = {}
    self._table = None
    self._alloc = 0
    self._datasets = 0
    self._sample_fns: dict[tuple[int, int, bool], Any] = {}
    self._warn_short = RateLimitedWarning()
    self._warn_dropped = RateLimitedWarning()
    self.num_steps = 0
    self.total_steps = 0
    self.total_episodes = 0
    for name, episode in load_episodes(self.directory, capacity, self.minlen).items():
      try:
        self._store(name, episode)
      except ValueError as e:
        logger.warning('Skipping episode file %s: %s', self.directory / name, e)

  @property
  def num_episodes(self) -> int:
    return len(self._entries)

  @property
  def spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]] | None:
    return self._spec

  @property
  def nbytes(self) -> int:
    """Bytes allocated for the in-memory ring buffer (all keys)."""
    if self._spec is None:
      return 0
    return self._alloc * self.bytes_per_step

  @property
  def bytes_per_step(self) -> int:
    """Bytes of one stored transition (sum over the stored keys)."""
    if self._spec is None:
      return 0
    return sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
               for shape, dtype in self._spec.values())

  def episode_names(self) -> list[str]:
    """File names of the episodes held in memory, oldest first."""
    return [name for name, _, _ in self._entries]

  def _stored_spec(self, episode: Mapping[str, np.ndarray]):
    return {k: (v.shape[1:], v.dtype) for k, v in episode.items() if not k.startswith('log_')}

  def _check_spec(self, episode: Mapping[str, np.ndarray]) -> None:
    spec = self._stored_spec(episode)
    if self._spec is not None and spec != self._spec:
      raise ValueError(f'Episode keys, shapes or dtypes {spec} differ from the stored ones '
                       f'{self._spec}.')

  def _allocate(self, size: int) -> None:
    """Creates or grows the storage variables to `size` steps, keeping slots [0, alloc).

    New memory is uninitialised (`Empty(init=False)`): the operating system commits its pages
    only when episodes are written into them, so reserving the full capacity up front costs
    address space, not resident memory.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if tf.distribute.has_strategy():
      raise RuntimeError('Create and fill the Replay outside tf.distribute strategy scopes: its '
                         'storage must be plain CPU variables.')

    def empty(rows, shape, dtype):
      return tf.raw_ops.Empty(shape=(rows,) + shape, dtype=tf.as_dtype(dtype), init=False)

    with tf.device('/CPU:0'):
      if not self._storage:
        for key, (shape, dtype) in self._spec.items():
          self._storage[key] = tf.Variable(
              empty(size, shape, dtype), shape=tf.TensorShape((None,) + shape),
              trainable=False, name=f'replay_{key}')
        self._table = tf.Variable(
            tf.zeros((0, 2), tf.int64), shape=tf.TensorShape((None, 2)), trainable=False,
            name='replay_table')
        self._alloc_var = tf.Variable(size, dtype=tf.int64, trainable=False, name='replay_alloc')
      else:
        for key, (shape, dtype) in self._spec.items():
          var = self._storage[key]
          var.assign(tf.concat([var.read_value(), empty(size - self._alloc, shape, dtype)], 0))
        self._alloc_var.assign(size)
    self._alloc = size

  def _store(self, name: str, episode: dict[str, np.ndarray]) -> None:
    """Holds a checked episode in memory (evicting the oldest at capacity)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self._check_spec(episode)
    if self._spec is None:
      self._spec = self._stored_spec(episode)
    length = episode_length(episode)
    self.total_steps += length
    self.total_episodes += 1
    if self.capacity is not None and length > self.capacity:
      logger.warning('Episode %s has %d transitions, more than the replay capacity %d: kept on '
                     'disk, not in memory.', name, length, self.capacity)
      return
    if self.capacity is not None and not self._alloc:
      self._allocate(self.capacity)  # the whole ring at once; pages are committed as filled
    elif self.capacity is None and self.num_steps + length > self._alloc:
      self._allocate(max(2 * self._alloc, self.num_steps + length, 1024))  # unbounded: doubling
    offset = 0
    if self._entries:
      _, last_offset, last_length = self._entries[-1]
      offset = (last_offset + last_length) % self._alloc
    with self._lock:
      while self.num_steps + length > self._alloc:
        _, _, evicted = self._entries.popleft()
        self.num_steps -= evicted
      self._publish()  # evicted slots leave the sampling table before they are overwritten
    indices = tf.constant((offset + np.arange(length)) % self._alloc, tf.int64)
    for key, var in self._storage.items():
      var.scatter_update(tf.IndexedSlices(tf.constant(episode[key]), indices))
    with self._lock:
      self._entries.append((name, offset, length))
      self.num_steps += length
      self._publish()

  def _publish(self) -> None:
    rows = np.array([(o, n) for _, o, n in self._entries], np.int64).reshape(-1, 2)
    self._table.assign(rows)

  def add_episode(self, episode: Mapping[str, Any]) -> pathlib.Path | None:
    """Saves a complete episode to the folder and stores it in memory.

    Returns:
      The file's path, or None if the episode was shorter than minlen (logged, not saved).

    Raises:
      ValueError: for a malformed episode, or one whose keys/shapes/dtypes differ from the
        stored episodes'.
    """
    episode = check_episode(episode)
    length = episode_length(episode)
    if length < self.minlen:
      self._warn_short('Not storing an episode of %d transitions in %s: shorter than replay '
                       'minlen %d.', length, self.directory, self.minlen)
      return None
    self._check_spec(episode)
    path = save_episode(self.directory, episode)
    self._store(path.name, episode)
    return path

  def add_step(self, transition: Mapping[str, Any], worker: int = 0) -> dict[str, np.ndarray] | None:
    """Appends one transition of env `worker`; completes the episode on `is_last`.

    A transition with is_first True starts a new episode (an unfinished one of the same
    worker is dropped with a rate-limited warning; SPEC.md §8: never glued onto the next).

    Returns:
      The completed episode {key: [L, ...]} on is_last (saved and stored if L >= minlen),
      else None.

    Raises:
      ValueError: if the worker's first transition is not an is_first one.
    """
    transition = {k: np.array(v) for k, v in transition.items()}
    steps = self._ongoing[worker]
    if bool(transition['is_first']):
      if steps:
        self._warn_dropped('Dropping an unfinished episode of %d transitions from worker %d.',
                           len(steps), worker)
      steps.clear()
    elif not steps:
      raise ValueError(f'Worker {worker} sent a transition with is_first False before any '
                       'is_first transition; start every env with reset().')
    steps.append(transition)
    if not bool(transition['is_last']):
      return None
    episode = check_episode({k: np.stack([step[k] for step in steps]) for k in steps[0]})
    steps.clear()
    self.add_episode(episode)
    return episode

  def _check_sampling(self, batch: int, length: int) -> None:
    if int(batch) < 1 or int(length) < 1:
      raise ValueError(f'Batch ({batch}) and sequence length ({length}) must be >= 1.')
    with self._lock:
      longest = max((n for _, _, n in self._entries), default=0)
    if longest < length:
      raise ValueError(
          f'Replay in {self.directory} holds no episode of at least {length} transitions '
          f'({self.num_episodes} episodes, longest {longest}); fill it before sampling.')

  def _sample_graph(self, seed, batch: int, length: int, prioritize_ends: bool):
    """In-graph sampling of one batch (SPEC.md §6); `seed` is a stateless seed [2] int64."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    table = self._table.read_value()
    table = tf.boolean_mask(table, table[:, 1] >= length)  # episodes long enough: [E, 2]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    choice = tf.random.stateless_uniform(
        [batch], seeds[0], 0, tf.shape(table)[0], tf.int32)  # uniform over episodes
    rows = tf.gather(table, choice)
    offset, total = rows[:, 0], rows[:, 1]
    upper = total + 1 if prioritize_ends else total - length + 1
    uniform = tf.random.stateless_uniform([batch], seeds[1], dtype=tf.float64)
    start = tf.cast(tf.floor(uniform * tf.cast(upper, tf.float64)), tf.int64)  # randint(upper)
    start = tf.minimum(start, total - length)
    index = (offset + start)[:, None] + tf.range(length, dtype=tf.int64)[None]
    index = index % self._alloc_var.read_value()  # [B, T] ring-buffer slots
    out = {key: tf.gather(var, index) for key, var in self._storage.items()}
    out['is_first'] = tf.concat(
        [tf.ones((batch, 1), tf.bool), out['is_first'][:, 1:]], 1)
    return out

  def sample(self, batch: int, length: int, prioritize_ends: bool,
             seed: int = 0) -> dict[str, np.ndarray]:
    """One batch {key: [B, T, ...]} as numpy arrays, by the same code as `dataset`.

    Raises:
      ValueError: if no stored episode has at least `length` transitions.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    batch, length = int(batch), int(length)
    self._check_sampling(batch, length)
    key = (batch, length, bool(prioritize_ends))
    if key not in self._sample_fns:
      self._sample_fns[key] = tf.function(
          lambda s: self._sample_graph(s, batch, length, bool(prioritize_ends)))
    out = self._sample_fns[key](tf.constant([self.seed, int(seed)], tf.int64))
    return {k: v.numpy() for k, v in out.items()}

  def dataset(self, batch: int, length: int, prioritize_ends: bool, prefetch: int = 2):
    """An endless tf.data.Dataset of batches {key: [B, T, ...]} (see the module docstring).

    Dtypes: image uint8, action/reward float32, is_first/is_last/is_terminal bool (other keys
    as stored, log_* left out). Sampling and gathering run in-graph on the replay's variables,
    so the dataset always sees the current episodes.

    Raises:
      ValueError: if no stored episode has at least `length` transitions yet.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    batch, length = int(batch), int(length)
    self._check_sampling(batch, length)
    self._datasets += 1
    seed = int(np.random.SeedSequence([self.seed, self._datasets]).generate_state(1)[0])

    def sample(value):
      return self._sample_graph(
          tf.stack([value, tf.constant(0, tf.int64)]), batch, length, bool(prioritize_ends))

    dataset = tf.data.Dataset.random(seed=seed).map(sample)
    return dataset.prefetch(int(prefetch))
