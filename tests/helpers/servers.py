"""Real server processes for tests: memcached and memring backends on free loopback ports.

Each server is started as a child process, polled until it answers `version`, and
stopped with terminate-then-kill, so a failing test never leaves a process behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from memring.cluster import etcd_process
from memring.protocol.ascii_auth import UNAUTHENTICATED
from tests.helpers.forked_servers import ServerForker, server_forker
from tests.helpers.process_sockets import held_by_other_process

HOST = "127.0.0.1"
PORT_ATTEMPTS = 3  # servers started again when another process took their port first

# Servers are started from several threads at once (the differential suite prestarts them).
# CPython 3.11 spawns with vfork() and lets other threads run meanwhile; once in a few
# thousand spawns here the child's exec failed with EFAULT ("[Errno 14] Bad address" for the
# venv's python, seen once in CI). A plain fork is a few ms slower and has no such window.
# `_USE_VFORK` is CPython's documented fail-safe switch for this (gh-91401).
if hasattr(subprocess, "_USE_VFORK"):
    subprocess._USE_VFORK = False


class ServerProcess(Protocol):
    """What tests do with a server's process: a `subprocess.Popen`, or a forked server's
    (tests.helpers.forked_servers)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, signum: int) -> None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


# While set (forking_python_servers()), backends and proxies are forked, not spawned.
_forker: ServerForker | None = None


@contextlib.contextmanager
def forking_python_servers(log_dir: Path) -> Iterator[None]:
    """Backends and proxies started in the block are forked from one helper that imported
    them (milliseconds each, not ~0.3 s of CPU): for modules that start hundreds."""
    global _forker
    with server_forker(log_dir) as forker:
        _forker = forker
        try:
            yield
        finally:
            _forker = None


def free_port() -> int:
    """A loopback port, never handed out twice in this test run (cluster.etcd_process)."""
    return etcd_process.free_port()


@dataclass
class RunningServer:
    name: str
    port: int
    process: ServerProcess
    upstreams: list[RunningServer] = field(default_factory=list)  # a proxy's backends
    log: IO[bytes] | None = None  # its stderr (a file: a pipe nobody reads could fill up)

    def log_text(self) -> str:
        """Everything the process wrote to stderr so far."""
        if self.log is None:
            return ""
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    @property
    def pid(self) -> int:
        return self.process.pid


