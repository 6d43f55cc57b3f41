"""`memring up` forks its servers from one helper that imported their modules (cluster.
fork_server): the helper runs no thread when it forks (gRPC's fork rules), the forked
backends talk to etcd (they elect leaders and serve through the proxy), the launcher is their
parent (it sees a backend's exit status), the helper is gone once the cluster is up, and a
launcher killed with SIGKILL takes every server with it (PR_SET_PDEATHSIG, set by each
server once the launcher has adopted it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from memring.cluster.fork_server import READY, TITLE_ROOM, ForkServer
from tests.helpers import servers

HOST = servers.HOST
PID = re.compile(r"memring up: (etcd|backend|proxy)\s+(\S+).*\(pid (\d+)\)")
LOGS = re.compile(r"memring up: logs in (\S+);")


def alive(pid: int) -> bool:
    """Running, not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.unit
def test_the_helper_runs_one_thread_when_it_forks() -> None:
    """After importing trio, grpc, etcd3 and the servers: one thread, and the dots that made
    room for the servers' command lines blanked from its own."""
    helper = subprocess.Popen([sys.executable, "-m", "memring.cluster.fork_server",
                               str(os.getpid()), "." * TITLE_ROOM],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert helper.stdout is not None and helper.stdin is not None
        assert helper.stdout.readline() == READY
        assert len(os.listdir(f"/proc/{helper.pid}/task")) == 1
        cmdline = Path(f"/proc/{helper.pid}/cmdline").read_bytes()
        assert b"memring.cluster.fork_server" in cmdline and b"." * 16 not in cmdline
        helper.stdin.close()  # no more requests: it exits
        assert helper.wait(10) == 0
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait(5)


def subreaper() -> int:
    flag = ctypes.c_int(-1)
    assert ctypes.CDLL(None).prctl(37, ctypes.c_ulong(ctypes.addressof(flag)), ctypes.c_ulong(0),
                                   ctypes.c_ulong(0), ctypes.c_ulong(0)) == 0
    return flag.value  # PR_GET_CHILD_SUBREAPER


@pytest.mark.unit
async def test_a_forked_server_is_this_process_child_with_its_exit_status_and_log(
        tmp_path: Path) -> None:
    """In-process: the fork server's server is adopted (waitpid here gives its status, 2
    for a flag the backend does not know), writes its log where asked, and this process is
    a child subreaper only while the helper runs."""
    assert subreaper() == 0
    server = ForkServer.start(tmp_path / "fork-server.log", None)
    assert server is not None
    try:
        assert subreaper() == 1
        with trio.fail_after(30):
            await server.ready()
            forked = await server.fork([sys.executable, "-m", "memring.backend", "--no-such"],
                                       tmp_path / "backend.log")
            assert parent(forked.pid) == os.getpid()
            while forked.poll() is None:  # bounded by fail_after
                await trio.sleep(0.02)
    finally:
        server.close()
    assert forked.returncode == 2
    assert "memring-backend: error: unrecognized arguments: --no-such" in \
        (tmp_path / "backend.log").read_text()
    assert server.process.returncode == 0  # stdin closed: it left by itself
    assert subreaper() == 0


@contextlib.contextmanager
def memring_up(run_root: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`memring up ARGS` in a session of its own, its output (stdout and stderr) on a pipe,
    its run directory under `run_root`; killed at the end if it still runs."""
    up = subprocess.Popen([sys.executable, "-m", "memring.cluster", "up", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=dict(os.environ, XDG_RUNTIME_DIR=str(run_root)),
                          stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        yield up
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(5)


@pytest.mark.integration
@pytest.mark.requires_etcd
def test_forked_servers_are_the_launchers_children_and_die_with_it(tmp_path: Path) -> None:
    pymemcache = pytest.importorskip("pymemcache.client.base")
    port = servers.free_port()
    lines: list[str] = []
    pids: dict[str, int] = {}
    run_dirs: list[str] = []
    try:
        with memring_up(tmp_path, "--shards", "1", "--replicas", "2", "--port", str(port),
                        "--cluster", "forked") as up:
            assert up.stdout is not None
            reader = threading.Thread(target=lambda: lines.extend(up.stdout or ()), daemon=True)
            reader.start()

            def wait_for(prefix: str, within: float) -> None:
                deadline = time.monotonic() + within
                while not any(line.startswith(prefix) for line in list(lines)):
                    assert up.poll() is None, f"memring up exited {up.returncode}:\n" + \
                        "".join(lines)
                    assert time.monotonic() < deadline, f"no {prefix!r}:\n" + "".join(lines)
                    time.sleep(0.05)

            wait_for("memring up: ready", 45)
            found = [m for m in map(PID.match, lines) if m]
            pids = {m.group(2) if m.group(1) != "etcd" else "etcd": int(m.group(3)) for m in found}
            assert sorted(pids) == ["etcd", "proxy-1", "s1-r1", "s1-r2"], lines
            run_dirs = [m.group(1) for m in map(LOGS.match, lines) if m]
            for name, pid in pids.items():  # forked, adopted, and looking as if spawned
                if name == "etcd":
                    continue
                assert parent(pid) == up.pid, name
                role = "proxy" if name.startswith("proxy") else "backend"
                assert f"-m\0memring.{role}\0" in Path(f"/proc/{pid}/cmdline").read_text()
            helpers = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                       if alive(pid) and parent(pid) == up.pid and
                       b"fork_server" in Path(f"/proc/{pid}/cmdline").read_bytes()]
            assert helpers == []  # the helper left once every server was started
            client = pymemcache.Client((HOST, port), connect_timeout=5, timeout=5)
            try:  # the forked backends registered, elected a leader, and serve
                assert client.set("k", b"v", noreply=False)
                assert client.get("k") == b"v"
            finally:
                client.close()

            os.kill(pids["s1-r2"], signal.SIGKILL)  # the launcher reaps it and says so
            wait_for("memring up: backend s1-r2 exited with code -9", 10)

            up.kill()  # no stop of its own: each server gets SIGTERM from the kernel
            up.wait(10)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(alive(pid) for pid in pids.values()):
                time.sleep(0.05)
            survivors = [name for name, pid in pids.items() if alive(pid)]
    finally:
        for pid in pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        for run_dir in run_dirs:  # memring up had no time to remove it
            shutil.rmtree(run_dir, ignore_errors=True)
    assert survivors == [], f"left behind after SIGKILL of memring up: {survivors}"


def cluster_processes(name: str) -> list[int]:
    """Live processes whose command line names the cluster (its backends and proxies)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if f"\0--cluster\0{name}\0".encode() in cmdline and alive(int(entry)):
            found.append(int(entry))
    return found


@pytest.mark.integration
@pytest.mark.requires_etcd
def test_ctrl_c_while_servers_are_forked_leaves_none(tmp_path: Path) -> None:
    """SIGINT as soon as the first backend is reported, while the rest are being forked:
    `memring up` exits 0 and every server it had forked is stopped and reaped."""
    name = "forkcut"
    lines: list[str] = []
    try:
        with memring_up(tmp_path, "--shards", "6", "--replicas", "2", "--port",
                        str(servers.free_port()), "--cluster", name) as up:
            assert up.stdout is not None
            for line in up.stdout:  # bounded: memring up's output ends when it exits
                lines.append(line)
                if line.startswith("memring up: backend"):
                    up.send_signal(signal.SIGINT)
                    break
            lines.extend(up.stdout)
            code = up.wait(30)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and cluster_processes(name):
                time.sleep(0.05)
            survivors = cluster_processes(name)
    finally:
        for pid in cluster_processes(name):
            os.kill(pid, signal.SIGKILL)
    text = "".join(lines)
    assert "memring up: stopping" in text, text
    assert text.count("memring up: backend") < 12, text  # the start was cut short
    assert code == 0, text
    assert survivors == [], f"left behind: {survivors}\n{text}"
