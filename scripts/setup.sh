#!/usr/bin/env bash
# Sets up a virtual environment (.venv, or $VENV) with keras-alexnet and all
# its extras, at the versions it is tested with. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch first, by exact version: a bare or open-ended `torch` requirement
# pulls a multi-GB CUDA build on Linux. Elsewhere set TORCH_SPEC, e.g.
# TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu".
# shellcheck disable=SC2086
"${pip[@]}" ${TORCH_SPEC:-torch==2.13.0}
"${pip[@]}" -c scripts/constraints.txt -e ".[all]"
echo "keras-alexnet is installed in $venv"
