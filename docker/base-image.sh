#!/usr/bin/env bash
# Make sure a base image for the Dockerfile exists, and print ONLY its tag on
# stdout (all progress goes to stderr), so callers can do:
#
#     BASE_IMAGE=$(bash docker/base-image.sh)
#     docker-compose build --build-arg BASE_IMAGE="$BASE_IMAGE"   # or export it
#
# Order of preference:
#   1. $BASE_IMAGE (default python:3.11-slim) if it is already in the engine;
#   2. the local fallback kvstore-base:bookworm if an earlier run built it
#      (checked before pulling, so repeat runs never wait on a registry);
#   3. `docker pull $BASE_IMAGE`, bounded by a timeout because on a machine
#      without registry access the pull either fails at once or hangs;
#   4. build kvstore-base:bookworm: a minimal Debian bookworm made with
#      debootstrap from the host's Debian mirror and `docker import`ed.
#      It has Debian's python3 (3.11 on bookworm) + python3-venv, which is
#      all the Dockerfile needs.
# To go back to $BASE_IMAGE once a registry is reachable, pull it by hand or
# remove kvstore-base:bookworm.
#
# Idempotent and quick (well under 2 s) once an image exists.
# Environment:
#   BASE_IMAGE      preferred image (default python:3.11-slim)
#   LOCAL_BASE      tag of the fallback image (default kvstore-base:bookworm)
#   DEBIAN_MIRROR   mirror for debootstrap (default: first deb.debian.org-style
#                   URI found in /etc/apt/sources*, else http://deb.debian.org/debian)
#   PULL_TIMEOUT    seconds allowed for `docker pull` (default 20)
set -euo pipefail

BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim}"
LOCAL_BASE="${LOCAL_BASE:-kvstore-base:bookworm}"
PULL_TIMEOUT="${PULL_TIMEOUT:-20}"
SUITE=bookworm

log() { echo "base-image: $*" >&2; }
die() { log "error: $*"; exit 1; }

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

command -v docker >/dev/null 2>&1 || die "docker not found"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon (run as root or as a member of the docker group)"

# 1. Already present: the common, fast path.
if have_image "$BASE_IMAGE"; then
    echo "$BASE_IMAGE"
    exit 0
fi

# 2. Fallback image from an earlier run.
if have_image "$LOCAL_BASE"; then
    echo "$LOCAL_BASE"
    exit 0
fi

# 3. Try the registry, but do not wait long for it.
log "$BASE_IMAGE not present locally; trying docker pull (timeout ${PULL_TIMEOUT}s)"
if timeout "$PULL_TIMEOUT" docker pull -q "$BASE_IMAGE" >&2 && have_image "$BASE_IMAGE"; then
    echo "$BASE_IMAGE"
    exit 0
fi
log "pull failed; building local base image $LOCAL_BASE"

# 4. Build the fallback with debootstrap.

# debootstrap, chroot and `docker import` of a root filesystem need root.
[ "$(id -u)" -eq 0 ] || die "building $LOCAL_BASE needs root (debootstrap); re-run as root, e.g. sudo bash $0"

# Pick the Debian mirror the host already uses: it is known to be reachable.
# Plain http is fine: debootstrap verifies the Release file with the archive
# keyring, and it avoids an intercepting HTTPS proxy whose CA debootstrap
# would not trust.
find_mirror() {
    local uri
    uri=$( { grep -hE '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}';
             grep -hE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
                 | sed -E 's/\[[^]]*\]//' | awk '{print $2}'; } \
           | grep -E '/debian/?$' | head -n1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR="${DEBIAN_MIRROR:-$(find_mirror)}"

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2
fi

ROOTFS=$(mktemp -d /var/tmp/kvstore-rootfs.XXXXXX)
# Remove the half-built tree whatever happens (it holds /dev nodes etc.).
trap 'rm -rf --one-file-system "$ROOTFS"' EXIT

log "debootstrap $SUITE from $MIRROR into $ROOTFS (about a minute)"
# minbase + only what the image needs: python3 (3.11 on bookworm), venv/ensurepip
# for `python3 -m venv`, and CA certificates for an image that does reach PyPI.
debootstrap --variant=minbase \
    --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR" >&2

# Point apt in the image at the same mirror (debootstrap writes only the main
# suite) so `apt-get install` in derived images also works.
cat > "$ROOTFS/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
SOURCES

# Keep the image small: drop downloaded .debs, apt lists, docs and man pages,
# and Python bytecode caches (Python rebuilds them as needed).
chroot "$ROOTFS" apt-get clean >&2 || true
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
       "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/log/* \
       "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
       "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/*
find "$ROOTFS/usr/lib/python3" "$ROOTFS/usr/lib/python3.11" -name __pycache__ -type d \
     -prune -exec rm -rf {} + 2>/dev/null || true
# debootstrap leaves the host's hostname/resolv.conf in place; Docker manages these.
: > "$ROOTFS/etc/resolv.conf"
rm -f "$ROOTFS/etc/hostname"

# `docker import` starts with an empty config: set what python:3.11-slim sets
# that matters here. Debian has `python3` but no `python`; the Dockerfile uses
# the venv's python, so nothing more is needed.
log "importing as $LOCAL_BASE"
tar --numeric-owner -C "$ROOTFS" -c . \
  | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --message "debootstrap --variant=minbase $SUITE + python3, python3-venv" \
        - "$LOCAL_BASE" >&2

echo "$LOCAL_BASE"
