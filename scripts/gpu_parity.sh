#!/usr/bin/env bash
# A parity run for a lent GPU (issue 17): install, train an early-learning Atari game for a
# wall-clock budget with `precision: 16`, then compare the run with the published curves.
#
#   scripts/gpu_parity.sh [--game boxing|freeway] [--budget-min MINUTES] [--logdir DIR]
#                         [--frames N] [--seed S] [--venv PATH] [--no-install]
#                         [--wheelhouse DIR] [--allow-cpu] [--dry-run]
#
# Steps:
#  1. Install (unless --no-install): a venv at --venv (default .venv-gpu in the repository) with
#     requirements.txt and TensorFlow's CUDA wheels (`tensorflow[and-cuda]`, same version);
#     --wheelhouse DIR installs offline from downloaded wheels (`pip download -r
#     requirements.txt 'tensorflow[and-cuda]==<version>' -d DIR` on a machine with network).
#  2. Checks that TensorFlow sees a GPU (else stops, unless --allow-cpu or --dry-run).
#  3. Trains `train.py --configs atari --task atari_<game> --precision=16` in --logdir
#     (default logdir/gpu_parity_<game>_seed<S>) for --budget-min minutes of wall clock (default
#     60), then sends SIGINT: the run saves a checkpoint and exits. The same command again, with
#     the same --logdir, resumes from that checkpoint (a later slot continues the run). It stops
#     earlier at --frames frames (default 2,000,000 = 500,000 agent steps at action repeat 4).
#     Evaluation runs every 100,000 frames (--eval_every=25000 agent steps, 1 episode), so each
#     1M-frame bin of the published curves holds 10 evaluation episodes; evaluation does not
#     change training.
#  4. Writes <logdir>/parity/: summary.json (device, precision, agent steps and updates of the
#     latest checkpoint, mean updates/s and frames/s of the training phase and seconds per
#     update over the log intervals, wall-clock minutes of this slot), and `python -m dreamerv2_tf.parity compare` of the run
#     against the published seeds: report.json (its --json output), report.txt, and the
#     atari_<game>.png/.csv plot and table.
#
# Published DreamerV2 medians (atari-dreamerv2.json): Boxing 38 at 1M frames; Freeway 11 at 1M,
# 31 at 2M. On a V100 the authors' release makes about 1M frames in 1-2 hours.
#
# --dry-run: the same steps on a CPU with `--configs atari debug` (tiny networks, 4,800
# frames) and a 10-minute ceiling, installing nothing with --no-install; the published curves'
# frame axis is scaled down 250x (1M frames -> 4,000) into <logdir>/parity/dry_run_scores.json
# so the debug run has complete bins to compare. It checks the machinery only; its numbers
# mean nothing. CI runs it (tests/test_gpu_parity.py).
#
# Exit status: 0 done (report written); 1 training or the comparison failed (message above);
# 2 bad arguments or no GPU.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GAME=boxing
BUDGET_MIN=""
LOGDIR=""
FRAMES=""
SEED=0
VENV="$REPO/.venv-gpu"
INSTALL=1
WHEELHOUSE=""
ALLOW_CPU=0
DRY_RUN=0

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
fail() { echo "gpu_parity.sh: error: $1" >&2; exit "${2:-2}"; }
need_value() { [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || fail "$1 needs a value (see --help)."; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --game) need_value "$@"; GAME="$2"; shift 2 ;;
    --budget-min) need_value "$@"; BUDGET_MIN="$2"; shift 2 ;;
    --logdir) need_value "$@"; LOGDIR="$2"; shift 2 ;;
    --frames) need_value "$@"; FRAMES="$2"; shift 2 ;;
    --seed) need_value "$@"; SEED="$2"; shift 2 ;;
    --venv) need_value "$@"; VENV="$2"; shift 2 ;;
    --wheelhouse) need_value "$@"; WHEELHOUSE="$2"; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --allow-cpu) ALLOW_CPU=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) fail "unknown argument '$1'; allowed: --game, --budget-min, --logdir, --frames, --seed, --venv, --no-install, --wheelhouse, --allow-cpu, --dry-run, --help." ;;
  esac
