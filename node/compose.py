"""Drive the Docker Compose deployment: prepare images, start, wait for health, fault, stop.

    python -m node.compose up        # prepare base image and wheels, build, start, wait healthy
    python -m node.compose down      # stop and remove the containers (volumes stay)
    python -m node.compose clean     # ... and drop the volumes (six logs, three etcd members)

Works with Compose v2 (``docker compose``) or v1 (``docker-compose``), whichever exists. The
end-to-end tests and the analysis use :class:`Compose` with a project name of their own so
they never touch a cluster the user is running. Standard library only: ``make up`` runs this
before any virtual environment exists.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPOSE_FILE = os.path.join(ROOT, "docker-compose.yml")
SERVICES = ("leader", "follower1", "follower2", "follower3", "follower4", "follower5")
ETCD_SERVICES = ("etcd1", "etcd2", "etcd3")
PORT_VARS = {"leader": "LEADER_PORT", **{f"follower{i}": f"FOLLOWER{i}_PORT" for i in range(1, 6)}}
DEFAULT_PORTS = {"leader": 8000, **{f"follower{i}": 8000 + i for i in range(1, 6)}}


class ComposeError(RuntimeError):
    """Docker or Compose is missing or a compose command failed."""


def compose_command() -> list[str]:
    """``docker compose`` when the v2 plugin exists, else ``docker-compose``."""
    if shutil.which("docker") is None:
        raise ComposeError("docker is not installed or not on PATH; install Docker Engine with Compose")
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
    if probe.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise ComposeError("neither 'docker compose' (v2) nor 'docker-compose' (v1) is available; install Compose")


def docker_available() -> str | None:
    """None when the Docker engine answers, else the reason it does not."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    probe = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"the Docker engine does not answer: {probe.stderr.strip()[:300]}"
    return None


