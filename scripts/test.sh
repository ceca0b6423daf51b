#!/usr/bin/env bash
# Set up (a venv in .venv, with the test extras) and run the whole test suite.
# Extra arguments go to pytest. Exit code 5 ("no tests collected") counts as failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' >/dev/null
exec .venv/bin/python -m pytest "$@"
