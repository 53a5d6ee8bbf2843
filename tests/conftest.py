"""Shared fixtures: the in-process cluster factory, the Compose cluster, the fault table."""

import pytest

from tests.inprocess import InProcessCluster


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
