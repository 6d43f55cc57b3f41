#!/usr/bin/env python3
"""Restart the compose cluster's backends without losing data: one replica per shard at a time.

`docker compose restart` restarts both replicas of every shard at once, and a backend keeps
its items in memory only: every item is gone. This restarts one backend at a time, as
docs/operations.md ("Rolling restart of all backends") says: in each shard the followers
first, then the leader, once it has handed the shard to a restarted follower (`memring
leader transfer`); each next step waits until the restarted node is back, in sync, lag 0
(`memring status --json`), so each shard always has a copy of its data. Then the proxies,
one at a time.

Usage: compose/rolling_restart.py [--compose "docker compose -f compose/docker-compose.yml
-p memring"] [--shard ID] [--backends-only] [--timeout SECONDS]. Standard library only: it
runs on the Docker host.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from typing import Any

SECRETS = "/var/lib/memring/secrets"
# memring's tools reach the backends' client ports with their own cluster certificate
STATUS = ["memring", "status", "--json", "--tls-ca", f"{SECRETS}/ca.crt",
          "--tls-cert", f"{SECRETS}/memring-tools.crt", "--tls-key", f"{SECRETS}/memring-tools.key"]
POLL = 1.0  # seconds between two looks at `memring status`
DEFAULT_COMPOSE = "docker compose -f compose/docker-compose.yml -p memring"


class RestartError(Exception):
    """A step did not finish; the message says which and what was seen."""


class Cluster:
    """The compose project, reached through its compose command and the proxy-1 container."""

    def __init__(self, compose: list[str], timeout: float) -> None:
        self.compose = compose
        self.timeout = timeout

    def run(self, *args: str) -> str:
        done = subprocess.run([*self.compose, *args], capture_output=True, text=True,
                              timeout=self.timeout, check=False)
        if done.returncode != 0:
            raise RestartError(f"{' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def memring(self, *args: str) -> str:
        return self.run("exec", "-T", "proxy-1", *args)

    def status(self) -> dict[str, Any]:
        """`memring status --json` (it exits 1 while a shard has no leader: still JSON)."""
        done = subprocess.run([*self.compose, "exec", "-T", "proxy-1", *STATUS],
                              capture_output=True, text=True, timeout=self.timeout, check=False)
        try:
            found: dict[str, Any] = json.loads(done.stdout)
        except ValueError:
            raise RestartError(f"memring status: {done.stderr.strip()}") from None
        return found

    def node(self, node_id: str) -> dict[str, Any]:
        for shard in self.status()["shards"]:
            for node in shard["nodes"]:
                if node["id"] == node_id:
                    return {**node, "shard": shard["id"], "leader": shard["leader"]}
        raise RestartError(f"node {node_id} is not in memring status")

    def wait_in_sync(self, node_id: str) -> None:
        deadline = time.monotonic() + self.timeout
        seen: dict[str, Any] = {}
        while time.monotonic() < deadline:
            seen = self.node(node_id)
            if seen["alive"] and seen["in_sync"] and seen["lag_seq"] == 0 and seen["answers"]:
                return
            time.sleep(POLL)
        raise RestartError(f"{node_id} not back in sync after {self.timeout:g}s: {seen}")

    def wait_healthy(self, service: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            (container,) = self.run("ps", "-q", service).split()
            health = subprocess.run(
                ["docker", "inspect", "--format", "{{.State.Health.Status}}", container],
                capture_output=True, text=True, timeout=self.timeout, check=False)
            if health.stdout.strip() == "healthy":
                return
            time.sleep(POLL)
        raise RestartError(f"{service} not healthy after {self.timeout:g}s")


def restart_backends(cluster: Cluster, only: list[str]) -> None:
    for shard in cluster.status()["shards"]:
        if only and shard["id"] not in only:
            continue
        # followers first, the leader last, handing over to a follower already restarted
        order = sorted(shard["nodes"], key=lambda node: node["id"] == shard["leader"])
        for node_id in [node["id"] for node in order]:
            cluster.wait_in_sync(node_id)  # every replica in sync before one goes away
            node = cluster.node(node_id)
            if node["leader"] == node_id:
                others = [n["id"] for n in shard["nodes"] if n["id"] != node_id]
                if not others:
                    raise RestartError(f"shard {shard['id']} has one replica: a restart "
                                       "loses its data")
                target = others[0]
                cluster.wait_in_sync(target)
                cluster.memring("memring", "leader", "transfer", shard["id"], target)
                print(f"{shard['id']}: leader {node_id} -> {target}", flush=True)
            started = time.monotonic()
            cluster.run("restart", f"backend-{node_id}")
            cluster.wait_in_sync(node_id)
            print(f"{shard['id']}: backend-{node_id} restarted, in sync after "
                  f"{time.monotonic() - started:.1f}s", flush=True)


def restart_proxies(cluster: Cluster) -> None:
    services = cluster.run("config", "--services").split()
    for service in [s for s in services if s.startswith("proxy-")]:
        cluster.run("restart", service)
        cluster.wait_healthy(service)
        print(f"{service} restarted", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compose", default=DEFAULT_COMPOSE,
                        help=f"the compose command and its options (default: {DEFAULT_COMPOSE})")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds each step may take (default 120)")
    parser.add_argument("--backends-only", action="store_true", help="leave the proxies")
    parser.add_argument("--shard", action="append", default=[], metavar="ID",
                        help="restart only this shard's backends (repeatable; default: all)")
    args = parser.parse_args(argv)
    cluster = Cluster(shlex.split(args.compose), args.timeout)
    try:
        restart_backends(cluster, args.shard)
        if not args.backends_only:
            restart_proxies(cluster)
    except (RestartError, subprocess.TimeoutExpired) as exc:
        print(f"rolling restart stopped: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
