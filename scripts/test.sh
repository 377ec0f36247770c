#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh), builds the docs site strictly
# (scripts/docs.sh: a broken link or docstring reference fails) and runs the
# test suite once per Keras backend, printing each backend's time. Extra
# arguments go to pytest, e.g. `bash scripts/test.sh -k lrn`; BACKENDS="jax"
# limits the backends.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
venv=${VENV:-.venv}
status=0
echo "=== docs: mkdocs build --strict"
bash scripts/docs.sh || status=1
times=()
for backend in ${BACKENDS:-tensorflow jax torch}; do
  echo "=== tests on KERAS_BACKEND=$backend"
  started=$SECONDS
  # The slowest tests are listed, to keep an eye on the suite's time.
  KERAS_BACKEND=$backend "$venv/bin/python" -m pytest tests --durations=15 "$@" || status=1
  elapsed=$((SECONDS - started))
  times+=("$backend $((elapsed / 60))m$(printf %02d $((elapsed % 60)))s")
done
echo "=== time per backend: ${times[*]}"
exit $status