def answers_version(port: int) -> bool:
    """Whether a memcached-speaking server answers `version` on the port (0.5 s at most),
    or refuses it until the client authenticates (started with -Y / --auth-file)."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as s:
            s.sendall(b"version\r\n")
            reply = s.recv(64)
            return reply.startswith(b"VERSION ") or reply == UNAUTHENTICATED
    except OSError:
        return False


def freeze(pid: int) -> None:
    """SIGSTOP process `pid`, returning once every thread of it has stopped: a SIGSTOP acts
    only when each thread next runs, and on a loaded machine a frozen etcd answered a call
    sent just after it (cluster.etcd_process.await_stopped). SIGCONT resumes it."""
    os.kill(pid, signal.SIGSTOP)
    etcd_process.await_stopped(pid)


def stop(process: ServerProcess, grace: float = 5.0, graceful: bool = True) -> None:
    if process.poll() is None:
        if graceful:
            process.terminate()
        else:
            process.kill()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(grace)


@contextlib.contextmanager
def running(name: str, argv_for_port: Sequence[str], port: int | None = None,
            timeout: float = 15.0, graceful: bool = True,
            ready: Callable[[int], bool] | None = None) -> Iterator[RunningServer]:
    """Start `argv_for_port` (with `{port}` filled in) and yield once it answers (`ready`,
    default: a plain `version`; a TLS port needs tests.helpers.tls.answers_version_over).
    When the answer came from another process that took the port first, the server is
    started again on another port (unless the caller chose the port)."""
    ready = ready or answers_version
    for attempt in range(PORT_ATTEMPTS):
        chosen = port or free_port()
        server = _start(name, argv_for_port, chosen, timeout, ready)
        # the server that answered is not ours when ours exited or another process listens
        if server.process.poll() is None and not held_by_other_process(chosen, server.pid):
            break
        stop(server.process, graceful=False)
        if port is not None or attempt == PORT_ATTEMPTS - 1:
            raise RuntimeError(f"{name}: port {chosen} is held by another process, which "
                               f"answered in its place (exit status {server.process.returncode}"
                               f"): {server.log_text()}")
    try:
        yield server
    finally:
        stop(server.process, graceful=graceful)  # the log stays readable (closed when collected)


def _start(name: str, argv_for_port: Sequence[str], port: int, timeout: float,
           ready: Callable[[int], bool]) -> RunningServer:
    argv = [a.format(port=port) for a in argv_for_port]
    forker = _forker
    process: ServerProcess
    if forker is not None and forker.forks(argv):
        # stdout and stderr both on the log (the forked server opens it by name)
        log = tempfile.NamedTemporaryFile(prefix="memring-server-")  # noqa: SIM115 - as below
        process = forker.start(argv, Path(log.name))
    else:
        log = tempfile.TemporaryFile()  # noqa: SIM115 - outlives this function (log_text)
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=log)
    server = RunningServer(name, port, process, log=log)
    try:
        deadline = time.monotonic() + timeout
        while not ready(port):
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: "
                                   f"{server.log_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer on port {port} within {timeout}s")
            time.sleep(0.02)
    except BaseException:
        stop(process)
        raise
    return server


def memcached_binary() -> str:
    path = shutil.which("memcached") or "/usr/bin/memcached"
    if not os.path.exists(path):
        raise RuntimeError("memcached is not installed: run `make debian-deps` as root")
    return path


def memcached_argv(*extra: str) -> list[str]:
    user = ["-u", "root"] if os.geteuid() == 0 else []
    return [memcached_binary(), "-p", "{port}", "-U", "0", "-l", HOST, *user, *extra]


def backend_argv(*extra: str) -> list[str]:
    return [sys.executable, "-m", "memring.backend", "--listen", HOST + ":{port}", *extra]


# memcached's LRU crawler and maintainer threads briefly hold items; an incr that meets a
# held item allocates a new one instead of rewriting in place, so the value loses its space
# padding and total_items grows. Without those threads 1.6.18 is deterministic (seen
# flaking ~1 run in 10 with them), so the oracle runs without them.
ORACLE_ARGS = ("-o", "no_lru_crawler,no_lru_maintainer")


@contextlib.contextmanager
def memcached(*extra: str, ready: Callable[[int], bool] | None = None
              ) -> Iterator[RunningServer]:
    """Debian's memcached as the oracle; SIGKILLed at the end (its SIGTERM path idles ~1 s)."""
    with running("memcached", memcached_argv(*ORACLE_ARGS, *extra), graceful=False,
                 ready=ready) as server:
        yield server


@contextlib.contextmanager
def backend(*extra: str, ready: Callable[[int], bool] | None = None
            ) -> Iterator[RunningServer]:
    with running("memring-backend", backend_argv(*extra), ready=ready) as server:
        yield server


def start(kind: str, *extra: str) -> contextlib.AbstractContextManager[RunningServer]:
    """A server of `kind` ("memcached" or "backend"), for tests that run against both."""
    if kind == "memcached":
        return memcached(*extra)
    if kind == "backend":
        return backend(*extra)
    raise ValueError(f"unknown server kind {kind!r}")


def proxy_argv(config: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "memring.proxy", "--listen", HOST + ":{port}", "--config", config,
            *extra]


def proxy_config(shards: Sequence[Sequence[RunningServer]], **proxy: object) -> str:
    """A static topology TOML: one [[shards]] table per group of servers, named s1, s2, ...
    so that key placement does not depend on the free ports the servers got."""
    lines = ["[proxy]"]
    for key, value in proxy.items():
        lines.append(f"{key} = {value!r}" if not isinstance(value, str) else f'{key} = "{value}"')
    for number, group in enumerate(shards, start=1):
        nodes = ", ".join(f'"{HOST}:{server.port}"' for server in group)
        lines += ["[[shards]]", f'name = "s{number}"', f"nodes = [{nodes}]"]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def proxy(shards: Sequence[Sequence[RunningServer]], *extra: str,
          ready: Callable[[int], bool] | None = None,
          **settings: object) -> Iterator[RunningServer]:
    """A memring proxy over already running servers, grouped into shards."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", prefix="memring-proxy-") as config:
        config.write(proxy_config(shards, **settings))
        config.flush()
        with running("memring-proxy", proxy_argv(config.name, *extra), ready=ready) as server:
            server.upstreams = [s for group in shards for s in group]
            yield server


@contextlib.contextmanager
def proxy_over(kind: str, shards: int = 1, replicas: int = 1,
               **settings: object) -> Iterator[RunningServer]:
    """Fresh servers of `kind` ("memcached" or "backend") behind a fresh proxy."""
    with contextlib.ExitStack() as stack:
        groups = [[stack.enter_context(start(kind)) for _ in range(replicas)]
                  for _ in range(shards)]
        yield stack.enter_context(proxy(groups, **settings))
