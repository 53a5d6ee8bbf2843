#!/usr/bin/env bash
# Download, on the host, every wheel the Docker build needs, into
# docker/wheels/ (part of the build context), so that the image can be built
# without network access from inside the build.
#
# Why: on machines whose HTTPS goes through an intercepting proxy, the host
# trusts the proxy's CA (see PIP_CERT / /etc/pip.conf) but a fresh container
# does not, so `pip install` inside `docker build` fails with
# CERTIFICATE_VERIFY_FAILED. The Dockerfile installs from docker/wheels/ with
# --no-index when that directory holds wheels, and from PyPI otherwise, so a
# plain `docker build .` elsewhere needs no extra step.
#
# What is fetched:
#   - the runtime dependencies (setup.cfg [options] install_requires and/or
#     pyproject.toml [project] dependencies; tornado>=6.3 if neither is found);
#   - the build backend (pyproject.toml [build-system] requires, or
#     setuptools + wheel), because pip builds the project from source inside
#     the image, in an isolated build environment filled from the same
#     directory. The project itself is NOT prebuilt here: a prebuilt project
#     wheel could go stale and silently shadow the source being built.
#
# Wheels are for the image's interpreter, not the host's: CPython 3.11
# (python:3.11-slim and Debian bookworm's python3 both are) on manylinux.
#
# Idempotent: a stamp file records the requirement set; if it is unchanged
# and wheels are present, nothing is downloaded (works offline). FORCE=1
# refreshes (e.g. to pick up a new tornado release).
# Environment: PY_VERSION (default 3.11), FORCE.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."   # repository root = build context
WHEELS=docker/wheels
STAMP="$WHEELS/.requirements"
PY_VERSION="${PY_VERSION:-3.11}"
PY_NODOT="${PY_VERSION//./}"

log() { echo "wheels: $*" >&2; }

case "$(uname -m)" in
    x86_64|amd64)  ARCH=x86_64 ;;
    aarch64|arm64) ARCH=aarch64 ;;
    *) log "unsupported architecture $(uname -m)"; exit 1 ;;
esac

PYTHON=$(command -v python3 || command -v python) || { log "python3 not found on the host"; exit 1; }

# Collect requirements from the project metadata (one per line, sorted).
REQS=$("$PYTHON" - <<'PY'
import configparser, os, sys
runtime, build = [], []
if os.path.exists("pyproject.toml"):
    try:
        import tomllib
    except ImportError:          # Python < 3.11 on the host
        tomllib = None
    if tomllib:
        with open("pyproject.toml", "rb") as f:
            data = tomllib.load(f)
        build += data.get("build-system", {}).get("requires", [])
        runtime += data.get("project", {}).get("dependencies", [])
if os.path.exists("setup.cfg"):
    cfg = configparser.ConfigParser()
    cfg.read("setup.cfg")
    raw = cfg.get("options", "install_requires", fallback="")
    runtime += [l.split("#")[0].strip() for l in raw.splitlines()]
if not [r for r in runtime if r]:
    runtime = ["tornado>=6.3"]
if not build:
    build = ["setuptools>=40.8.0", "wheel"]   # pip's default for non-PEP 517 projects
# wheel is needed by older setuptools to build wheels; harmless otherwise.
build.append("wheel")
print("\n".join(sorted({r for r in runtime + build if r})))
PY
)
[ -n "$REQS" ] || { log "no requirements found"; exit 1; }

mkdir -p "$WHEELS"
# Keep the downloaded wheels out of git without touching the repo's .gitignore.
[ -f "$WHEELS/.gitignore" ] || printf '*\n' > "$WHEELS/.gitignore"

WANT=$(printf '%s\npy=%s arch=%s\n' "$REQS" "$PY_VERSION" "$ARCH")
if [ -z "${FORCE:-}" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
   && compgen -G "$WHEELS/*.whl" >/dev/null; then
    log "up to date ($(ls "$WHEELS"/*.whl | wc -l) wheels in $WHEELS)"
    exit 0
fi

log "downloading for CPython $PY_VERSION/$ARCH: $(echo "$REQS" | tr '\n' ' ')"
rm -f "$WHEELS"/*.whl "$STAMP"
mapfile -t REQ_ARRAY <<<"$REQS"
# --platform needs --only-binary=:all:; pure-python (py3-none-any) wheels are
# accepted too. Several platform tags so wheels tagged only manylinux_2_28 or
# only manylinux2014 both match (both base images have glibc 2.36).
# PIP_FIND_LINKS is cleared so the host's local wheel cache is not consulted.
PIP_FIND_LINKS= "$PYTHON" -m pip download --disable-pip-version-check -q \
    --only-binary=:all: \
    --platform "manylinux_2_28_$ARCH" --platform "manylinux2014_$ARCH" \
    --python-version "$PY_VERSION" --implementation cp --abi "cp$PY_NODOT" \
    -d "$WHEELS" "${REQ_ARRAY[@]}" >&2
echo "$WANT" > "$STAMP"
log "$(ls "$WHEELS"/*.whl | wc -l) wheels in $WHEELS"
