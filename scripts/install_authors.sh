#!/usr/bin/env bash
# Puts the authors' DreamerV2 release (PyPI dreamerv2 2.2.0, MIT) into a virtual environment of
# its own, for side-by-side checks only (bench --peer, the learning check's --authors, fixtures).
# Prints the venv's folder on stdout, so:  VENV=$(scripts/install_authors.sh [DIR])
# Default DIR: /tmp/dreamerv2-authors-venv.
#
# The pins are what the 2.2.0 release needs on Python 3.11: Keras 2 (TensorFlow 2.15), numpy < 2
# for that TensorFlow, ruamel.yaml < 0.18 (the release calls `safe_load`), the old `gym` and
# cloudpickle that it imports at load time. `--minigrid` also installs what the learning check's
# task needs there (minigrid 3.2.0 on gymnasium 1.4.0).
set -euo pipefail
minigrid=0
if [ "${1:-}" = "--minigrid" ]; then minigrid=1; shift; fi
target=${1:-/tmp/dreamerv2-authors-venv}
python3 -m venv "$target" >&2
"$target/bin/pip" install -q "tensorflow-cpu==2.15.1" "tensorflow-probability==0.23.0" "numpy<2" \
  "ruamel.yaml<0.18" "gym==0.26.2" cloudpickle >&2
"$target/bin/pip" install -q --no-deps "dreamerv2==2.2.0" >&2
if [ "$minigrid" = 1 ]; then
  "$target/bin/pip" install -q "minigrid==3.2.0" "gymnasium==1.4.0" >&2
fi
echo "$target"
