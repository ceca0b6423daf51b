#!/usr/bin/env bash
# Set up (a venv in .venv) and run the main job: the gRPC server.
# Usage: bash scripts/main.sh                 -> `warpsvc serve` (127.0.0.1:50051; WARPSVC_* env vars apply)
#        bash scripts/main.sh serve [flags]   -> the server with flags (see `warpsvc serve --help`)
#        bash scripts/main.sh demo            -> the library tour (PNGs + Jacobian heatmaps in out/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# The server and the demo (extras of pyproject.toml: compute + api + health/reflection, scikit-image).
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[server,demo]' >/dev/null
# Install step: fill numba's on-disk cache (seconds once; later starts load it, see docs/warping.md).
.venv/bin/python -m warpsvc.core.warmup -q
if [ $# -eq 0 ]; then set -- serve; fi
exec .venv/bin/warpsvc "$@"
