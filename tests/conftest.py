"""Shared fixtures: the in-process cluster factory, the Compose cluster, the fault table."""

import asyncio
import os
import threading

import pytest

from tests.inprocess import InProcessCluster


class HeldFsync:
    """``os.fsync`` replaced by one that waits until the test releases it: ``entered`` is set
    once a sync is under way (in the sync thread), ``release`` lets every sync through."""

    def __init__(self, monkeypatch) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        real_fsync = os.fsync

        def held(fd: int) -> None:
            self.entered.set()
            self.release.wait(10)
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", held)

    async def started(self, timeout: float = 5.0) -> bool:
        """True once a held sync is under way (waited for in a thread: the loop stays free)."""
        return await asyncio.get_running_loop().run_in_executor(None, self.entered.wait, timeout)


@pytest.fixture
def held_fsync(monkeypatch):
    """Hold every fsync from now on until ``held_fsync.release.set()`` (open logs before using it)."""
    return lambda: HeldFsync(monkeypatch)


@pytest.fixture
def make_cluster(tmp_path):
    """Factory for an in-process cluster in this test's temporary directory."""

    def make(followers: int = 5, **settings: str) -> InProcessCluster:
        return InProcessCluster(tmp_path, followers, **settings)

    return make


from tests.dockerenv import (  # noqa: E402,F401  (fixtures for the end-to-end tests)
    compose,
    docker_cleanup,
    docker_compose_command,
    docker_compose_file,
    docker_compose_project_name,
    docker_env,
    docker_setup,
)


def pytest_terminal_summary(terminalreporter):
    """Print the per-fault table of the fault tests that ran."""
    from tests.history import FAULT_TABLE, format_table

    if FAULT_TABLE:
        terminalreporter.section("faults: writes attempted / acknowledged / failed / lost, time to converge")
        terminalreporter.write_line(format_table(FAULT_TABLE))


# Modules that leave the shared Compose cluster in a state no other module expects run last.
RUN_LAST = ("test_failover_auto_docker.py", "test_membership_docker.py")  # in this order


def pytest_collection_modifyitems(config, items):
    """The tests on the Compose cluster run after all the others, and the automatic-failover
    module last of all: it leaves the cluster failing over by itself at W = 3 (putting it back
    would cost a recreate of six containers and a switchover). Meanwhile the images those tests
    need are built in the background (minutes on a new machine), while the rest of the suite
    runs instead of before it."""
    def on_compose(item) -> bool:
        return "compose" in getattr(item, "fixturenames", ())

    def rank(item) -> tuple:
        last = item.path.name in RUN_LAST
        return (last, RUN_LAST.index(item.path.name) if last else 0, on_compose(item))

    items.sort(key=rank)  # stable: every other order is kept
    if any(on_compose(item) for item in items) and not config.option.collectonly:
        from tests.dockerenv import build_images_in_background

        build_images_in_background()