done

case "$GAME" in
  boxing|freeway) ;;
  *) fail "--game must be boxing or freeway (early learners in the published curves), got '$GAME'." ;;
esac
if [[ $DRY_RUN == 1 ]]; then
  BUDGET_MIN="${BUDGET_MIN:-10}"
  FRAMES="${FRAMES:-4800}"
else
  BUDGET_MIN="${BUDGET_MIN:-60}"
  FRAMES="${FRAMES:-2000000}"
fi
[[ "$BUDGET_MIN" =~ ^[0-9]+([.][0-9]+)?$ ]] && awk "BEGIN{exit !($BUDGET_MIN > 0)}" \
  || fail "--budget-min must be a positive number of minutes, got '$BUDGET_MIN'."
[[ "$FRAMES" =~ ^[0-9]+$ && "$FRAMES" -ge 4 ]] \
  || fail "--frames must be a whole number of frames >= 4, got '$FRAMES'."
[[ "$SEED" =~ ^[0-9]+$ ]] || fail "--seed must be a non-negative integer, got '$SEED'."
TASK="atari_$GAME"
LOGDIR="${LOGDIR:-$REPO/logdir/gpu_parity_${GAME}_seed${SEED}}"
PY="$VENV/bin/python"
cd "$REPO"

# ---- 1. install
if [[ $INSTALL == 1 ]]; then
  TF_VERSION="$(sed -n 's/^tensorflow==\([0-9.]*\).*/\1/p' requirements.txt)"
  [[ -n "$TF_VERSION" ]] || fail "requirements.txt pins no tensorflow==VERSION." 1
  PIP_ARGS=()
  [[ -n "$WHEELHOUSE" ]] && PIP_ARGS=(--no-index --find-links "$WHEELHOUSE")
  echo "== Installing into $VENV (tensorflow $TF_VERSION)"
  [[ -x "$PY" ]] || python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
  "$PY" -m pip install -q "${PIP_ARGS[@]}" -r requirements.txt
  if [[ $DRY_RUN == 0 ]]; then
    "$PY" -m pip install -q "${PIP_ARGS[@]}" "tensorflow[and-cuda]==$TF_VERSION"
  fi
fi
[[ -x "$PY" ]] || fail "no Python at $PY: give --venv PATH of an installed venv, or drop --no-install."

# ---- 2. device
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
GPUS="$("$PY" -c 'import tensorflow as tf; print(len(tf.config.list_physical_devices("GPU")))' \
  2>/dev/null)" || fail "TensorFlow does not import from $PY (was the install interrupted?)." 1
echo "== TensorFlow sees $GPUS GPU(s)"
if [[ "$GPUS" == 0 && $DRY_RUN == 0 && $ALLOW_CPU == 0 ]]; then
  fail "no GPU visible to TensorFlow (nvidia-smi? CUDA wheels?); --allow-cpu runs anyway (float32, very slow)."
fi

# ---- 3. train for the budget
mkdir -p "$LOGDIR/parity"
STEPS=$(( FRAMES / 4 ))
if [[ $DRY_RUN == 1 ]]; then
  CONFIGS=(--configs atari debug)
  EXTRA=()
else
  CONFIGS=(--configs atari)
  EXTRA=(--eval_every=25000 --eval_eps=1)
fi
BUDGET_S="$(awk "BEGIN{printf \"%d\", $BUDGET_MIN * 60}")"
(( BUDGET_S >= 1 )) || BUDGET_S=1
echo "== Training $TASK in $LOGDIR for at most $BUDGET_MIN min (stops at $FRAMES frames)"
START=$(date +%s)
set +e
# SIGINT at the budget: train.py saves a checkpoint and exits; SIGKILL 10 minutes later if not.
timeout --signal=INT --kill-after=600 "$BUDGET_S" \
  "$PY" train.py "${CONFIGS[@]}" --task "$TASK" --logdir "$LOGDIR" --precision=16 \
  --seed="$SEED" --steps="$STEPS" "${EXTRA[@]}"
