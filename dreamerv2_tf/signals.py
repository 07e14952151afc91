"""SIGINT/SIGTERM for the training loop: a stop flag, and calls that stay interruptible.

Python runs signal handlers only in the main thread, between bytecodes: while the main thread is
inside one long TensorFlow call (tracing and optimising the train step takes minutes for the
full Atari model on a CPU, one update 8-22 s) a signal waits for the call to return.
`Worker.call(fn)` therefore runs `fn` in one long-lived background thread while the main thread
waits in short slices, so the handler runs (and says so) within a fraction of a second; the
caller decides whether to wait for `fn` to finish (a normal update: seconds) or to abandon it
(`abandon_on_stop=True`: the first update's tracing).
"""

from __future__ import annotations

import queue
import signal
import threading
from typing import Any, Callable


class StopRequest:
  """Turns SIGINT/SIGTERM into a flag the loop checks between environment steps and updates.

  The first signal sets `signum` and prints what happens next; a second SIGINT raises
  KeyboardInterrupt immediately (no checkpoint). Handlers are installed only in the main thread.
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}

  def __bool__(self) -> bool:
    return self.signum is not None

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    name = signal.Signals(signum).name
    print(f'\nReceived {name}: stopping after the current step and saving a checkpoint, or '
          'at once without one while the first update traces (press Ctrl-C again to abort '
          'without one).', flush=True)

  def install(self) -> 'StopRequest':
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGINT, signal.SIGTERM):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def uninstall(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()


class Abandoned(Exception):
  """`Worker.call` gave up waiting for a call because a stop was requested."""


class Worker:
  """One daemon thread that runs calls for the main thread (see the module docstring).

  Keras keeps its global dtype policy per thread: `setup` (e.g. setting the policy the main
  thread uses) runs first in the worker thread.

  Args:
    setup: called once in the worker thread before any call.
    poll_s: how often the waiting main thread wakes up (seconds).
  """

  def __init__(self, setup: Callable[[], None] | None = None, poll_s: float = 0.1):
    self._setup = setup
    self._poll_s = poll_s
    self._jobs: queue.Queue = queue.Queue()
    self._thread: threading.Thread | None = None
    self.busy = False

  def _serve(self) -> None:
    if self._setup is not None:
      self._setup()
    while True:
      fn, box, done = self._jobs.get()
      if fn is None:
        return
      try:
        box['value'] = fn()
      except BaseException as e:  # pylint: disable=broad-except (re-raised in the caller)
        box['error'] = e
      done.set()

  def call(self, fn: Callable[[], Any], stop: Callable[[], bool] | None = None,
           abandon_on_stop: bool = False, on_wait: Callable[[], None] | None = None) -> Any:
    """Runs `fn()` in the worker thread and returns its result (or raises its exception).

    `on_wait()` is called in the main thread at every poll while `fn` runs (e.g. a progress
    line during a minutes-long first update).

    Raises:
      Abandoned: `abandon_on_stop` and `stop()` became true before `fn` returned (`fn` keeps
        running in the background; `busy` stays True until it ends).
    """
    if self._thread is None:
      self._thread = threading.Thread(target=self._serve, name='dreamerv2-train', daemon=True)
      self._thread.start()
    box: dict[str, Any] = {}
    done = threading.Event()
    self.busy = True
    self._jobs.put((fn, box, done))
    while not done.wait(self._poll_s):
      if abandon_on_stop and stop is not None and stop():
        raise Abandoned()
      if on_wait is not None:
        on_wait()
    self.busy = False
    if 'error' in box:
      raise box['error']
    return box.get('value')

  def close(self) -> None:
    """Ends the thread after its current call (does not wait for it)."""
    if self._thread is not None:
      self._jobs.put((None, None, None))
      self._thread = None
