"""Episode files, the in-memory episode store and tf.data sequence sampling (docs/reference.md §1, §6).

Episodes. An episode is a dict of numpy arrays stacked along time, `{key: [L, ...]}`, one row per
transition of docs/reference.md §1 (row 0 is the reset transition). Its length L is the number of
transitions; it holds L - 1 AGENT STEPS (the reset row is not a step; the authors' `eplen`).
Dtypes are normalised on save: floats -> float32, signed ints -> int32, uint8 and bool kept.

Counting, as the authors' release does (dreamerv2 2.2.0, `common/replay.py`): `replay.minlen` and
`replay.capacity` are in agent steps. An episode of L transitions is stored only if
L - 1 >= minlen (with minlen 50, an episode of 50 transitions, 49 agent steps, is skipped), and
after each new episode the oldest are evicted from memory while more than one episode is held and
the held agent steps exceed the capacity. The `num_steps`/`total_steps` attributes count
transitions (rows); `num_agent_steps`/`total_agent_steps` count agent steps.

Files. `save_episode` writes one compressed `.npz` per episode, named
`{timestamp}-{uuid}-{length}.npz` (length in transitions; timestamp `%Y%m%dT%H%M%S%f`, UTC,
microseconds so that names sort in saving order), atomically: a temporary file in the same
folder, flushed and fsynced, then `os.replace`; a failed write (full disk, unwritable folder)
raises `EpisodeWriteError` naming the path and leaves no partial file. `load_episodes` reads a
folder back (newest files first when a capacity is given) and skips, with a warning naming the
file, anything that is not a readable episode: files that are not zip archives, corrupt or
truncated zips, foreign `.npz` files, arrays of unequal length, object arrays. A `Replay` also
skips, with a warning naming the file and the mismatch, episodes whose keys, shapes or dtypes
differ from the newest episode's (e.g. another task's files). Episode files get the usual file
permissions (0666 less the umask, 0644 by default). Nothing on disk is ever deleted or rewritten
by this module.

Replay. `Replay(directory, capacity, minlen)` loads the folder's episodes on construction (a
restarted run resumes), takes new ones through `add_step` (per-worker accumulation, saved on
`is_last`) or `add_episode`, and evicts the oldest episodes from memory (never from disk) as
described above. Episodes shorter than `minlen` are neither saved nor stored; a warning says so
(logged at WARNING, at most one a minute with a count of the ones left out, so that it cannot
flood the output). Memory holds the non-`log_` keys in CPU tf.Variables that are allocated chunk
by chunk as episodes arrive (see `Replay`): resident memory grows with what the replay holds, up
to `bytes_per_step * capacity` (plus one reset row per episode), never reserved up front.
`check_memory` refuses, in one line with the numbers, a capacity whose full size exceeds the
machine's memory.

Sampling (`Replay.dataset`), exactly docs/reference.md §6, per sequence:
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

# Keys every stored episode must have (docs/reference.md §1); observation keys (`image`, vectors) and `log_*`
# keys are whatever the environment gives.
REQUIRED_KEYS = ('reward', 'is_first', 'is_last', 'is_terminal', 'action')


def convert(value: Any) -> np.ndarray:
  """docs/reference.md §1 storage dtype: floats -> float32, signed ints -> int32, others kept."""
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
  """Returns the episode with docs/reference.md §1 dtypes after checking that it is well formed.

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


class EpisodeWriteError(OSError):
  """An episode file could not be written (full disk, unwritable folder); the message names the
  path and the cause. No partial file is left behind."""


def _write_atomically(path: pathlib.Path, data: memoryview) -> None:
  """Writes `data` to a temporary file beside `path`, fsyncs it, then renames it to `path`.

  Raises EpisodeWriteError naming `path`; the temporary file is removed on any failure.
  """
  tmp = None
  try:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix='.tmp-', suffix='.npz')
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; episodes get the usual permissions
    os.replace(tmp, path)
    tmp = None
  except OSError as e:
    raise EpisodeWriteError(
        e.errno, f'cannot write episode file {path}: {e.strerror or e}', str(path)) from e
  finally:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)  # our own partial temporary file, never an episode


