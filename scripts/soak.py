"""Soak run: trains the debug config for N minutes and prints resident memory every minute.

    python scripts/soak.py [--minutes 20] [--logdir DIR] [--configs atari debug] [-- EXTRA ...]

Starts `train.py --configs <configs> --logdir DIR --steps=1e9` (plus EXTRA flags) in a
subprocess, and once a minute prints one row: minute, resident memory (RSS, MiB, of the
training process and its children, read from /proc), agent steps on disk (episode files in the
train replay, from their names) and the MiB of episode arrays those transitions take in memory
(debug Atari: a 64x64x1 uint8 image, a one-hot action of 6 float32 and a few scalars each). Memory should grow only with
the replay. At the end it sends SIGINT (checkpoint and exit) and prints the table again.

Linux only (/proc). A benchmark script, not a test (issue 12).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


def rss_mib(pid: int) -> float:
  """Resident memory of `pid` and all its descendants, MiB (VmRSS from /proc)."""
  total, stack = 0, [pid]
  while stack:
    current = stack.pop()
    try:
      status = pathlib.Path(f'/proc/{current}/status').read_text()
      total += next(int(l.split()[1]) for l in status.splitlines() if l.startswith('VmRSS:'))
      for task in pathlib.Path(f'/proc/{current}/task').iterdir():
        children = (task / 'children').read_text().split()
        stack.extend(int(c) for c in children)
    except (OSError, StopIteration):
      continue
  return total / 1024


def replay_steps(logdir: pathlib.Path) -> tuple[int, int]:
  """(agent steps in train episode files, transitions in them), from the file names."""
  steps = transitions = 0
  for path in (logdir / 'train_episodes').glob('*.npz'):
    if path.name.startswith('.'):
      continue
    length = int(path.stem.rsplit('-', 1)[-1])
    transitions += length
    steps += length - 1
  return steps, transitions


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--minutes', type=float, default=20)
  parser.add_argument('--logdir', default=None)
  parser.add_argument('--configs', nargs='+', default=['atari', 'debug'])
  parser.add_argument('extra', nargs='*', help='more train.py flags (after --)')
  args = parser.parse_args(argv)
  logdir = pathlib.Path(args.logdir or tempfile.mkdtemp(prefix='soak-'))
  command = [sys.executable, str(REPO / 'train.py'), '--configs', *args.configs, '--logdir',
             str(logdir), '--steps=1e9', *args.extra]
  print('Command:', ' '.join(command), flush=True)
  logdir.parent.mkdir(parents=True, exist_ok=True)
  log = open(logdir.parent / f'{logdir.name}.log', 'w')
  proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  rows = []
  header = f'{"minute":>6} {"RSS MiB":>9} {"agent steps on disk":>20} {"replay MiB":>11}'
  print(header, flush=True)
  start = time.time()
  try:
    for minute in range(int(args.minutes) + 1):
      while time.time() < start + 60 * minute and proc.poll() is None:
        time.sleep(1)
      if proc.poll() is not None:
        print(f'train.py ended early with status {proc.returncode}; see {log.name}')
        break
      steps, transitions = replay_steps(logdir)
      # One stored transition of the debug Atari config: image 64x64x1 uint8, action (6
      # float32), reward (float32), is_first/is_last/is_terminal (bool).
      nbytes = transitions * (64 * 64 + 6 * 4 + 4 + 3)
      rows.append((minute, rss_mib(proc.pid), steps, nbytes / 2**20))
      print(f'{rows[-1][0]:>6} {rows[-1][1]:>9.0f} {rows[-1][2]:>20,} {rows[-1][3]:>11.1f}',
            flush=True)
  finally:
    if proc.poll() is None:
      proc.send_signal(signal.SIGINT)
      try:
        proc.wait(timeout=300)
      except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
  if len(rows) > 2:
    (m0, r0, _, b0), (m1, r1, _, b1) = rows[1], rows[-1]
    print(f'RSS grew {r1 - r0:+.0f} MiB from minute {m0} to {m1}; the replay\'s episode arrays '
          f'grew {b1 - b0:+.1f} MiB.')
  return 0


if __name__ == '__main__':
  sys.exit(main())
