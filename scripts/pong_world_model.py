"""Trains the full Atari world model on real Pong frames and writes open-loop predictions.

    nice -n 10 .venv/bin/python scripts/pong_world_model.py --budget_min 30

What it does (issue 17):
1. Prefill with the training Runner (`Runner.open` + `Runner.prefill`): a uniform random policy
   plays `atari_pong` (the real `atari` config: 64×64 grayscale, action repeat 4, sticky
   actions) until the train replay in `<logdir>/train_episodes` holds `--prefill` agent steps,
   and one more episode goes to `<logdir>/eval_episodes` (held out: never trained on). Episodes
   already on disk count, so a second run reuses them.
2. Trains only the world model of the agent (`Agent(config, ...).wm.train`, the same update the
   agent's `train` starts with; encoder, RSSM, decoder, reward and discount heads at full
   `atari` size) on replay batches of `dataset.batch` × `dataset.length` (16 × 50) for
   `--budget_min` minutes of wall clock (tracing of the first update included), as many
   updates as fit. Prints the losses every `--print_every` updates.
3. Writes the world model's open-loop predictions (`WorldModel.video_pred`: 5 observed frames,
   then imagined ones with the true actions; rows truth | model | error) for `--columns`
   held-out sequences as a looping GIF (`--out`, default docs/pong_openloop.gif), each frame
   enlarged `--scale` times, and the per-update losses as CSV beside it (same name, .csv):
   update, seconds (wall clock of the updates so far, summed over sessions; the tracing first
   update included), image_loss, reward_loss, discount_loss, kl_loss, model_kl, model_loss.
   Also prints the held-out image_loss (one fixed batch of the eval episode) before and after
   the session.
4. Checkpoints the world model (and its optimiser) in `<logdir>/world_model` every
   `--save_every_min` minutes and at the end, with the losses in `<logdir>/losses.csv`: the same
   command again with the same `--logdir` continues training where it stopped (update numbers
   and seconds continue).

Units: `--prefill` in agent steps (1 agent step = 4 frames). image_loss is the negative
log-likelihood per image (sum over 64·64 pixels of a unit-variance Gaussian, docs/reference.md §3), in
nats; it includes the constant 0.5·ln(2π) per pixel (3763.8 nats per 64×64 image), so a
perfect reconstruction gives about 3764, not 0.

Output: stdout lines, the GIF (< 1 MB at the defaults), the CSV. Nothing else is written outside
`--logdir` (default /tmp/pong_world_model).
"""

from __future__ import annotations

import argparse
import csv
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from dreamerv2_tf.config import load_config  # pylint: disable=wrong-import-position

LOSS_KEYS = ('image_loss', 'reward_loss', 'discount_loss', 'kl_loss', 'model_kl', 'model_loss')


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--budget_min', type=float, default=30.0,
                      help='wall-clock minutes of world-model training (default 30)')
  parser.add_argument('--prefill', type=int, default=10000,
                      help='agent steps of random play in the train replay (default 10000)')
  parser.add_argument('--logdir', default='/tmp/pong_world_model',
                      help='replay folders (reused by a second run)')
  parser.add_argument('--out', default=str(REPO / 'docs' / 'pong_openloop.gif'),
                      help='GIF of the open-loop predictions; the CSV goes beside it')
  parser.add_argument('--columns', type=int, default=4, help='held-out sequences shown')
  parser.add_argument('--scale', type=int, default=2, help='enlarge GIF frames (default 2)')
  parser.add_argument('--max_kib', type=float, default=1000,
                      help='shrink the GIF (scale, then sequences, then frames) until it fits '
                      '(default 1000 KiB)')
  parser.add_argument('--save_every_min', type=float, default=10.0,
                      help='minutes between world-model checkpoints (default 10)')
  parser.add_argument('--print_every', type=int, default=10, help='updates between prints')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--configs', nargs='*', default=['atari'],
                      help='config overlays (default: atari; add debug for a smoke test)')
  args = parser.parse_args(argv)
  for name in ('prefill', 'columns', 'scale', 'print_every'):
    if getattr(args, name) < 1:
      parser.error(f'--{name} must be at least 1, got {getattr(args, name)}.')
  if not args.budget_min > 0:
    parser.error(f'--budget_min must be positive, got {args.budget_min}.')
  if not args.out.endswith('.gif'):
    parser.error(f'--out must end in .gif, got {args.out!r}.')
  return args


