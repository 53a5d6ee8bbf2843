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
