"""SIGHUP reloads the proxy's topology file; a broken file keeps the running topology."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from memring.proxy.ketama import KetamaRing
from tests.helpers import servers

pytestmark = pytest.mark.integration


def ask(port: int, data: bytes) -> bytes:
    with socket.create_connection((servers.HOST, port), timeout=3) as sock:
        sock.sendall(data + b"mn\r\n")
        reply = b""
        for _ in range(1000):
            if reply.endswith(b"MN\r\n"):
                return reply[:-4]
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    raise AssertionError(f"no complete reply to {data!r}: {reply!r}")


def backends_in_stats(port: int) -> set[str]:
    lines = ask(port, b"stats\r\n").decode().splitlines()
    return {line.split()[1].rsplit(":", 1)[0].removeprefix("backend:")
            for line in lines if line.startswith("STAT backend:") and line.endswith(" up")}


def wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_sighup_swaps_the_ring_and_bad_files_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "memring.toml"
    with servers.backend() as a, servers.backend() as b:
        config.write_text(servers.proxy_config([[a]]))
        argv = [*servers.proxy_argv(str(config))]
        with servers.running("memring-proxy", argv) as proxy:
            wait_for(lambda: backends_in_stats(proxy.port) == {f"127.0.0.1:{a.port}"})
            # Grow to two shards: keys must now land where the ring says.
            config.write_text(servers.proxy_config([[a], [b]]))
            proxy.process.send_signal(signal.SIGHUP)
            both = {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}
            wait_for(lambda: backends_in_stats(proxy.port) == both)
            keys = [b"key:%d" % i for i in range(200)]
            for key in keys:
                assert ask(proxy.port, b"set %s 0 0 1\r\nx\r\n" % key) == b"STORED\r\n"
            ring = KetamaRing([("s1", 1), ("s2", 1)])
            for key in keys:
                owner = (a, b)[ring.server_for(key)]
                assert ask(owner.port, b"get %s\r\n" % key).startswith(b"VALUE"), key
            # A broken file is refused and the two-shard topology stays.
            config.write_text("[[shards]]\nnodes = [\"not an address\"]\n")
            proxy.process.send_signal(signal.SIGHUP)
            time.sleep(0.3)
            assert backends_in_stats(proxy.port) == both
            assert ask(proxy.port, b"get key:1\r\n").startswith(b"VALUE key:1 0 1")
