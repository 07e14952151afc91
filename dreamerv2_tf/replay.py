"""Episode files, the in-memory episode store and tf.data sequence sampling (SPEC.md §1, §6).

Episodes. An episode is a dict of numpy arrays stacked along time, `{key: [L, ...]}`, one row per
transition of SPEC.md §1 (row 0 is the reset transition). Its length L is the number of
transitions. Dtypes are normalised on save: floats -> float32, signed ints -> int32, uint8 and
bool kept.

Files. `save_episode` writes one compressed `.npz` per episode, named
`{timestamp}-{uuid}-{length}.npz` (timestamp `%Y%m%dT%H%M%S`, UTC), atomically: a temporary file
in the same folder, then `os.replace`. `load_episodes` reads a folder back (newest files first
when a capacity is given) and skips, with a warning naming the file, anything that is not a
readable episode: corrupt or truncated zips, foreign `.npz` files, arrays of unequal length,
object arrays. Nothing on disk is ever deleted or rewritten by this module.

Replay. `Replay(directory, capacity, minlen)` loads the folder's episodes on construction (a
restarted run resumes), takes new ones through `add_step` (per-worker accumulation, saved on
`is_last`) or `add_episode`, and evicts the oldest episodes from memory (never from disk) when
the stored agent steps exceed `capacity`. Episodes shorter than `minlen` are neither saved nor
stored; a log line says so.

Sampling (`Replay.dataset`), exactly SPEC.md §6, per sequence:
  episode  ~ uniform over stored episodes with L >= T (whatever their length),
  upper    = L - T + 1, or L + 1 with prioritize_ends,
  start    = min(randint(upper), L - T),
  sequence = episode[start : start + T], with is_first[0] set True.
With prioritize_ends the last window gets probability (T + 1) / (L + 1) instead of
1 / (L - T + 1). (The authors' "randomised length" reduces to a fixed T because their replay uses
minlen = maxlen = T; it is not a separate step here.) Batches are `{key: [B, T, ...]}`,
`log_*` keys left out, built in numpy inside a generator and prefetched by tf.data.
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
import uuid
import zipfile
from typing import Any, Iterator, Mapping

import numpy as np

logger = logging.getLogger(__name__)

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
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%S')
  path = directory / f'{stamp}-{uuid.uuid4().hex}-{episode_length(episode)}.npz'
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **episode)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix='.npz')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(buffer.getbuffer())
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

  Files are read newest first (by file name, whose timestamp sorts chronologically) until
  `capacity` transitions are loaded (the episode that crosses it is included), then returned
  oldest first. Files that fail to load are skipped with a warning naming them; episodes with
  fewer than `minlen` transitions are skipped with a log line. Nothing is deleted.

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
  loaded, steps = [], 0
  for path in paths:
    if capacity is not None and steps >= capacity:
      break
    try:
      episode = load_episode(path)
    except ValueError as e:
      logger.warning('Skipping episode file %s: %s', path, e)
      continue
    length = episode_length(episode)
    if length < minlen:
      logger.info('Skipping episode file %s: %d transitions < minlen %d.', path, length, minlen)
      continue
    loaded.append((path.name, episode))
    steps += length
  return dict(reversed(loaded))


class Replay:
  """Stores complete episodes on disk and in memory; samples training sequences (SPEC.md §6).

  Args:
    directory: episode folder (e.g. `<logdir>/train_episodes`); existing episodes are loaded.
    capacity: maximum transitions (agent steps) held in memory; None for unbounded. The oldest
      episodes are evicted first, always keeping the newest one; files stay on disk.
    minlen: episodes with fewer transitions are neither saved nor stored (a log line says so).
    seed: seeds the sampling.

  Attributes:
    num_steps / num_episodes: transitions / episodes held in memory now.
    total_steps / total_episodes: ever added, episodes loaded at start included, not reduced by
      eviction.

  Thread safety: `add_*` may run while a dataset iterator samples in tf.data's thread.
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
    self._episodes: list[dict[str, np.ndarray]] = []
    self._names: list[str] = []
    self._lengths: list[int] = []
    self._ongoing: dict[int, list[dict[str, np.ndarray]]] = collections.defaultdict(list)
    self._spec: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None
    self._datasets = 0
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
    return len(self._episodes)

  @property
  def spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]] | None:
    """{key: (per-step shape, dtype)} of the stored episodes; None while empty."""
    return self._spec

  def _store(self, name: str, episode: dict[str, np.ndarray]) -> None:
    spec = {k: (v.shape[1:], v.dtype) for k, v in episode.items()}
    if self._spec is None:
      self._spec = spec
    elif spec != self._spec:
      raise ValueError(f'Episode keys, shapes or dtypes {spec} differ from the stored ones '
                       f'{self._spec}.')
    length = episode_length(episode)
    with self._lock:
      self._episodes.append(episode)
      self._names.append(name)
      self._lengths.append(length)
      self.num_steps += length
      self.total_steps += length
      self.total_episodes += 1
      while self.capacity is not None and self.num_steps > self.capacity and len(self._episodes) > 1:
        self._episodes.pop(0)
        self._names.pop(0)
        self.num_steps -= self._lengths.pop(0)

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
      logger.info('Not storing an episode of %d transitions (< replay minlen %d).',
                  length, self.minlen)
      return None
    if self._spec is not None:
      spec = {k: (v.shape[1:], v.dtype) for k, v in episode.items()}
      if spec != self._spec:
        raise ValueError(f'Episode keys, shapes or dtypes {spec} differ from the stored ones '
                         f'{self._spec}.')
    path = save_episode(self.directory, episode)
    self._store(path.name, episode)
    return path

  def add_step(self, transition: Mapping[str, Any], worker: int = 0) -> dict[str, np.ndarray] | None:
    """Appends one transition of env `worker`; completes the episode on `is_last`.

    A transition with is_first True starts a new episode (an unfinished one of the same
    worker is dropped with a log line; SPEC.md §8: never glued onto the next).

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
        logger.info('Dropping an unfinished episode of %d transitions from worker %d.',
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

  def _choose(self, rng: np.random.Generator, batch: int,
              length: int) -> list[tuple[dict[str, np.ndarray], int]]:
    """B (episode, L) pairs drawn uniformly among stored episodes with L >= length."""
    chosen = []
    with self._lock:
      count = len(self._episodes)
      while len(chosen) < batch:
        for _ in range(100):  # rejection sampling: uniform among the long-enough episodes
          index = int(rng.integers(count))
          if self._lengths[index] >= length:
            break
        else:
          eligible = [i for i, n in enumerate(self._lengths) if n >= length]
          if not eligible:
            raise ValueError(f'Replay holds no episode of at least {length} transitions.')
          index = eligible[int(rng.integers(len(eligible)))]
        chosen.append((self._episodes[index], self._lengths[index]))
    return chosen

  def _sample(self, rng: np.random.Generator, batch: int, length: int,
              prioritize_ends: bool) -> dict[str, np.ndarray]:
    keys = [k for k in self._spec if not k.startswith('log_')]
    out = {k: np.empty((batch, length) + self._spec[k][0], self._spec[k][1]) for k in keys}
    for b, (episode, total) in enumerate(self._choose(rng, batch, length)):
      upper = total + 1 if prioritize_ends else total - length + 1
      start = min(int(rng.integers(upper)), total - length)
      for k in keys:
        out[k][b] = episode[k][start:start + length]
    out['is_first'][:, 0] = True
    return out

  def sample(self, batch: int, length: int, prioritize_ends: bool,
             rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """One numpy batch {key: [B, T, ...]} sampled as in the module docstring.

    Raises:
      ValueError: if no stored episode has at least `length` transitions.
    """
    self._check_sampling(batch, length)
    rng = rng or np.random.default_rng(self.seed)
    return self._sample(rng, batch, length, prioritize_ends)

  def _check_sampling(self, batch: int, length: int) -> None:
    if int(batch) < 1 or int(length) < 1:
      raise ValueError(f'Batch ({batch}) and sequence length ({length}) must be >= 1.')
    with self._lock:
      longest = max(self._lengths, default=0)
    if longest < length:
      raise ValueError(
          f'Replay in {self.directory} holds no episode of at least {length} transitions '
          f'({self.num_episodes} episodes, longest {longest}); fill it before sampling.')

  def dataset(self, batch: int, length: int, prioritize_ends: bool, prefetch: int = 2):
    """A tf.data.Dataset of batches {key: [B, T, ...]} (see the module docstring).

    Dtypes: image uint8, action/reward float32, is_first/is_last/is_terminal bool (other keys
    as stored, log_* left out). The sampling runs in numpy in tf.data's generator thread; each
    call of the dataset's iterator gets its own random stream seeded from (seed, call count).

    Raises:
      ValueError: if no stored episode has at least `length` transitions yet.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top (keeps this module TF-free on import)
    batch, length = int(batch), int(length)
    self._check_sampling(batch, length)
    signature = {
        k: tf.TensorSpec((batch, length) + shape, tf.as_dtype(dtype))
        for k, (shape, dtype) in self._spec.items() if not k.startswith('log_')}
    self._datasets += 1
    seed = [self.seed, self._datasets]

    def generator() -> Iterator[dict[str, np.ndarray]]:
      rng = np.random.default_rng(seed)
      while True:
        yield self._sample(rng, batch, length, prioritize_ends)

    dataset = tf.data.Dataset.from_generator(generator, output_signature=signature)
    return dataset.prefetch(int(prefetch))
