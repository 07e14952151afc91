"""One run per logdir: an OS lock on `<logdir>/.lock` (issue 12).

`LogdirLock(logdir).acquire()` takes an exclusive `fcntl.flock` on `<logdir>/.lock` without
waiting and writes the holder into the file (`pid <PID> host <HOST> since <UTC time>`). The OS
releases the lock when the holding process ends in any way (exit, crash, SIGKILL), so:
- a second run on a logdir in use fails at once with `LogdirLockedError`, naming the PID and host
  written in the file;
- a lock file left by a process that is gone (the file names it but nobody holds the lock) is
  taken over, and `acquire` says so through `warn`.

`release()` empties the file and unlocks it (the file stays: deleting it would let a second
process lock a new file while a third still holds the old one). The file descriptor is not
inherited by child processes (environment workers), so the lock ends with the main process.

Limits: `flock` locks are per host on most network file systems (NFS before Linux 2.6.12 and
some FUSE mounts ignore them); two hosts sharing one logdir over such a mount are not detected.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import os
import pathlib
import socket
from typing import Callable

from dreamerv2_tf.config import ConfigError

LOCK_NAME = '.lock'


class LogdirLockedError(ConfigError):
  """Another live process holds the logdir's lock; the message names it."""


def _holder_text(path: pathlib.Path) -> str:
  try:
    return ' '.join(path.read_text().split())
  except OSError:
    return ''


class LogdirLock:
  """Exclusive, non-blocking lock of one logdir (see the module docstring).

  Args:
    logdir: the run directory (must exist before `acquire`).
  """

  def __init__(self, logdir: str | os.PathLike):
    self.path = pathlib.Path(logdir) / LOCK_NAME
    self._fd: int | None = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self, warn: Callable[[str], None] = print) -> 'LogdirLock':
    """Takes the lock or raises at once.

    Returns:
      self.
    Raises:
      LogdirLockedError: another process holds it (message: logdir, PID, host, since when).
      OSError: the lock file cannot be opened (e.g. a read-only logdir).
    """
    if self._fd is not None:
      return self
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      holder = _holder_text(self.path) or 'an unknown process'
      raise LogdirLockedError(
          f'{self.path.parent} is in use by another run ({holder}; lock file {self.path}). '
          'Stop that run first, or train in another --logdir.') from None
    stale = _holder_text(self.path)
    if stale:
      warn(f'Took over the lock of {self.path.parent} from a run that is gone ({stale}).')
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'pid {os.getpid()} host {socket.gethostname()} since {stamp}\n'.encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    """Empties the lock file and unlocks it (nothing happens when not held)."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)
    except OSError:
      pass
    finally:
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)

  def __enter__(self) -> 'LogdirLock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
