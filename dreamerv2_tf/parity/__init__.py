"""Parity with the published DreamerV2 results (docs/reference.md §7): aggregates and curve comparisons.

Command line: `python -m dreamerv2_tf.parity {aggregate,compare} ...` (see `__main__.py`).
Library: `scores` (published files, aggregates, bands) and `compare` (runs against bands).
Imports neither TensorFlow nor matplotlib (matplotlib loads only when a PNG is drawn).
"""

from __future__ import annotations

from dreamerv2_tf.parity.scores import (
    Aggregates, Band, OutOfRangeError, ParityError, SeedCurve, aggregate, agent_scores,
    band_at, final_scores, load_baselines, load_curves, normalized, resolve)
from dreamerv2_tf.parity.compare import Report, Row, Run, compare_run, read_run

__all__ = [
    'Aggregates', 'Band', 'OutOfRangeError', 'ParityError', 'SeedCurve', 'aggregate',
    'agent_scores', 'band_at', 'final_scores', 'load_baselines', 'load_curves', 'normalized',
    'resolve', 'Report', 'Row', 'Run', 'compare_run', 'read_run']