def prefill(config, logdir: pathlib.Path):
  """The training Runner of `config` in `logdir` (`Runner.open`: device, seeds, replays, envs,
  agent), prefilled (`Runner.prefill`: a uniform random policy until the train replay holds
  `config.prefill` agent steps and one episode, and the eval replay one episode). Episodes on
  disk count. The caller closes it."""
  # pylint: disable=import-outside-toplevel
  from dreamerv2_tf.runner import Runner, stored_agent_steps
  from dreamerv2_tf.signals import StopRequest
  start = time.time()
  runner = Runner(config, logdir, stop=StopRequest().install())
  runner.open()
  runner.prefill()
  if runner.stop:
    runner.close()
    raise SystemExit(128 + runner.stop.signum)
  for name, replay in (('train', runner.train_replay), ('eval', runner.eval_replay)):
    print(f'{name} replay: {replay.num_episodes} episodes, '
          f'{stored_agent_steps(replay):,} agent steps.', flush=True)
  print(f'Set-up and prefill: {time.time() - start:.0f} s.', flush=True)
  return runner


class Session:
  """World-model updates with checkpoints in `<logdir>/world_model` and every update's losses
  in `<logdir>/losses.csv`; a new session in the same logdir resumes both.

  Args:
    agent: the Agent whose `wm` is trained. logdir: the run folder.
    save_every_s: seconds between checkpoints (and at the end).
  """

  def __init__(self, agent, logdir: pathlib.Path, save_every_s: float = 600.0):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    self.agent = agent
    self.csv = logdir / 'losses.csv'
    self.checkpoint = tf.train.Checkpoint(wm=agent.wm)
    self.manager = tf.train.CheckpointManager(self.checkpoint, logdir / 'world_model', 1)
    self.resumed = self.manager.latest_checkpoint
    self.records = read_csv(self.csv) if self.resumed else []
    if self.resumed:  # deferred: values land as the variables are built
      self.checkpoint.restore(self.resumed)
      print(f'Resuming {self.resumed} after {len(self.records)} updates.', flush=True)
    self.save_every_s = save_every_s
    self._update = tf.function(lambda data: agent.wm.train(data)[2])

  def save(self) -> None:
    self.manager.save()
    write_csv(self.records, self.csv)

  def _first_update(self, batch) -> float:
    """Builds the optimiser and traces the update; a resumed session then restores the
    checkpoint again over every variable (undoing that update). Returns its seconds."""
    start = time.time()
    metrics = self._update(batch)
    if not self.resumed:
      self._add(metrics, time.time() - start)
    else:
      status = self.checkpoint.restore(self.resumed)
      try:
        status.assert_existing_objects_matched()
      except AssertionError as e:  # a checkpoint of an older version of the model
        print(f'Warning: variables absent from {self.resumed} keep their initial values '
              f'({" ".join(str(e).split())[-200:]}).', flush=True)
    return time.time() - start

  def _add(self, metrics, seconds: float) -> dict:
    offset = self.records[-1]['seconds'] if self.records else 0.0
    record = {k: float(metrics[k]) for k in LOSS_KEYS if k in metrics}
    record.update(update=len(self.records) + 1, seconds=offset + seconds)
    self.records.append(record)
    return record

  def train(self, next_batch, budget_s: float, print_every: int, stop=lambda: False) -> int:
    """Updates on `next_batch()` batches until `budget_s` seconds of this session have passed (the first,
    tracing, update included), at least one counted, or until `stop()` (checked between
    updates); returns the number counted in this session."""
    keys = ('image', 'action', 'reward', 'is_first', 'is_terminal')
    take = lambda: {k: v for k, v in next_batch().items() if k in keys}  # pylint: disable=unnecessary-lambda-assignment
    begin = len(self.records)
    start = last_save = time.time()
    print(f'First update (traces the train step): {self._first_update(take()):.1f} s.',
          flush=True)
    while time.time() - start < budget_s or len(self.records) == begin:  # >= 1 counted
      if stop():  # Ctrl-C / SIGTERM: save and stop
        break
      before = time.time()
      record = self._add(self._update(take()), 0.0)
      record['seconds'] += time.time() - before
      if record['update'] % print_every == 0:
        print(format_record(record, self.records[begin:]), flush=True)
      if time.time() - last_save >= self.save_every_s:
        self.save()
        last_save = time.time()
    self.save()
    return len(self.records) - begin


def format_record(record: dict, session: list[dict]) -> str:
  """One progress line: update, minutes of training so far, s/update this session, losses."""
  rate = (session[-1]['seconds'] - session[0]['seconds']) / max(len(session) - 1, 1)
  return (f'update {record["update"]:5d}  {record["seconds"] / 60:6.1f} min  '
          f'{rate:5.2f} s/update  ' + '  '.join(
              f'{k} {record[k]:.2f}' for k in LOSS_KEYS if k in record))


def read_csv(path: pathlib.Path) -> list[dict]:
  """The records written by `write_csv` (numbers as float, `update` as int)."""
  if not path.exists():
    return []
  with open(path, newline='') as f:
    return [{k: (int(v) if k == 'update' else float(v)) for k, v in row.items()}
            for row in csv.DictReader(f)]


