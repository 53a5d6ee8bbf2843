"""Fixtures for end-to-end tests against a real Docker Compose cluster (pytest-docker).

The cluster runs under its own project name and its own loopback ports, so it never touches
a cluster the user is running; pytest-docker tears it down with its volumes even when a test
fails. Without a Docker engine these tests skip on a workstation and fail under ``CI=true``.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import time

import pytest

from node.compose import SERVICES, Compose, compose_command, docker_available, prepare_base_image, prepare_etcd_image
from tests.net import free_port_block, http

# The suite's cluster: a shorter lag than the seed's 0..1000 ms keeps the suite fast while
# still sending every entry with its own random delay. Failover is manual, through etcd's
# lock, so the tests that stop or kill `leader` find it leading again once restarted;
# tests/test_failover_auto_docker.py turns automatic failover on for its own cases.
E2E_SETTINGS = {"MIN_DELAY": "0", "MAX_DELAY": "300", "WRITE_QUORUM": "2", "WRITE_TIMEOUT": "3000",
                "CATCHUP_INTERVAL": "1000", "RESTART_POLICY": "no", "PUBLISH_HOST": "127.0.0.1",
                "FAILOVER": "manual", "LEADER_TTL": "2000",
                # Every Compose test runs with compaction on: a fault case's load takes a few snapshots.
                "SNAPSHOT_EVERY": "60", "RETAIN_ENTRIES": "20"}


def require_docker() -> None:
    problem = docker_available()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI=true and Docker is required for the end-to-end tests: {problem}")
        pytest.skip(f"Docker not available: {problem}")


_images: concurrent.futures.Future | None = None


def build_images_in_background() -> None:
    """Start building the base, etcd and node images in a thread (once per session); the
    ``docker_env`` fixture waits for them. Without Docker nothing starts: the fixture says why."""
    global _images
    if _images is None and docker_available() is None:
        _images = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="images").submit(_build_images)


def _build_images() -> tuple[str, str, str]:
    """(base image, etcd image, build output): what ``docker compose build`` would do first,
    so that the fixture's own build finds every layer cached."""
    base_image = prepare_base_image()
    etcd_image = prepare_etcd_image(base_image)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    built = subprocess.run([*compose_command(), "-f", os.path.join(root, "docker-compose.yml"), "build", "-q"],
                           env={**os.environ, "BASE_IMAGE": base_image}, capture_output=True, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"docker compose build failed:\n{built.stdout[-3000:]}{built.stderr[-3000:]}")
    return base_image, etcd_image, built.stdout + built.stderr


def _images_ready() -> tuple[str, str]:
    """The images, built in the background since collection (or now, if nothing started it)."""
    build_images_in_background()
    if _images is not None:
        base_image, etcd_image, _ = _images.result()
        return base_image, etcd_image
    base_image = prepare_base_image()
    return base_image, prepare_etcd_image(base_image)


@pytest.fixture(scope="session")
def docker_env():
    """Environment for compose: this run's ports and settings, and the images, built."""
    require_docker()
    base = free_port_block()
    ports = {service: base + i for i, service in enumerate(SERVICES)}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in E2E_SETTINGS.items():
            patch.setenv(key, value)
        for service, port in ports.items():
            patch.setenv("LEADER_PORT" if service == "leader" else f"{service.upper()}_PORT", str(port))
        base_image, etcd_image = _images_ready()
        patch.setenv("BASE_IMAGE", base_image)
        patch.setenv("ETCD_IMAGE", etcd_image)
        yield ports


@pytest.fixture(scope="session")
def docker_compose_command(docker_env) -> str:
    return " ".join(compose_command())


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(__file__)), "docker-compose.yml")


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return f"kvtest{os.getpid()}"


@pytest.fixture(scope="session")
def docker_setup():
    return ["build -q", "up -d --no-build"]


@pytest.fixture(scope="session")
def docker_cleanup():
    return ["down -v --remove-orphans"]


@pytest.fixture(scope="session")
def compose(docker_env, docker_services, docker_compose_project_name) -> Compose:
    """The running cluster, healthy, with a handle to stop, start and recreate its services."""
    cluster = Compose(docker_compose_project_name, ports=docker_env)
    cluster.wait_healthy(SERVICES, timeout=180)
    return cluster


def wait_converged(compose: Compose, timeout: float = 60.0, services=SERVICES[1:]) -> int:
    """Wait until every given follower applied the leader's last entry; return that seq."""
    deadline = time.monotonic() + timeout
    while True:
        last = http("GET", compose.url("leader") + "/status")[1]["last_seq"]
        applied = {}
        for service in services:
            try:
                applied[service] = http("GET", compose.url(service) + "/status", timeout=5)[1]["applied_seq"]
            except OSError:
                applied[service] = None
        if all(a == last for a in applied.values()):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"followers did not converge to seq {last}: {applied}")
        time.sleep(0.1)
