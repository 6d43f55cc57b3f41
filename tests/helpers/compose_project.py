"""The project's compose file brought up under Docker, and a client that speaks to it as users do.

`ComposeProject` runs the unmodified compose/docker-compose.yml with image variables only
(MEMRING_IMAGE, ETCD_IMAGE), waits for health, finds a shard's leader through `memring status
--json` run in proxy-1, and always ends with `down -v`. `SecureClient` is a memcached text
client over TLS that authenticates (memcached's ASCII auth, `set auth 0 0 N` with `user
password`) on every new connection, and reconnects after a failure, so a writer survives a
failover. Every call has a timeout and every loop a deadline.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import docker_engine

COMPOSE_FILE = docker_engine.ROOT / "compose" / "docker-compose.yml"
SECRETS = "/var/lib/memring/secrets"
TOOLS_TLS = ["--tls-ca", f"{SECRETS}/ca.crt", "--tls-cert", f"{SECRETS}/memring-tools.crt",
             "--tls-key", f"{SECRETS}/memring-tools.key"]
POLL = 0.5


@dataclass
class ComposeProject:
    """One compose project of the repository's compose file."""

    name: str
    compose: list[str]
    timeout: float = 180.0
    _services: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {"MEMRING_IMAGE": docker_engine.MEMRING_IMAGE,
                "ETCD_IMAGE": docker_engine.ETCD_IMAGE}

    def run(self, *args: str, timeout: float | None = None, check: bool = True,
            ) -> subprocess.CompletedProcess[str]:
        argv = [*self.compose, "-f", str(COMPOSE_FILE), "-p", self.name, *args]
        if check:
            return docker_engine.run(argv, timeout=timeout or self.timeout, env=self.env)
        return subprocess.run(argv, capture_output=True, text=True, check=False,
                              timeout=timeout or self.timeout, env={**os.environ, **self.env})

    def up(self) -> None:
        self.run("up", "-d", "--no-build")

    def down(self, volumes: bool) -> None:
        self.run("down", *(["-v"] if volumes else []), "--remove-orphans")

    def containers(self) -> dict[str, str]:
        """Service -> container id, from the labels compose 1.29 and v2 both set (one call to
        docker, where compose itself takes a second or more per call on a busy machine)."""
        out = self.docker("ps", "-a", "--filter", f"label=com.docker.compose.project={self.name}",
                          "--format", '{{.Label "com.docker.compose.service"}} {{.ID}}')
        found: dict[str, str] = {}
        for line in out.splitlines():
            service, _, container = line.partition(" ")
            assert service not in found, f"{service}: two containers"
            found[service] = container
        return found

    def container(self, service: str) -> str:
        found = self.containers()
        assert service in found, f"{service}: no container ({sorted(found)})"
        return found[service]

    def docker(self, *args: str, timeout: float = 60.0) -> str:
        return docker_engine.run([docker_engine.DOCKER, *args], timeout=timeout).stdout

    def exec(self, service: str, *argv: str, check: bool = True, env: dict[str, str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
        """`docker exec` in the service's container (docker's, not compose's: 1.29 and v2 differ)."""
        flags = [item for key, value in (env or {}).items() for item in ("-e", f"{key}={value}")]
        argv_ = [docker_engine.DOCKER, "exec", *flags, self.container(service), *argv]
        if check:
            return docker_engine.run(argv_, timeout=60)
        return subprocess.run(argv_, capture_output=True, text=True, timeout=60, check=False)

    def services(self) -> list[str]:
        if not self._services:
            self._services = self.run("config", "--services").stdout.split()
        return self._services

    def long_running(self) -> list[str]:
        return [s for s in self.services() if not s.endswith("-init")]

    def health(self, service: str) -> str:
        return self.healths([service])[service]

    def healths(self, services: list[str]) -> dict[str, str]:
        """Each service's health as Docker has it (`none` without a container)."""
        containers = self.containers()
        present = [s for s in services if s in containers]
        states = dict.fromkeys(services, "none")
        if present:
            out = self.docker("inspect", "--format", "{{.State.Health.Status}}",
                              *[containers[s] for s in present])
            states.update(zip(present, out.split(), strict=True))
        return states

    def wait_healthy(self, services: list[str] | None = None) -> float:
        """Seconds until every long-running service is healthy."""
        started = time.monotonic()
        wanted = services or self.long_running()
        states: dict[str, str] = {}
        while time.monotonic() - started < self.timeout:
            states = self.healths(wanted)
            if all(state == "healthy" for state in states.values()):
                return time.monotonic() - started
            time.sleep(POLL)
        raise AssertionError(f"not healthy after {self.timeout:g}s: {states}\n"
                             f"{self.run('logs', '--tail', '20', check=False).stdout[-6000:]}")

    def status(self) -> dict[str, Any]:
        done = self.exec("proxy-1", "memring", "status", "--json", *TOOLS_TLS, check=False)
        found: dict[str, Any] = json.loads(done.stdout)
        return found

    def leader(self, shard: str) -> str:
        (record,) = [s for s in self.status()["shards"] if s["id"] == shard]
        assert record["leader"], f"shard {shard} has no leader"
        return str(record["leader"])

    def wait_all_in_sync(self) -> float:
        """Seconds until every shard has a leader and every node is alive and in sync, lag 0."""
        started = time.monotonic()
        seen: Any = None
        while time.monotonic() - started < self.timeout:
            seen = self.status()["shards"]
            if all(shard["leader"] and all(n["alive"] and n["in_sync"] and n["lag_seq"] == 0
                                           for n in shard["nodes"]) for shard in seen):
                return time.monotonic() - started
            time.sleep(POLL)
        raise AssertionError(f"not all in sync after {self.timeout:g}s: {seen}")

    def secret(self, name: str) -> str:
        return self.exec("proxy-1", "cat", f"{SECRETS}/{name}").stdout

    def ip(self, service: str) -> str:
        return self.docker("inspect", "--format",
                           "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                           self.container(service)).strip()


# --- a client as the docs tell users to connect ------------------------------------------------


class ClientFailure(Exception):
    """The server did not answer as expected in time (a failover, a refused login)."""


class SecureClient:
    """A memcached text client over TLS that authenticates on each new connection."""

    def __init__(self, port: int, ca: Path, user: str, password: str,
                 timeout: float = 5.0) -> None:
        self.address = ("127.0.0.1", port)
        self.context = ssl.create_default_context(cafile=str(ca))
        self.credentials = f"{user} {password}".encode()
        self.timeout = timeout
        self.sock: ssl.SSLSocket | None = None
        self.buffer = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.buffer = b""

    def _connect(self) -> ssl.SSLSocket:
        if self.sock is None:
            plain = socket.create_connection(self.address, timeout=self.timeout)
            self.sock = self.context.wrap_socket(plain, server_hostname=self.address[0])
            self.sock.settimeout(self.timeout)
            self.buffer = b""
            if self._call(self._store_line(b"auth", self.credentials)) != b"STORED":
                self.close()
                raise ClientFailure("authentication refused")
        return self.sock

    @staticmethod
    def _store_line(key: bytes, value: bytes) -> bytes:
        return b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value)

    def _line(self) -> bytes:
        assert self.sock is not None
        deadline = time.monotonic() + self.timeout
        while b"\r\n" not in self.buffer:
            if time.monotonic() > deadline or len(self.buffer) > 1 << 20:
                raise ClientFailure("no reply line")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ClientFailure("connection closed")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def _call(self, request: bytes) -> bytes:
        assert self.sock is not None
        self.sock.sendall(request)
        return self._line()

    def request(self, payload: bytes) -> bytes:
        """The first reply line; on any failure the connection is dropped and the error raised."""
        try:
            self._connect()
            return self._call(payload)
        except (OSError, ClientFailure):
            self.close()
            raise

    def set(self, key: str, value: bytes) -> bool:
        try:
            return self.request(self._store_line(key.encode(), value)) == b"STORED"
        except (OSError, ClientFailure):
            return False

    def get(self, key: str) -> bytes | None:
        """The value, None on a miss; ClientFailure on anything else."""
        line = self.request(b"get %s\r\n" % key.encode())
        if line == b"END":
            return None
        if not line.startswith(b"VALUE "):
            raise ClientFailure(f"get {key}: {line!r}")
        size = int(line.split()[3])
        assert self.sock is not None
        while len(self.buffer) < size + 2 + 5:  # data, CRLF, END CRLF
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ClientFailure("connection closed in a value")
            self.buffer += chunk
        value, self.buffer = self.buffer[:size], self.buffer[size + 2:]
        if self._line() != b"END":
            raise ClientFailure(f"get {key}: no END")
        return value
