#!/usr/bin/env bash
# Build a local Debian base image with debootstrap + `docker import`, for hosts that cannot pull
# from a public image registry. Use it as the Dockerfile's base:
#
#   bash scripts/build_base_image.sh                      # prints the tag, e.g. warpsvc-base:bookworm
#   docker build --network host --build-arg BASE_IMAGE=warpsvc-base:bookworm -t warpsvc:latest .
#
# The image holds Debian's python3 (3.11 on bookworm) and ca-certificates, the suite's -updates
# and -security sources, and nothing else; the Dockerfile adds python3-venv in its build stage.
#
# TLS: on networks where HTTPS goes through an intercepting proxy, pip inside `docker build`
# must trust the proxy's CA. The script adds the host's CA bundle (the one pip is configured
# with: `pip config` cert / $PIP_CERT, else $SSL_CERT_FILE / $REQUESTS_CA_BUNDLE) to the image's
# system trust store (/usr/local/share/ca-certificates + update-ca-certificates); the
# Dockerfile's pip uses that store. Nothing about this machine is hard-coded.
#
# Environment (all optional):
#   SUITE=bookworm   Debian suite           MIRROR=...  Debian mirror (default: the host's apt
#   HOST_CA=FILE     CA bundle to add                   source for SUITE, else deb.debian.org)
#   HOST_CA=none     add no CA              FORCE=1     rebuild even if the tag exists
#   TAG=NAME:TAG     image tag (or first argument; default warpsvc-base:$SUITE)
# Needs root, debootstrap and a running dockerd. Takes 2-5 minutes; cached by tag afterwards.
set -euo pipefail

SUITE=${SUITE:-bookworm}
TAG=${1:-${TAG:-warpsvc-base:$SUITE}}
DOCKER=${DOCKER:-docker}

if [ -z "${FORCE:-}" ] && $DOCKER image inspect "$TAG" >/dev/null 2>&1; then
  echo "$TAG"  # already built
  exit 0
fi

command -v debootstrap >/dev/null || { echo "build_base_image: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "build_base_image: debootstrap needs root" >&2; exit 1; }

if [ -z "${MIRROR:-}" ]; then
  # The host's own apt source for this suite, when it has one (apt-get indextargets lists them).
  # shellcheck disable=SC2016  # $(SITE) is apt's format syntax, not the shell's
  MIRROR=$(apt-get indextargets --format '$(SITE)|$(RELEASE)' 2>/dev/null \
             | awk -F'|' -v s="$SUITE" '$2 == s { print $1; exit }' || true)
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi
MIRROR=${MIRROR%/}
case "$MIRROR" in
  */debian) SECURITY_MIRROR="${MIRROR}-security" ;;
  *) SECURITY_MIRROR="http://deb.debian.org/debian-security" ;;
esac

if [ -z "${HOST_CA:-}" ]; then
  # pip's configured bundle first (`pip config list` prints e.g. global.cert='/path'), then the
  # usual environment variables.
  for candidate in "${PIP_CERT:-}" \
      "$( (python3 -m pip config list 2>/dev/null || true) | sed -n "s/^[^=]*\.cert='\(.*\)'$/\1/p" | head -n1)" \
      "${SSL_CERT_FILE:-}" "${REQUESTS_CA_BUNDLE:-}"; do
    if [ -n "$candidate" ] && [ -f "$candidate" ]; then HOST_CA=$candidate; break; fi
  done
fi
[ "${HOST_CA:-none}" = none ] && HOST_CA=

work=$(mktemp -d /var/tmp/warpsvc-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/root"

echo "build_base_image: debootstrap $SUITE from $MIRROR into $root" >&2
debootstrap --variant=minbase --include=python3,ca-certificates "$SUITE" "$root" "$MIRROR" >&2

cat > "$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
# Keep images small: no recommends, no docs, no apt lists left behind.
cat > "$root/etc/apt/apt.conf.d/90warpsvc-base" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF

if [ -n "${HOST_CA:-}" ]; then
  echo "build_base_image: adding the host CA bundle $HOST_CA to the image trust store" >&2
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp "$HOST_CA" "$root/usr/local/share/ca-certificates/host-ca-bundle.crt"
fi

# Latest security/point updates and the trust store, inside the new root.
cp /etc/resolv.conf "$root/etc/resolv.conf"
chroot "$root" /bin/sh -c '
  set -e
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get -y -q upgrade
  update-ca-certificates >/dev/null
  apt-get clean
  rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
' >&2
: > "$root/etc/resolv.conf"  # docker supplies its own at run time

tar -C "$root" --numeric-owner -c . | $DOCKER import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  --message "debootstrap $SUITE minbase + python3 (scripts/build_base_image.sh)" \
  - "$TAG" >&2
echo "$TAG"
