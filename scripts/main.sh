#!/usr/bin/env bash
# Set up (a venv in .venv) and run the main job. Usage: bash scripts/main.sh [args for `warpsvc`]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e . >/dev/null
if [ $# -eq 0 ]; then set -- demo; fi
exec .venv/bin/warpsvc "$@"
