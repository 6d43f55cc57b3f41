"""libmemcached's command-line tools (Debian's libmemcached-tools) against memcached and a backend.

The same sequence of tool invocations runs against a fresh memcached 1.6.18 and a fresh memring
backend; each step's exit status and stdout must be the same on both (stderr names the port, so
it is not compared). The long form, every client library's own test suite against memcached, a
backend and a proxy, is bench/client_suites.py (`make client-suites`).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import servers

pytestmark = pytest.mark.compat

TOOL_TIMEOUT = 20.0  # seconds for one tool invocation
KEY = "libmemcached-tools-file.txt"
PAYLOAD = b"memring and libmemcached-tools\n"
KINDS = ("memcached", "backend")
# Stats that the same steps leave at the same value on both servers.
COUNTED_STATS = ("curr_items", "total_items", "cmd_get", "cmd_set", "get_hits", "get_misses")


def tool(name: str, port: int, *args: str, cwd: Path) -> tuple[int, str]:
    """Run one libmemcached tool against 127.0.0.1:port; its exit status and stdout."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: `make debian-deps` (as root) installs libmemcached-tools")
    done = subprocess.run([path, f"--servers={servers.HOST}:{port}", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=TOOL_TIMEOUT,
                          stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout


def file_steps(port: int, folder: Path) -> list[tuple[str, int, str]]:
    """Store a file with memccp, then read, test, touch and remove it with the other tools."""
    (folder / KEY).write_bytes(PAYLOAD)
    steps = [
        ("memccp", KEY),
        ("memccat", KEY),
        ("memcexist", KEY),
        ("memcexist", "libmemcached-tools-missing"),
        ("memctouch", "--expire=100", KEY),
        ("memccat", "libmemcached-tools-missing"),
        ("memcrm", KEY),
        ("memcexist", KEY),
        ("memccp", KEY),
        ("memcflush",),
        ("memccat", KEY),
    ]
    return [(" ".join(step), *tool(step[0], port, *step[1:], cwd=folder)) for step in steps]


def stat_values(port: int, folder: Path) -> dict[str, str]:
    status, out = tool("memcstat", port, cwd=folder)
    assert status == 0, out
    lines = out.splitlines()
    assert lines[0] == f"Server: {servers.HOST} ({port})"
    pairs = (line.strip().split(": ", 1) for line in lines[1:] if line.startswith("\t"))
    return {name: value for name, value in pairs}


@pytest.fixture
def both() -> Iterator[dict[str, servers.RunningServer]]:
    with servers.memcached() as memcached, servers.backend() as backend:
        yield {"memcached": memcached, "backend": backend}


def test_file_tools_behave_alike(both: dict[str, servers.RunningServer],
                                 tmp_path: Path) -> None:
    results = {kind: file_steps(both[kind].port, tmp_path) for kind in KINDS}
    assert results["memcached"][1] == ("memccat " + KEY, 0, PAYLOAD.decode() + "\n")
    assert results["backend"] == results["memcached"]


def test_memcstat_counts_alike(both: dict[str, servers.RunningServer], tmp_path: Path) -> None:
    for kind in KINDS:
        file_steps(both[kind].port, tmp_path)
    stats = {kind: stat_values(both[kind].port, tmp_path) for kind in KINDS}
    assert stats["backend"]["version"] == stats["memcached"]["version"] == "1.6.18"
    counted = {kind: {name: stats[kind].get(name) for name in COUNTED_STATS} for kind in KINDS}
    assert counted["backend"] == counted["memcached"]
    assert counted["memcached"]["cmd_set"] not in (None, "0")  # the steps were counted


@pytest.mark.parametrize("kind", KINDS)
def test_memcdump_lists_stored_keys(kind: str, both: dict[str, servers.RunningServer],
                                    tmp_path: Path) -> None:
    port = both[kind].port
    (tmp_path / KEY).write_bytes(PAYLOAD)
    assert tool("memccp", port, KEY, cwd=tmp_path)[0] == 0
    assert tool("memcdump", port, cwd=tmp_path) == (0, KEY + "\n")
