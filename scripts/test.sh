#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the test suite once per Keras
# backend. Extra arguments go to pytest, e.g. `bash scripts/test.sh -k lrn`;
# BACKENDS="jax" limits the backends.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
venv=${VENV:-.venv}
status=0
for backend in ${BACKENDS:-tensorflow jax torch}; do
  echo "=== tests on KERAS_BACKEND=$backend"
  # The slowest tests are listed, to keep an eye on the suite's time.
  KERAS_BACKEND=$backend "$venv/bin/python" -m pytest tests --durations=15 "$@" || status=1
done
exit $status
