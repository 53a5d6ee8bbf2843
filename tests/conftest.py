import pytest

from tests.inprocess import InProcessCluster


@pytest.fixture
def make_cluster(tmp_path):
    """Factory for an in-process cluster in this test's temporary directory."""

    def make(followers: int = 5, **settings: str) -> InProcessCluster:
        return InProcessCluster(tmp_path, followers, **settings)

    return make
