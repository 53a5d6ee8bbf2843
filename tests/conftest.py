"""Shared fixtures: the in-process cluster factory, the Compose cluster, the fault table."""

import pytest

from node.httpserver import HTTPServer
from tests.inprocess import InProcessCluster


@pytest.fixture
def http_server(request, io_loop, _unused_port):
    """pytest-tornado's server fixture, serving the ``app`` fixture with the nodes' own HTTP
    server (node.httpserver) rather than Tornado's, so handler tests cover the real wire."""
    server = HTTPServer(request.getfixturevalue(request.config.option.app_fixture))
    io_loop.run_sync(lambda: server.add_sockets([_unused_port[0]]))

    def stop() -> None:
        server.stop()
        io_loop.run_sync(server.close_all_connections, timeout=request.config.option.async_test_timeout)

    request.addfinalizer(stop)
    return server


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
