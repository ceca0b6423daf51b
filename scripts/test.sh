#!/usr/bin/env bash
# Set up (a venv in .venv, with the test extras; node_modules via `npm ci` when node is available)
# and run the whole test suite. Extra arguments go to pytest. Exit code 5 ("no tests collected")
# counts as failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' >/dev/null
# buf lint and the Node interop test need node_modules (package-lock.json pins them).
if [ -f package.json ] && command -v npm >/dev/null 2>&1; then
  if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error >/dev/null
  fi
fi
# The install step the README and the Dockerfile run: fill numba's cache, so servers started by
# the tests load their kernels in their background warm-up instead of compiling them for ~10 s
# of CPU each (which made shutdown and timing tests on 2 cores depend on the compile's progress).
.venv/bin/python -m warpsvc.core.warmup -q
exec .venv/bin/python -m pytest "$@"
