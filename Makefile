# Verbs for a fresh machine:  make up  (cluster in Docker)   make test  (whole suite)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: up down clean logs ps test unit run analysis bench failover-study lint venv promote status etcd-server

## Docker Compose cluster: prepares the base image and wheels when missing, builds, waits healthy.
up:
	$(PYTHON) -m node.compose up

down:
	$(PYTHON) -m node.compose down

## Also drops the volumes: the six logs and the three etcd members' data.
clean:
	$(PYTHON) -m node.compose clean

logs:
	$(PYTHON) -c "from node.compose import Compose; Compose().run('logs', '--tail', '50')"

ps:
	$(PYTHON) -c "from node.compose import Compose; Compose().run('ps')"

## Make a follower of the Compose cluster the leader of the next term:  make promote NODE=follower3
promote:
	@test -n "$(NODE)" || { echo "usage: make promote NODE=follower3" >&2; exit 2; }
	$(PYTHON) -m node.admin promote $(NODE)

## Each node's role, term and leader.
status:
	$(PYTHON) -m node.admin status

## Virtual environment with the package, its test and analysis extras.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23"
	$(PY) -m pip install --quiet -e '.[test,analysis,dev]'
	touch $(STAMP)

venv: $(STAMP)

## etcd for the coordinator tests (tests/test_etcd.py): installed when missing and we are root
## (CI is), else one line saying how; those tests then skip, or fail under CI=true. Silent when present.
etcd-server:
	@command -v etcd >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then \
			echo "etcd not on PATH: apt-get install etcd-server"; \
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null; } || \
				echo "installing etcd-server failed: the etcd tests will skip (fail under CI=true)" >&2; \
		else echo "etcd not on PATH: the etcd tests skip; install it with: sudo apt-get install etcd-server" >&2; fi; }

## The whole suite: unit, in-process, local cluster, Docker end-to-end and fault tests.
test: $(STAMP) etcd-server
	$(PY) -m pytest

## Fast tests only (no Docker, no local cluster processes).
unit: $(STAMP)
	$(PY) -m pytest -m "not docker and not cluster"

## The six nodes as local processes on 127.0.0.1:8000..8005 (no Docker).
run: $(STAMP)
	$(PY) -m node.cluster

## The write-quorum study against the compose cluster (see python -m analysis --help).
analysis: $(STAMP)
	$(PY) -m analysis

## Throughput and overhead benchmark on local processes (see python -m analysis.bench --help),
## with Redis as a yardstick when redis-server is installed, and etcd at equal durability
## (k=3 against 4 of 6 members, alternating, 1/10/100 clients) when etcd is. About 5 minutes.
bench: $(STAMP)
	$(PY) -m analysis.bench --single $$(command -v redis-server >/dev/null && echo --redis || \
		echo "no redis-server on PATH: no Redis yardstick (apt-get install redis-server)" >&2)
	@if command -v etcd >/dev/null; then \
		echo "$(PY) -m analysis.bench --etcd --quorums 3 --clients 1 10 100 --pairs 2 --no-baseline"; \
		$(PY) -m analysis.bench --etcd --quorums 3 --clients 1 10 100 --pairs 2 --no-baseline; \
	else echo "no etcd on PATH: no etcd yardstick (apt-get install etcd-server)" >&2; fi
	$(PY) -m analysis.bench --mode delays

## Failover study on local processes with etcd (see python -m analysis.failover --help): the leader
## SIGKILLed under load for W = 1..5 and LEADER_TTL 2000/4000 ms; results in analysis/results/failover/.
failover-study: $(STAMP) etcd-server
	$(PY) -m analysis.failover

## Compaction study on local processes (see python -m analysis.compaction --help): a node's memory, disk,
## restart and resync time at 20,000 and 200,000 writes, SNAPSHOT_EVERY=0 against the nodes' default
## compaction; results in analysis/results/compaction/. 8 to 11 minutes on 2 cores.
.PHONY: compaction-study
compaction-study: $(STAMP)
	$(PY) -m analysis.compaction

lint: $(STAMP)
	$(VENV)/bin/ruff check .
