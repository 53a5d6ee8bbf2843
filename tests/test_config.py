"""Settings: defaults from the seed, and one clear line for every wrong value."""

import subprocess
import sys

import pytest

from node.config import ConfigError, load_config

S = {"REPLICATION_SECRET": "s3cret-value"}
PEERS = "leader=leader:8000,a=a:1,b=b:2,c=c:3,d=d:4,e=e:5"
LEADER = {**S, "ROLE": "leader", "PEERS": PEERS}
FOLLOWER = {**S, "ROLE": "follower", "NODE_ID": "f1", "PEERS": "leader=leader:8000,f1=f1:8001"}


def test_leader_defaults_follow_the_seed():
    cfg = load_config(LEADER)
    assert (cfg.port, cfg.write_quorum, cfg.min_delay_ms, cfg.max_delay_ms) == (8000, 2, 0, 1000)
    assert cfg.followers == ("a:1", "b:2", "c:3", "d:4", "e:5")
    assert cfg.fsync == "batch"
    assert cfg.batch_linger_us == 2000
    assert load_config({**LEADER, "BATCH_LINGER_US": "0"}).batch_linger_us == 0


def test_follower_defaults():
    cfg = load_config(FOLLOWER)
    assert (cfg.port, cfg.node_id, cfg.address, cfg.followers) == (8001, "f1", "f1:8001", ("leader:8000",))


def test_every_node_knows_the_cluster_wide_settings():
    """Any node may be promoted, so a follower validates and keeps what leading needs."""
    cfg = load_config({**FOLLOWER, "PEERS": PEERS, "NODE_ID": "c", "WRITE_QUORUM": "4", "MAX_DELAY": "50"})
    assert (cfg.write_quorum, cfg.max_delay_ms, cfg.port) == (4, 50, 3)
    assert cfg.followers == ("leader:8000", "a:1", "b:2", "d:4", "e:5")


def test_read_wait_is_a_setting_of_both_roles():
    assert load_config(LEADER).read_wait_ms == load_config(FOLLOWER).read_wait_ms == 1000
    assert load_config({**FOLLOWER, "READ_WAIT": "0"}).read_wait_ms == 0
    assert load_config({**LEADER, "READ_WAIT": "60000"}).read_wait_ms == 60000


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "ROLE is not set"),
        ({**S, "ROLE": "boss"}, "ROLE='boss' is not allowed; use one of leader, follower"),
        ({**LEADER, "WRITE_QUORUM": "0"}, "WRITE_QUORUM=0 is out of range 1..5 (PEERS lists 5 followers besides the leader)"),
        ({**LEADER, "WRITE_QUORUM": "7"}, "WRITE_QUORUM=7 is out of range 1..5"),
        ({**LEADER, "WRITE_QUORUM": "two"}, "WRITE_QUORUM='two' is not an integer"),
        ({**LEADER, "MIN_DELAY": "-1"}, "MIN_DELAY=-1 is out of range 0..600000 ms"),
        ({**LEADER, "MIN_DELAY": "500", "MAX_DELAY": "100"}, "MAX_DELAY=100 is below MIN_DELAY=500"),
        ({**LEADER, "WRITE_TIMEOUT": "0"}, "WRITE_TIMEOUT=0 is out of range"),
        ({**LEADER, "BATCH_LINGER_US": "-5"}, "BATCH_LINGER_US=-5 is out of range 0..100000 µs"),
        ({**LEADER, "BATCH_LINGER_US": "2ms"}, "BATCH_LINGER_US='2ms' is not an integer; allowed range 0..100000 µs"),
        ({**S, "ROLE": "leader"}, "PEERS is not set"),
        ({**S, "ROLE": "leader", "PEERS": "leader=a:1,b=a:1"}, "PEERS lists the address 'a:1' twice"),
        ({**S, "ROLE": "leader", "PEERS": "leader=a:1,leader=b:2"}, "PEERS lists the id 'leader' twice"),
        ({**S, "ROLE": "leader", "PEERS": "leader=a:1,b=nohost"}, "PEERS='nohost' is not a host:port address"),
        ({**S, "ROLE": "leader", "PEERS": "leader=a:1,b:2"}, "PEERS entry 'b:2' is not id=host:port"),
        ({**S, "ROLE": "leader", "PEERS": "leader=a:1"}, "lists 1 node(s); a cluster needs a leader and at least one"),
        ({**S, "ROLE": "leader", "PEERS": " , "}, "lists 0 node(s)"),
        ({**LEADER, "NODE_ID": "zed"}, "NODE_ID='zed' is not in PEERS (ids: leader, a, b, c, d, e)"),
        ({**FOLLOWER, "READ_WAIT": "-1"}, "READ_WAIT=-1 is out of range 0..60000 ms"),
        ({**FOLLOWER, "REPLICATION_SECRET": ""}, "REPLICATION_SECRET is not set; every node needs the same"),
        ({**FOLLOWER, "REPLICATION_SECRET": "short"}, "REPLICATION_SECRET has 5 characters; use 8..256"),
        ({**FOLLOWER, "PEERS": "leader=leader:99999,f1=f1:1"}, "PEERS='leader:99999' is not a host:port address"),
        ({**FOLLOWER, "PORT": "0"}, "PORT=0 is out of range 1..65535"),
        ({**FOLLOWER, "FSYNC": "sometimes"}, "FSYNC='sometimes' is not allowed; use one of always, batch, off"),
        ({**FOLLOWER, "MAX_BODY_BYTES": "10"}, "MAX_BODY_BYTES=10 is out of range"),
        ({**FOLLOWER, "CATCHUP_INTERVAL": "1"}, "CATCHUP_INTERVAL=1 is out of range"),
        ({**FOLLOWER, "READ_WAIT": "-1"}, "READ_WAIT=-1 is out of range 0..60000 ms"),
        ({**LEADER, "READ_WAIT": "60001"}, "READ_WAIT=60001 is out of range 0..60000 ms"),
        ({**LEADER, "READ_WAIT": "1s"}, "READ_WAIT='1s' is not an integer; allowed range 0..60000 ms"),
    ],
)
def test_invalid_settings_name_variable_value_and_range(env, message):
    with pytest.raises(ConfigError) as err:
        load_config(env)
    assert message in str(err.value)


def test_quorum_range_follows_the_number_of_followers():
    four = "leader=l:1,a=a:1,b=b:2,c=c:3"
    assert load_config({**S, "ROLE": "leader", "PEERS": four, "WRITE_QUORUM": "3"}).write_quorum == 3
    with pytest.raises(ConfigError, match=r"WRITE_QUORUM=4 is out of range 1..3"):
        load_config({**S, "ROLE": "leader", "PEERS": four, "WRITE_QUORUM": "4"})


def test_node_refuses_to_start_with_one_line_naming_the_variable(tmp_path):
    env = {**S, "ROLE": "leader", "PEERS": "leader=l:1,a=a:1", "WRITE_QUORUM": "3", "DATA_DIR": str(tmp_path), "PATH": ""}
    result = subprocess.run([sys.executable, "-m", "node"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["config error: WRITE_QUORUM=3 is out of range 1..1 (PEERS lists 1 followers besides the leader)"]


def test_delay_seed_is_optional_and_validated():
    assert load_config(LEADER).delay_seed is None
    assert load_config({**LEADER, "DELAY_SEED": "42"}).delay_seed == 42
    with pytest.raises(ConfigError, match="DELAY_SEED=-3 is out of range"):
        load_config({**LEADER, "DELAY_SEED": "-3"})
