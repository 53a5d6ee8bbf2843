# Image for one store node:  docker build -t kvstore .  &&  docker run -p 8000:8000 kvstore
#
# BASE_IMAGE: any Debian-like image with python3 >= 3.11 and the venv module.
# Where no registry is reachable, `bash docker/base-image.sh` makes a local one
# and prints its tag; `bash docker/wheels.sh` fills docker/wheels/ so the
# build needs no network (see those scripts).
ARG BASE_IMAGE=python:3.11-slim

# ---- build stage: venv with the package and its dependencies ---------------
FROM ${BASE_IMAGE} AS build
# Lets `docker image prune --filter label=org.kvstore.stage` find what every rebuild leaves
# behind untagged: the build stage, and the previous image once the tag moves on.
LABEL org.kvstore.stage=build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# `python3 -m venv` works on python:*-slim and on Debian's python3 + python3-venv.
RUN python3 -m venv /opt/venv
COPY . /src
# Offline when docker/wheels/ holds wheels (made by docker/wheels.sh), else
# PyPI. A shell test is used rather than PIP_NO_INDEX/PIP_FIND_LINKS build args
# so the default build is the ordinary online one with nothing to pass.
# --use-pep517: always build a wheel in an isolated build environment (whose
# setuptools/wheel come from the same place), whatever pip version the base
# has; Debian's pip 23.0 would otherwise fall back to `setup.py install`.
RUN set -eu; \
    if ls /src/docker/wheels/*.whl >/dev/null 2>&1; then \
        echo "installing offline from docker/wheels"; \
        export PIP_NO_INDEX=1 PIP_FIND_LINKS=/src/docker/wheels; \
    fi; \
    /opt/venv/bin/pip install --use-pep517 /src

# ---- runtime stage: base + venv only (no sources, wheels or build files) ----
FROM ${BASE_IMAGE}
LABEL org.kvstore.stage=runtime
RUN groupadd --system kv \
 && useradd --system --gid kv --home-dir /data --no-create-home --shell /usr/sbin/nologin kv \
 && mkdir -p /data \
 && chown kv:kv /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DATA_DIR=/data \
    HOST=0.0.0.0 \
    PORT=8000
# Declared after the chown so a new volume starts out owned by kv.
VOLUME /data
USER kv
EXPOSE 8000
# No curl in the image: bash's /dev/tcp probes /health without starting an interpreter.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD bash -c 'exec 3<>/dev/tcp/127.0.0.1/${PORT} && printf "GET /health HTTP/1.0\r\n\r\n" >&3 && grep -Eq "\"status\": ?\"ok\"" <&3'
ENTRYPOINT ["python", "-m", "node"]
