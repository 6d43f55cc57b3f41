"""The processes a benchmark starts: free ports, pinning, start-and-wait, CPU from /proc, stop.

Every benchmark script starts real servers (memcached, nutcracker, memring's backends and
proxies, `memring up`) on free loopback ports, waits until each answers, reads the CPU they
use from /proc, and must stop all of them at the end, also on Ctrl-C, SIGTERM, an error, or
its own SIGKILL (PR_SET_PDEATHSIG in the child). Those steps live here once, so a script
only says what it runs and measures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from loadgen import LoadError

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 20.0
T = TypeVar("T")


class BenchError(RuntimeError):
    """The benchmark cannot run; the message says what went wrong and what to do."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pinned(cpu: int | str | None) -> list[str]:
    """`taskset -c CPU` to put in front of a command (a list such as "0,1" too; nothing for
    None: the command inherits this process's CPUs)."""
    if cpu is None:
        return []
    if shutil.which("taskset") is None:
        raise BenchError("taskset is missing: install it with `apt-get install util-linux`")
    return ["taskset", "-c", str(cpu)]


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User+system CPU one process (all its threads) has used so far, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _clock_ticks()


def group_cpu_seconds(pgid: int) -> float:
    """CPU used by every live process in a process group, plus its leader's reaped children."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
            if int(entry) == pgid:
                total += int(fields[13]) + int(fields[14])
    return total / _clock_ticks()


@dataclass
class Server:
    """A process a benchmark started, and what is needed to stop and report it."""

    name: str
    argv: list[str]
    port: int
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    version: str = ""

    def cpu_seconds(self) -> float:
        """User+system CPU the process has used so far, from /proc (all its threads)."""
        return process_cpu_seconds(self.process.pid)

    def log_tail(self, limit: int = 2000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-limit:].strip()


def ask_version(port: int) -> str | None:
    """The server's `version` reply, or None while it does not answer yet."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as s:
            s.sendall(b"version\r\n")
            reply = s.recv(128)
    except OSError:
        return None
    if reply.startswith(b"VERSION ") and reply.endswith(b"\r\n"):
        return reply[8:-2].decode(errors="replace")
    return None


def _pdeathsig() -> None:
    """In the child before exec: get SIGKILLed if this script dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def stop(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Terminate, then kill if it does not exit within `grace` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(grace)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_group(server: Server, grace: float = 5.0) -> None:
    """Terminate then kill the process, then whatever it forked (its own process group)."""
    stop(server.process, grace)
    pgid = server.process.pid  # started with start_new_session: it leads its own group
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not group_alive(pgid):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + grace
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)


@contextlib.contextmanager
def spawned(name: str, argv: list[str], port: int, probe: Callable[[int], T | None],
            awaited: str, timeout: float = STARTUP_TIMEOUT, cwd: Path = REPO
            ) -> Iterator[tuple[Server, T]]:
    """Start `argv` in `cwd`, poll `probe(port)` until it gives a value, stop the process on
    exit."""
    with tempfile.TemporaryFile() as log:
        try:
            # A new session keeps the terminal's Ctrl-C away from the server; we stop it.
            process = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, preexec_fn=_pdeathsig,
                                       start_new_session=True)
        except OSError as e:
            raise BenchError(f"cannot start {name} ({' '.join(argv)}): {e}") from e
        server = Server(name, argv, port, process, log)
        try:
            deadline = time.monotonic() + timeout
            while (answer := probe(port)) is None:
                if process.poll() is not None:
                    raise BenchError(f"{name} exited with status {process.returncode} at "
                                     f"startup ({' '.join(argv)}):\n{server.log_tail()}")
                if time.monotonic() > deadline:
                    raise BenchError(f"{name} did not answer {awaited} on port {port} within "
                                     f"{timeout:.0f}s ({' '.join(argv)}):\n"
                                     f"{server.log_tail()}")
                time.sleep(0.05)
            yield server, answer
        finally:
            stop(process)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_until_done(run: Callable[[argparse.Namespace], int], args: argparse.Namespace,
                   stopped: str = "servers stopped") -> int:
    """Run a benchmark so that SIGTERM/SIGHUP stop it like Ctrl-C (its finally blocks stop
    every process it started) and its errors print one line instead of a traceback."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    try:
        return run(args)
    except (BenchError, LoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; {stopped}", file=sys.stderr)
        return 130