def prepare_base_image() -> str:
    """Make sure a base image exists (pulled, or built locally without a registry); return its tag."""
    result = subprocess.run(["bash", os.path.join(ROOT, "docker", "base-image.sh")],
                            stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise ComposeError("docker/base-image.sh failed; see its output above")
    subprocess.run(["bash", os.path.join(ROOT, "docker", "wheels.sh")], check=True)
    # A rebuild leaves ~350 MB untagged: the image the tag moved away from (useless) and its
    # build stage (the layer cache of the next build, so only old ones go).
    for stage, age in (("runtime", "0s"), ("build", "1h")):
        subprocess.run(["docker", "image", "prune", "-f", "--filter", f"label=org.kvstore.stage={stage}",
                        "--filter", f"until={age}"], capture_output=True)
    return result.stdout.strip().splitlines()[-1]


ETCD_IMAGE = "gcr.io/etcd-development/etcd:v3.5.17"  # the official image, where a registry is reachable
LOCAL_ETCD_IMAGE = "kvstore-etcd:bookworm"  # built from docker/etcd where it is not
PULL_TIMEOUT_S = 20


def have_image(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def prepare_etcd_image(base_image: str) -> str:
    """The etcd image for the three members, as docker/base-image.sh does for the nodes:
    ``ETCD_IMAGE`` (default: the official one) if present, else the local build from an earlier
    run, else a bounded pull, else build docker/etcd (Debian's etcd-server) on ``base_image``."""
    wanted = os.environ.get("ETCD_IMAGE") or ETCD_IMAGE
    for tag in (wanted, LOCAL_ETCD_IMAGE):
        if have_image(tag):
            return tag
    print(f"etcd image {wanted} not present; trying docker pull (timeout {PULL_TIMEOUT_S} s)", file=sys.stderr)
    try:
        pulled = subprocess.run(["docker", "pull", "-q", wanted], capture_output=True, timeout=PULL_TIMEOUT_S)
        if pulled.returncode == 0 and have_image(wanted):
            return wanted
    except subprocess.TimeoutExpired:
        pass
    print(f"pull failed; building {LOCAL_ETCD_IMAGE} from docker/etcd (Debian's etcd-server)", file=sys.stderr)
    built = subprocess.run(["docker", "build", "-q", "-t", LOCAL_ETCD_IMAGE, "--build-arg", f"BASE_IMAGE={base_image}",
                            os.path.join(ROOT, "docker", "etcd")], stdout=subprocess.DEVNULL)
    if built.returncode != 0:
        raise ComposeError(f"building {LOCAL_ETCD_IMAGE} from docker/etcd failed; see its output above")
    return LOCAL_ETCD_IMAGE


class Compose:
    """One compose project: ``Compose(project="kvtest", ports={...}).up()``."""

    def __init__(self, project: str | None = None, ports: dict[str, int] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.project = project
        self.ports = dict(DEFAULT_PORTS, **(ports or {}))
        self.env = dict(os.environ, **(env or {}))
        for service, port in self.ports.items():
            self.env[PORT_VARS[service]] = str(port)
        self.command = compose_command()

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def run(self, *args: str, env: dict[str, str] | None = None, capture: bool = False,
            check: bool = True) -> subprocess.CompletedProcess:
        cmd = list(self.command) + ["-f", COMPOSE_FILE]
        if self.project:
            cmd += ["-p", self.project]
        result = subprocess.run(cmd + list(args), env=dict(self.env, **(env or {})), cwd=ROOT,
                                capture_output=capture, text=True)
        if check and result.returncode != 0:
            detail = (result.stderr or "").strip()[-2000:] if capture else "see the output above"
            raise ComposeError(f"{' '.join(cmd + list(args))} failed with code {result.returncode}: {detail}")
        return result

    def build(self) -> None:
        self.env["BASE_IMAGE"] = prepare_base_image()
        self.env["ETCD_IMAGE"] = prepare_etcd_image(self.env["BASE_IMAGE"])
        self.run("build", "--quiet" if self.command == ["docker", "compose"] else "-q")

    def up(self, *services: str, env: dict[str, str] | None = None, recreate: bool = False,
           timeout: float = 120.0) -> None:
        """Start services (all by default) detached and wait until every one is healthy. A
        recreate (new settings) touches the nodes only, unless ``services`` names etcd."""
        if env:
            self.env.update(env)
        args = ["up", "-d", "--no-build"]
        if recreate:
            args += ["--force-recreate", "--no-deps"]
            services = services or SERVICES
        self.run(*args, *services)
        self.wait_healthy(services or SERVICES, timeout)

    def container(self, service: str) -> str:
        cid = self.run("ps", "-q", service, capture=True).stdout.strip()
        if not cid:
            raise ComposeError(f"service {service} has no container; is the cluster up?")
        return cid

    def health(self, service: str) -> str:
        result = subprocess.run(["docker", "inspect", "-f", "{{json .State}}", self.container(service)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            return "missing"
        state = json.loads(result.stdout)
        return state.get("Health", {}).get("Status", state.get("Status", "unknown"))

    def wait_healthy(self, services, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(services)
        while waiting:
            waiting = [s for s in waiting if self.health(s) != "healthy"]
            if not waiting:
                return
            if time.monotonic() > deadline:
                logs = self.run("logs", "--tail", "20", *waiting, capture=True, check=False).stdout
                raise ComposeError(f"services {waiting} not healthy after {timeout:.0f} s; last logs:\n{logs}")
            time.sleep(0.5)

    def docker(self, action: str, service: str, *extra: str) -> None:
        """Run ``docker ACTION [extra] CONTAINER`` (kill, pause, unpause, stop, start ...)."""
        subprocess.run(["docker", action, *extra, self.container(service)], check=True, capture_output=True)

    def copy_log(self, service: str, dest: str) -> str:
        """Copy a node's data directory out of its container (works while it is stopped too) to
        the directory ``dest``, and return the path of the log in it: the snapshots beside the
        log come along, so that ``node.logtool`` reads a compacted log whole."""
        shutil.rmtree(dest, ignore_errors=True)  # docker cp would copy into an existing directory
        subprocess.run(["docker", "cp", f"{self.container(service)}:/data", dest], check=True, capture_output=True)
        return os.path.join(dest, "replication.log")

    def wipe(self, service: str) -> None:
        """Remove a node's container and its data volume (a lost disk); ``up`` starts it empty."""
        self.run("rm", "--stop", "--force", service)
        subprocess.run(["docker", "volume", "rm", f"{self.project}_{service}-data"], check=True, capture_output=True)

    def down(self, volumes: bool = False) -> None:
        self.run("down", "--remove-orphans", *(["-v"] if volumes else []), check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.compose", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "clean", "build", "wait"])
    parser.add_argument("-p", "--project", default=None, help="compose project name")
    args = parser.parse_args(argv)
    try:
        problem = docker_available()
        if problem:
            raise ComposeError(problem)
        compose = Compose(args.project)
        if args.action in ("up", "build"):
            compose.build()
        if args.action == "up":
            compose.up()
            urls = ", ".join(f"{s} {compose.url(s)}" for s in SERVICES)
            print(f"cluster healthy: {urls}")
        elif args.action == "wait":
            compose.wait_healthy(SERVICES)
        elif args.action in ("down", "clean"):
            compose.down(volumes=args.action == "clean")
    except (ComposeError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
