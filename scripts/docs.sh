#!/usr/bin/env bash
# Builds the documentation site into site/ with `mkdocs build --strict`: a broken
# link, anchor or docstring reference fails it. `bash scripts/docs.sh serve`
# serves it at http://127.0.0.1:8000 instead, rebuilding on every change.
# Uses .venv (scripts/setup.sh installs mkdocs with the dev extra).
set -euo pipefail
export NO_MKDOCS_2_WARNING=1  # a banner about MkDocs 2, not about this site
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
[ -x "$venv/bin/mkdocs" ] || bash scripts/setup.sh
if [ "${1:-build}" = serve ]; then
  exec "$venv/bin/mkdocs" serve
fi
"$venv/bin/mkdocs" build --strict --site-dir site "$@"