def write_gif(video: np.ndarray, path: pathlib.Path, scale: int, fps: float = 10.0) -> int:
  """Writes uint8 [T, H, W, C] as a looping GIF (atomically); returns its size in bytes."""
  import imageio.v2 as imageio  # pylint: disable=import-outside-toplevel
  frames = np.asarray(video, np.uint8)
  if frames.shape[-1] == 1:
    frames = frames[..., 0]
  frames = np.repeat(np.repeat(frames, scale, axis=1), scale, axis=2)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix='.tmp-', suffix='.gif')
  os.close(fd)
  try:
    imageio.mimsave(tmp, list(frames), format='GIF', duration=1000.0 / fps, loop=0)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  finally:
    pathlib.Path(tmp).unlink(missing_ok=True)
  return path.stat().st_size


def write_csv(records: list[dict], path: pathlib.Path) -> None:
  """Per-update losses, one row per update (atomically)."""
  fields = ['update', 'seconds'] + [k for k in LOSS_KEYS if records and k in records[0]]
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix='.tmp-', suffix='.csv')
  with os.fdopen(fd, 'w', newline='') as f:
    writer = csv.DictWriter(f, fields, extrasaction='ignore')
    writer.writeheader()
    for record in records:
      writer.writerow({k: (f'{v:.3f}' if isinstance(v, float) else v)
                       for k, v in record.items()})
  os.chmod(tmp, 0o644)
  os.replace(tmp, path)


def summary(records: list[dict], window: int = 10) -> str:
  """'image_loss: first N updates mean A, last N mean B' and the update rate."""
  n = min(window, len(records))
  first = np.mean([r['image_loss'] for r in records[:n]])
  last = np.mean([r['image_loss'] for r in records[-n:]])
  rate = (records[-1]['seconds'] - records[0]['seconds']) / max(len(records) - 1, 1)
  return (f'{len(records)} updates in {records[-1]["seconds"] / 60:.1f} min '
          f'({rate:.2f} s/update after the first); image_loss: first {n} updates mean '
          f'{first:.1f}, last {n} mean {last:.1f} (update 1: {records[0]["image_loss"]:.1f}, '
          f'update {len(records)}: {records[-1]["image_loss"]:.1f}).')


def main(argv=None) -> int:
  args = parse_args(argv)
  config = load_config(args.configs, {'task': 'atari_pong', 'seed': args.seed,
                                      'prefill': args.prefill})
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  logdir = pathlib.Path(args.logdir)
  runner = prefill(config, logdir)
  try:
    agent = runner.agent
    print(f'World model: {agent.param_counts()["world_model"]:,} parameters; batch '
          f'{config.dataset.batch} x {config.dataset.length}.', flush=True)
    keys = ('image', 'action', 'reward', 'is_first', 'is_terminal')
    held_out = {k: v for k, v in runner.next_batch('eval').items() if k in keys}
    loss_fn = tf.function(
        lambda data: agent.wm.loss(agent.wm.preprocess(data))[3]['image_loss'])
    eval_loss = lambda: float(loss_fn(held_out))  # pylint: disable=unnecessary-lambda-assignment
    session = Session(agent, logdir, args.save_every_min * 60)
    print(f'Held-out image_loss before this session: {eval_loss():.1f}.', flush=True)
    done = session.train(lambda: runner.next_batch('train'), args.budget_min * 60,
                         args.print_every, stop=lambda: bool(runner.stop))
    records = session.records
    print(f'This session: {done} updates; held-out image_loss after update {len(records)}: '
          f'{eval_loss():.1f}.', flush=True)
    video = agent.wm.video_pred(held_out, context=5, num=args.columns).numpy()
  finally:
    runner.close()
  write_outputs(video, records, pathlib.Path(args.out), args.scale, args.max_kib, args.columns)
  print(summary(records), flush=True)
  return 0


def write_outputs(video, records, out: pathlib.Path, scale: int, max_kib: float,
                  columns: int) -> None:
  """The GIF and the CSV beside it. A GIF over `max_kib` is rewritten smaller (an untrained
  model's noisy rows compress badly): first a smaller scale, then fewer sequences, then fewer
  frames (the observed ones always kept)."""
  out.parent.mkdir(parents=True, exist_ok=True)
  width = video.shape[2] // columns
  frames = video.shape[0]
  size = write_gif(video, out, scale)
  while size > max_kib * 1024 and (scale > 1 or columns > 1 or frames > 10):
    if scale > 1:
      scale -= 1
    elif columns > 1:
      columns -= 1
    else:
      frames = max(10, frames * 3 // 4)
    size = write_gif(video[:frames, :, :columns * width], out, scale)
  write_csv(records, out.with_suffix('.csv'))
  print(f'Open-loop video: {out} ({frames} frames of {video.shape[1] * scale}x'
        f'{columns * width * scale}, {columns} sequences, {size / 1024:.0f} KiB; rows truth | '
        f'model | error, 5 observed frames then imagined); losses: {out.with_suffix(".csv")}.',
        flush=True)


if __name__ == '__main__':
  sys.exit(main())