def save_episode(directory: str | os.PathLike, episode: Mapping[str, Any]) -> pathlib.Path:
  """Writes `episode` to `directory/{timestamp}-{uuid}-{length}.npz` atomically.

  Args:
    directory: created if missing.
    episode: {key: [L, ...]} arrays (converted to docs/reference.md §1 dtypes); L transitions, the length
      in the file name.

  Returns:
    The path of the new file.

  Raises:
    ValueError: for a malformed episode (see check_episode).
    EpisodeWriteError: (an OSError) when the folder cannot be created or the file cannot be
      written, e.g. `cannot write episode file <path>: No space left on device`; no partial
      file remains.
  """
  episode = check_episode(episode)
  directory = pathlib.Path(directory)
  try:
    directory.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise EpisodeWriteError(e.errno, f'cannot create the episode folder {directory}: '
                            f'{e.strerror or e}', str(directory)) from e
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%S%f')
  path = directory / f'{stamp}-{uuid.uuid4().hex}-{episode_length(episode)}.npz'
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **episode)
  _write_atomically(path, buffer.getbuffer())
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


def agent_steps(episode: Mapping[str, np.ndarray]) -> int:
  """Agent steps of an episode: its transitions less the reset row (the authors' `eplen`)."""
  return episode_length(episode) - 1


