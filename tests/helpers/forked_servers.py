"""Python servers forked from one helper that has imported them (memring.cluster.fork_server,
the way `memring up` starts its servers), for test modules that start hundreds of them.

`python -m memring.backend` spends ~0.3 s of CPU importing trio and memring before it serves;
a fork from the helper costs milliseconds. The forked process is the same server: the same
argv, run by the same `main()`. This process adopts it (it is a child subreaper while the
helper runs), so waitpid gives its exit status as for a spawned one; `ForkedServerProcess`
puts Popen's face on it.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import trio

from memring.cluster.fork_server import MAINS, ForkedProcess, ForkServer

WAIT_POLL = 0.005  # seconds between two waitpid(WNOHANG) in wait()


class ForkedServerProcess:
    """What tests do with a server's Popen, on a forked server: poll, wait, signals."""

    def __init__(self, forked: ForkedProcess) -> None:
        self._forked = forked

    @property
    def pid(self) -> int:
        return self._forked.pid

    @property
    def returncode(self) -> int | None:
        return self._forked.returncode

    def poll(self) -> int | None:
        return self._forked.poll()

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self._forked.poll()) is None:  # bounded by the deadline, if any
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(WAIT_POLL)
        return code

    def send_signal(self, signum: int) -> None:
        self._forked._signal(signum)

    def terminate(self) -> None:
        self._forked.terminate()

    def kill(self) -> None:
        self._forked.kill()


class ServerForker:
    """The helper, shared by threads (one request at a time)."""

    def __init__(self, helper: ForkServer) -> None:
        self._helper = helper
        self._lock = threading.Lock()

    @staticmethod
    def forks(argv: Sequence[str]) -> bool:
        """Whether `argv` is a server the helper can fork (`python -m memring.backend ...`)."""
        return list(argv[:2]) == [sys.executable, "-m"] and len(argv) > 2 and argv[2] in MAINS

    def start(self, argv: Sequence[str], log_path: Path) -> ForkedServerProcess:
        with self._lock:
            forked = trio.run(self._helper.fork, list(argv), log_path)
        return ForkedServerProcess(forked)


@contextlib.contextmanager
def server_forker(log_dir: Path) -> Iterator[ServerForker | None]:
    """The helper while the block runs; None where this process cannot adopt what it forks
    (then servers are spawned as usual)."""
    helper = ForkServer.start(log_dir / "fork-server.log", None)
    if helper is None:
        yield None
        return
    try:
        trio.run(helper.ready)
        yield ServerForker(helper)
    finally:
        helper.close()