STATUS=$?
set -e
WALL_S=$(( $(date +%s) - START ))
case $STATUS in
  0) echo "== Training reached $FRAMES frames ($WALL_S s)" ;;
  124) echo "== Budget of $BUDGET_MIN min reached: checkpoint saved; the same command resumes" ;;
  *) fail "train.py exited with status $STATUS after $WALL_S s (see its output above)." 1 ;;
esac

# ---- 4. summary and parity report
"$PY" - "$LOGDIR" "$WALL_S" "$DRY_RUN" <<'EOF'
"""Writes <logdir>/parity/summary.json; in a dry run also the scaled score file."""
import json, pathlib, sys
import numpy as np
import tensorflow as tf
from dreamerv2_tf.checkpoint import read_variables
from dreamerv2_tf.config import read_blocks
from dreamerv2_tf.evaluate import write_json
from dreamerv2_tf.parity import scores
logdir, wall_s, dry_run = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == '1'
records = [json.loads(l) for l in (logdir / 'metrics.jsonl').read_text().splitlines()
           if l.strip().endswith('}')]
intervals = [r for r in records if 'updates_per_sec' in r]
mean = lambda key: float(np.mean([r[key] for r in intervals])) if intervals else None
latest = tf.train.latest_checkpoint(str(logdir / 'checkpoints'))
values = read_variables(latest) if latest else {}
gpus = tf.config.list_physical_devices('GPU')
names = [tf.config.experimental.get_device_details(g).get('device_name', g.name) for g in gpus]
summary = {
    'device': ', '.join(names) or 'CPU', 'config_precision': 16,
    'precision': 'mixed_float16' if gpus else 'float32 (no GPU)', 'checkpoint': latest,
    'agent_steps': int(values.get('step/.ATTRIBUTES/VARIABLE_VALUE', 0)),
    'updates': int(values.get('agent/ac/updates/.ATTRIBUTES/VARIABLE_VALUE', 0)),
    'frames_logged': max((r['step'] for r in records), default=0),
    'updates_per_sec': mean('updates_per_sec'),  # training phase: acting + updates
    'update_seconds': mean('update_seconds'),    # one update alone
    'fps': mean('fps'), 'log_intervals': len(intervals),
    'slot_wall_minutes': round(wall_s / 60, 2), 'dry_run': dry_run,
}
write_json(logdir / 'parity' / 'summary.json', summary)
print('== Summary:', json.dumps(summary))
if dry_run:  # the published frame axis scaled 250x down, so a 4,800-frame run has a bin
  task = read_blocks(logdir / 'config.yaml')['task']
  data = scores.read_json(scores.resolve('atari-dreamerv2.json', 'atari-dreamerv2.json'))
  scaled = [dict(r, xs=[x / 250 for x in r['xs']]) for r in data if r['task'] == task]
  write_json(logdir / 'parity' / 'dry_run_scores.json', scaled)
EOF
SCORES=()
[[ $DRY_RUN == 1 ]] && SCORES=(--scores "$LOGDIR/parity/dry_run_scores.json")
echo "== Parity: python -m dreamerv2_tf.parity compare $LOGDIR ${SCORES[*]}"
set +e
"$PY" -m dreamerv2_tf.parity compare "$LOGDIR" "${SCORES[@]}" --out "$LOGDIR/parity" \
  > "$LOGDIR/parity/report.txt"
TEXT_STATUS=$?
"$PY" -m dreamerv2_tf.parity compare "$LOGDIR" "${SCORES[@]}" --json \
  > "$LOGDIR/parity/report.json.tmp" && mv "$LOGDIR/parity/report.json.tmp" "$LOGDIR/parity/report.json"
JSON_STATUS=$?
set -e
cat "$LOGDIR/parity/report.txt"
if [[ $TEXT_STATUS != 0 || $JSON_STATUS != 0 ]]; then
  rm -f "$LOGDIR/parity/report.json.tmp"
  fail "the comparison failed (above); a run needs at least one complete 1M-frame bin: continue it with the same command." 1
fi
echo "== Report: $LOGDIR/parity/ (report.json, report.txt, $TASK.png, $TASK.csv, summary.json)"