def load_episodes(directory: str | os.PathLike, capacity: int | None = None,
                  minlen: int = 1) -> dict[str, dict[str, np.ndarray]]:
  """Loads the episodes of a folder, oldest first.

  Files are read newest first (by file name, whose timestamp sorts chronologically) while the
  loaded agent steps stay within `capacity`, then returned oldest first. Files that fail to load
  are skipped with a warning naming them; episodes with fewer than `minlen` agent steps are
  skipped with one warning for all of them. Nothing is deleted.

  Args:
    directory: episode folder; a missing folder gives {}.
    capacity: maximum agent steps to load (None: all).
    minlen: minimum agent steps (transitions - 1) of a loaded episode.

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
    length = agent_steps(episode)
    if length < minlen:
      short.append((path, length))
      continue
    if capacity is not None and loaded and steps + length > capacity:
      break
    loaded.append((path.name, episode))
    steps += length
  if short:  # one line for all of them
    logger.warning('Skipping %d episode file(s) in %s shorter than replay minlen %d agent steps '
                   '(e.g. %s: %d agent steps, %d transitions).', len(short), directory, minlen,
                   short[0][0].name, short[0][1], short[0][1] + 1)
  return dict(reversed(loaded))


# ----------------------------------------------------------------------------- memory

def memory_bytes() -> tuple[int | None, int | None]:
  """(total, available) bytes of memory for this process, None where unknown.

  Linux: MemTotal / MemAvailable of /proc/meminfo, lowered to a cgroup v2 or v1 memory limit
  when one is set (containers); elsewhere the physical pages (os.sysconf), availability unknown.
  """
  total = available = None
  try:
    with open('/proc/meminfo') as f:
      info = {line.split(':')[0]: int(line.split()[1]) * 1024 for line in f if ':' in line}
    total, available = info.get('MemTotal'), info.get('MemAvailable')
  except (OSError, ValueError, IndexError):
    try:
      total = os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):
      pass
  for limit_file in ('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes'):
    try:
      text = pathlib.Path(limit_file).read_text().strip()
    except OSError:
      continue
    if text.isdigit() and (total is None or int(text) < total):
      total = int(text)
      available = min(available, total) if available is not None else None
    break
  return total, available


def _gb(n: float) -> str:
  return f'{n / 1e9:.1f} GB'


def check_memory(bytes_per_step: int, capacity: int, minlen: int = 1, replays: float = 1.0,
                 what: str = 'replay.capacity') -> str | None:
  """Refuses a replay whose full size cannot fit in this machine's memory.

  Full size = `replays` x `bytes_per_step` x (capacity + capacity // minlen) bytes: the
  capacity's agent steps plus one reset row per held episode (each holds >= minlen agent steps).

  Returns:
    None, or a warning line when the full size exceeds the memory available now (MemAvailable)
    but fits in the total.
  Raises:
    MemoryError: one line with the numbers (bytes per step x capacity vs memory) and the largest
      capacity that would fit in half the memory available now.
  """
  total, available = memory_bytes()
  rows = int(capacity) + int(capacity) // max(int(minlen), 1)
  full = int(replays * bytes_per_step * rows)
  if total is None:
    return None
  usable = available if available is not None else total
  fits = int(usable * 0.5 / (replays * bytes_per_step * (1 + 1 / max(int(minlen), 1))))
  numbers = (f'{what} {int(capacity):,} agent steps x {bytes_per_step:,} bytes per step'
             f'{f" x {replays:g} replays" if replays != 1 else ""} = {_gb(full)} at full size, '
             f'but this machine has {_gb(total)} of memory'
             f'{f" ({_gb(available)} available now)" if available is not None else ""}')
  if full > total:
    raise MemoryError(f'{numbers}. Use --{what}={fits} or less (half the memory available now).')
  if available is not None and full > available:
    return (f'{numbers}: the replay may run out of memory once it holds more than about '
            f'{int(available / full * capacity):,} agent steps.')
  return None


# ----------------------------------------------------------------------------- replay

# The in-memory store of large keys is split into at most this many chunk variables, allocated
# as needed; keys with fewer bytes per step than CHUNKED_BYTES live in one growing variable each.
MAX_CHUNKS = 32
CHUNKED_BYTES = 1024
# With no capacity, chunk c holds UNBOUNDED_CHUNK * 2**c rows (about 4e12 rows in all).
UNBOUNDED_CHUNK = 1024


def chunk_starts(rows: int | None) -> np.ndarray:
  """First row of each chunk, plus the total, for a store of `rows` rows (None: unbounded).

  Bounded: min(MAX_CHUNKS, rows) chunks of equal size (the last one smaller); unbounded:
  MAX_CHUNKS chunks of doubling size. int64 [num_chunks + 1].
  """
  if rows is None:
    sizes = UNBOUNDED_CHUNK * 2 ** np.arange(MAX_CHUNKS, dtype=np.int64)
  else:
    size = -(-int(rows) // MAX_CHUNKS)
    count = -(-int(rows) // size)
    sizes = np.full(count, size, np.int64)
    sizes[-1] = rows - size * (count - 1)
  return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


class Replay:
  """Stores complete episodes on disk and in memory; samples training sequences (docs/reference.md §6).

  Memory layout: a ring of `rows` slots, one per transition, holding episodes contiguously in
  insertion order (a small table variable [num_episodes, 2] holds each one's (first slot,
  transitions)). For a capacity of C agent steps, rows = C + C // minlen: C agent steps plus one
  reset row for each of the at most C // minlen episodes held. Physically, each non-`log_` key
  is split into `MAX_CHUNKS` CPU `tf.Variable` chunks of consecutive slots; a chunk is allocated
  when the first episode reaches it, so resident memory grows with what the replay holds
  (`nbytes`; DMC 64x64x3: 12.3 kB per step, Atari 64x64x1: 4.1 kB; the README's memory table).
  At capacity, a new episode evicts the oldest (the authors' rule, module docstring) and
  overwrites their slots. Without a capacity the chunks double in size (never evicts).
  `log_` keys stay on disk only. The tf.data pipeline samples and gathers entirely in-graph (no
  Python per batch; `python -m dreamerv2_tf.bench` measures it).

  Args:
    directory: episode folder (e.g. `<logdir>/train_episodes`); existing episodes are loaded.
    capacity: maximum agent steps held in memory (the authors' count); None for unbounded. An
      episode too long for the ring is saved to disk but not held (a warning says so).
    minlen: episodes with fewer agent steps (transitions - 1) are neither saved nor stored (a
      rate-limited warning says so); 50 skips an episode of 50 transitions, as the authors do.
    seed: seeds the sampling; dataset number k of this replay uses the stream (seed, k).

  Attributes:
    num_steps / num_episodes: transitions / episodes held in memory now; num_agent_steps.
    total_steps / total_episodes: transitions / episodes ever added, episodes loaded at start
      included, not reduced by eviction; total_agent_steps.
    spec: {key: (per-step shape, dtype)} of the stored (non-log) keys; None while empty.

  Raises (construction): ValueError for a capacity or minlen that is not a positive integer.

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
        raise ValueError(f'Replay capacity must be a positive whole number of agent steps or '
                         f'None, got {capacity!r}.')
      capacity = int(capacity)
    if int(minlen) < 1:
      raise ValueError(f'Replay minlen must be >= 1 agent steps, got {minlen!r}.')
    self.directory = pathlib.Path(directory)
    self.directory.mkdir(parents=True, exist_ok=True)
    self.capacity = capacity
    self.minlen = int(minlen)
    self.seed = int(seed)
    self.rows = None if capacity is None else capacity + capacity // self.minlen
    self._starts = chunk_starts(self.rows)
    self._ring = int(self._starts[-1])
    self._allocated = np.zeros(len(self._starts) - 1, bool)
    self._lock = threading.Lock()
    self._entries: collections.deque[tuple[str, int, int]] = collections.deque()  # name, offset, L
    self._ongoing: dict[int, list[dict[str, np.ndarray]]] = collections.defaultdict(list)
    self._spec: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None
    self._big: dict[str, list[Any]] = {}  # key -> chunk variables
    self._small: dict[str, Any] = {}  # key -> one variable
    self._small_rows = 0
    self._table = None
    self._datasets = 0
    self._sample_fns: dict[tuple[int, int, bool], Any] = {}
    self._warn_short = RateLimitedWarning()
    self._warn_dropped = RateLimitedWarning()
    self.num_steps = 0
    self.total_steps = 0
    self.total_episodes = 0
    self._load()

  def _load(self) -> None:
    """Holds the folder's newest episodes; the newest file's keys, shapes and dtypes decide which
    episodes fit (others are skipped with a warning naming the file and the mismatch)."""
    episodes = load_episodes(self.directory, self.capacity, self.minlen)
    if episodes:
      self._spec = self._stored_spec(next(reversed(episodes.values())))
    for name, episode in episodes.items():
      problem = self._mismatch(episode)
      if problem:
        logger.warning('Skipping episode file %s: it does not fit this replay (%s).',
                       self.directory / name, problem)
        continue
      self._store(name, episode)

  @property
  def num_episodes(self) -> int:
    return len(self._entries)

  @property
  def num_agent_steps(self) -> int:
    """Agent steps held in memory (transitions less one reset row per episode)."""
    return self.num_steps - self.num_episodes

  @property
  def total_agent_steps(self) -> int:
    """Agent steps ever added (loaded at start included)."""
    return self.total_steps - self.total_episodes

  @property
  def spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]] | None:
    return self._spec

  @property
  def nbytes(self) -> int:
    """Bytes allocated now for the in-memory store (allocated chunks of the large keys, the
    small keys' variables)."""
    if self._spec is None:
      return 0
    rows = int(np.diff(self._starts)[self._allocated].sum())
    per_step = {k: int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                for k, (shape, dtype) in self._spec.items()}
    return (rows * sum(per_step[k] for k in self._big) +
            self._small_rows * sum(per_step[k] for k in self._small))

  @property
  def bytes_per_step(self) -> int:
    """Bytes of one stored transition (sum over the stored keys); 0 while empty."""
    if self._spec is None:
      return 0
    return sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
               for shape, dtype in self._spec.values())

  def episode_names(self) -> list[str]:
    """File names of the episodes held in memory, oldest first."""
    return [name for name, _, _ in self._entries]

  def _stored_spec(self, episode: Mapping[str, np.ndarray]):
    return {k: (tuple(v.shape[1:]), np.dtype(v.dtype)) for k, v in episode.items()
            if not k.startswith('log_')}

  def _mismatch(self, episode: Mapping[str, np.ndarray]) -> str:
    """'' if the episode fits the stored spec, else what differs, e.g. "key 'image' is
    (64, 64, 3) uint8, the replay holds (64, 64, 1) uint8"."""
    if self._spec is None:
      return ''
    spec = self._stored_spec(episode)
    problems = []
    missing, extra = sorted(set(self._spec) - set(spec)), sorted(set(spec) - set(self._spec))
    if missing:
      problems.append(f'lacks the keys {missing}')
    if extra:
      problems.append(f'has the extra keys {extra}')
    for key in sorted(set(spec) & set(self._spec)):
      if spec[key] != self._spec[key]:
        (shape, dtype), (want, want_dtype) = spec[key], self._spec[key]
        problems.append(f"key '{key}' is {shape} {dtype}, the replay holds {want} {want_dtype}")
    return '; '.join(problems)

  def _check_spec(self, episode: Mapping[str, np.ndarray]) -> None:
    problem = self._mismatch(episode)
    if problem:
      raise ValueError(f'Episode keys, shapes or dtypes differ from the stored ones: {problem}.')

  def _create_storage(self) -> None:
    """The storage variables (empty until allocated) and the episode table.

    Keys of at least CHUNKED_BYTES per step (images) get one variable per chunk of the ring,
    allocated as episodes reach it; the small keys (action, reward, flags: tens of bytes) one
    variable each, grown by doubling (a copy, which costs little at their size).
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if tf.distribute.has_strategy():
      raise RuntimeError('Create and fill the Replay outside tf.distribute strategy scopes: its '
                         'storage must be plain CPU variables.')
    with tf.device('/CPU:0'):
      for key, (shape, dtype) in self._spec.items():
        empty = lambda: tf.zeros((0,) + shape, tf.as_dtype(dtype))
        kind = tf.TensorShape((None,) + shape)
        if int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize >= CHUNKED_BYTES:
          self._big[key] = [tf.Variable(empty(), shape=kind, trainable=False,
                                        name=f'replay_{key}_{c}')
                            for c in range(len(self._starts) - 1)]
        else:
          self._small[key] = tf.Variable(empty(), shape=kind, trainable=False,
                                         name=f'replay_{key}')
      self._table = tf.Variable(
          tf.zeros((0, 2), tf.int64), shape=tf.TensorShape((None, 2)), trainable=False,
          name='replay_table')

  def _allocate(self, chunk: int) -> None:
    """Gives chunk `chunk` of every large key its rows (uninitialised; written before they are
    sampled)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    rows = int(self._starts[chunk + 1] - self._starts[chunk])
    with tf.device('/CPU:0'):
      for key, variables in self._big.items():
        shape, dtype = self._spec[key]
        variables[chunk].assign(tf.raw_ops.Empty(
            shape=(rows,) + shape, dtype=tf.as_dtype(dtype), init=False))
    self._allocated[chunk] = True

  def _grow_small(self, rows: int) -> None:
    """Grows the small keys' variables to hold ring slots [0, rows) (doubling, capped at the
    ring), keeping their content."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if rows <= self._small_rows:
      return
    size = min(self._ring, max(rows, 2 * self._small_rows, 1024))
    with tf.device('/CPU:0'):
      for key, var in self._small.items():
        shape, dtype = self._spec[key]
        var.assign(tf.concat(
            [var.read_value(), tf.zeros((size - self._small_rows,) + shape, dtype)], 0))
    self._small_rows = size

  def _evict_for(self, length: int) -> None:
    """Evicts the oldest episodes as the authors do: while more than one episode would be held
    and the held agent steps (the new episode's included) exceed the capacity."""
    if self.capacity is None:
      return
    held = self.num_agent_steps + length - 1
    while self._entries and held > self.capacity:
      _, _, evicted = self._entries.popleft()
      self.num_steps -= evicted
      held -= evicted - 1

  def _store(self, name: str, episode: dict[str, np.ndarray]) -> None:
    """Holds a checked episode in memory (evicting the oldest at capacity)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self._check_spec(episode)
    if self._spec is None:
      self._spec = self._stored_spec(episode)
    if self._table is None:
      self._create_storage()
    length = episode_length(episode)
    self.total_steps += length
    self.total_episodes += 1
    if length > self._ring:
      logger.warning('Episode %s has %d agent steps, more than the replay capacity %d: kept on '
                     'disk, not in memory.', name, length - 1, self.capacity)
      return
    with self._lock:
      self._evict_for(length)
      self._publish()  # evicted slots leave the sampling table before they are overwritten
    offset = 0
    if self._entries:
      _, last_offset, last_length = self._entries[-1]
      offset = (last_offset + last_length) % self._ring
    slots = (offset + np.arange(length, dtype=np.int64)) % self._ring
    chunks = np.searchsorted(self._starts, slots, side='right') - 1
    for chunk in np.unique(chunks):
      if not self._allocated[chunk]:
        self._allocate(int(chunk))
      mask = chunks == chunk
      local = tf.constant(slots[mask] - self._starts[chunk], tf.int64)
      for key, variables in self._big.items():
        variables[chunk].scatter_update(tf.IndexedSlices(tf.constant(episode[key][mask]), local))
    self._grow_small(int(slots.max()) + 1)
    for key, var in self._small.items():
      var.scatter_update(tf.IndexedSlices(tf.constant(episode[key]), tf.constant(slots)))
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
      The file's path, or None if the episode has fewer than minlen agent steps (logged, not
      saved).

    Raises:
      ValueError: for a malformed episode, or one whose keys/shapes/dtypes differ from the
        stored episodes' (the message names the mismatch).
      EpisodeWriteError: when the file cannot be written (names the path; nothing stored).
    """
    episode = check_episode(episode)
    length = episode_length(episode)
    if length - 1 < self.minlen:
      self._warn_short('Not storing an episode of %d transitions (%d agent steps) in %s: '
                       'shorter than replay minlen %d agent steps.', length, length - 1,
                       self.directory, self.minlen)
      return None
    self._check_spec(episode)
    path = save_episode(self.directory, episode)
    self._store(path.name, episode)
    return path

  def add_step(self, transition: Mapping[str, Any], worker: int = 0) -> dict[str, np.ndarray] | None:
    """Appends one transition of env `worker`; completes the episode on `is_last`.

    A transition with is_first True starts a new episode (an unfinished one of the same
    worker is dropped with a rate-limited warning; docs/reference.md §8: never glued onto the next).

    Returns:
      The completed episode {key: [L, ...]} on is_last (saved and stored if L - 1 >= minlen),
      else None.

    Raises:
      ValueError: if the worker's first transition is not an is_first one.
      EpisodeWriteError: from add_episode.
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

  def _gather(self, slots) -> dict:
    """{key: rows at ring `slots`} (int64 [N]): large keys gathered across their chunk
    variables (one partition of the slots by chunk, shared by all of them), small keys directly."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    out = {key: tf.gather(var, slots) for key, var in self._small.items()}
    if not self._big:
      return out
    count = len(self._starts) - 1
    starts = tf.constant(self._starts, tf.int64)
    chunk = tf.searchsorted(starts, slots, side='right', out_type=tf.int32) - 1
    local = tf.dynamic_partition(slots - tf.gather(starts, chunk), chunk, count)
    where = tf.dynamic_partition(tf.range(tf.size(slots)), chunk, count)
    for key, variables in self._big.items():
      out[key] = tf.dynamic_stitch(where, [tf.gather(v, i) for v, i in zip(variables, local)])
    return out

  def _sample_graph(self, seed, batch: int, length: int, prioritize_ends: bool):
    """In-graph sampling of one batch (docs/reference.md §6); `seed` is a stateless seed [2] int64."""
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
    slots = tf.reshape(index % self._ring, [-1])  # [B * T] ring slots
    out = {key: tf.reshape(value, (batch, length) + self._spec[key][0])
           for key, value in self._gather(slots).items()}
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
