#!/usr/bin/env bash
# Make a Docker engine ready for the docker-compose end-to-end test (CI and developers alike):
#
#   1. docker.io, docker-compose (1.29 on Debian) and debootstrap from apt when missing;
#   2. dockerd started when nothing answers (log: $DOCKERD_LOG, pid: $DOCKERD_PIDFILE);
#   3. a base image for the Dockerfile: $BASE_IMAGE if set (pulled if absent); else
#      python:3.11-slim if already present; else the local Debian base of
#      scripts/build_base_image.sh (built once, cached by tag).
#
# Prints `BASE_IMAGE=<image>` as its last line on stdout and exits 0 when Docker is usable;
# exits non-zero with the reason on stderr when it is not (no root, no apt, dockerd refuses to
# start: e.g. inside an unprivileged container). Idempotent: a second run costs seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/warpsvc-dockerd.log}
DOCKERD_PIDFILE=${DOCKERD_PIDFILE:-/var/run/warpsvc-dockerd.pid}
say() { echo "ci_docker: $*" >&2; }
die() { say "$*"; exit 1; }

# -- 1. packages ----------------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "need root to install ${missing[*]}"
  command -v apt-get >/dev/null 2>&1 || die "no apt-get to install ${missing[*]}"
  say "installing ${missing[*]} with apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2 || die "apt-get update failed"
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
fi
command -v docker >/dev/null 2>&1 || die "no docker client after install"

# -- 2. the engine --------------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || die "dockerd is not running and starting it needs root"
  say "starting dockerd (log $DOCKERD_LOG)"
  nohup dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
  echo $! >"$DOCKERD_PIDFILE"
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$(cat "$DOCKERD_PIDFILE")" 2>/dev/null || { tail -n 20 "$DOCKERD_LOG" >&2; die "dockerd exited at start"; }
    sleep 1
  done
  docker info >/dev/null 2>&1 || { tail -n 20 "$DOCKERD_LOG" >&2; die "dockerd did not answer within 60 s"; }
fi
say "engine: $(docker version --format '{{.Server.Version}}' 2>/dev/null), $(docker-compose version --short 2>/dev/null || echo 'docker-compose ?')"

# -- 3. base image --------------------------------------------------------------------------------
# No registry is contacted unless BASE_IMAGE names an image that is not here yet (then it is
# pulled): without BASE_IMAGE, the official image is used only if already present, else the local
# debootstrap base is built (once; cached by tag).
base=${BASE_IMAGE:-}
if [ -n "$base" ]; then
  docker image inspect "$base" >/dev/null 2>&1 || docker pull -q "$base" >&2 || die "cannot pull BASE_IMAGE=$base"
elif docker image inspect python:3.11-slim >/dev/null 2>&1; then
  base=python:3.11-slim
else
  say "python:3.11-slim is not present: using the local Debian base (scripts/build_base_image.sh)"
  base=$(bash scripts/build_base_image.sh | tail -n 1) || die "building the local base image failed"
fi
docker run --rm "$base" python3 -c 'print("ok")' >/dev/null 2>&1 \
  || die "a container of $base does not run (docker run failed)"
say "base image: $base"
echo "BASE_IMAGE=$base"
