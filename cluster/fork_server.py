"""The fork server: `memring up` pays the servers' imports once, not once per server.

Theory of operation. Every backend and proxy is a Python interpreter that spends ~0.28 s of
CPU importing trio, grpc, etcd3's protobufs and memring before it does anything; 48 of them
at 24 x 2 make start-up CPU-bound. `ForkServer.start()` spawns one helper (`python -m
memring.cluster.fork_server`) that imports those modules and nothing more: no gRPC channel,
no trio run, no thread (gRPC's fork rules: a process may fork after `import grpc` as long as
gRPC was never initialised; a test checks the helper has one thread). Then, for each server,
the launcher writes a request (the argv it would have exec'd, its log file) on the helper's
stdin and the helper forks twice: the middle process exits at once, so the server is
re-parented to the launcher, which is a child subreaper (PR_SET_CHILD_SUBREAPER) while the
helper runs (an adopted server stays its child after that; other orphans of its descendants
go to init again, as they did before). The launcher thus supervises a forked server as it does a spawned one
(`ForkedProcess`: waitpid, its exit status, SIGTERM/SIGKILL to a pid that cannot be reused
before the launcher reaps it). The server then sets PR_SET_PDEATHSIG itself, once its parent
is the launcher, and runs the server's `main()` as `python -m` would have, in its own process
group, with stdout and stderr on its log file. The pages the helper wrote before the fork are
shared copy-on-write by every server.

The helper answers one request at a time on stdout: a JSON line with the pid, or with the
error. It exits when its stdin closes (the launcher closes it once every server is started),
or on SIGTERM, which it gets if the launcher dies (PR_SET_PDEATHSIG, as every child). If it
cannot start, the launcher spawns each server itself, as before.

Forked servers share the helper's hash seed (PYTHONHASHSEED): str hashes are the same in
every server of one `memring up`; `random` reseeds itself after a fork, OpenSSL too.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Protocol

import trio

# what a server's `python -m MODULE` runs: MODULE's __main__ calls this function with its argv
MAINS = {"memring.backend": "memring.backend.cli", "memring.proxy": "memring.proxy.cli"}
# imported by the helper before it forks: the servers' modules, and the etcd client the
# backends import only in cluster mode (grpc, etcd3)
PRELOAD = (*MAINS.values(), "memring.cluster.etcd_coordinator")
READY = b"ready\n"
READY_TIMEOUT = 20.0  # the helper's imports (~0.3 s of CPU; a loaded machine stretches it)
FORK_TIMEOUT = 10.0  # one request answered (two forks)
REPARENT_WAIT = 5.0  # the server waits this long for the launcher to become its parent
MAX_LINE = 1 << 20  # a request or a reply (an argv of a few hundred bytes)
# room for a server's command line in the helper's: its last argument, blanked at start
TITLE_ROOM = 4096
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


class ForkServerError(RuntimeError):
    """The helper did not answer, or could not fork (the message says why)."""


class ChildProcess(Protocol):
    """What the launcher supervises: a `subprocess.Popen`, or a `ForkedProcess`."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class ForkedProcess:
    """A server the helper forked and the launcher adopted (its subreaper): Popen's poll,
    terminate and kill, on a pid only this process reaps."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere (as Popen says then: 0)
                self.returncode = 0
            else:
                if pid == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def _signal(self, signum: int) -> None:
        if self.poll() is None:  # not reaped yet: the pid is still this process's
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)


def _prctl(option: int, value: int) -> bool:
    try:
        return int(ctypes.CDLL(None, use_errno=True).prctl(
            option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0),
            ctypes.c_ulong(0))) == 0
    except (OSError, AttributeError):
        return False


class ForkServer:
    """The launcher's end of the helper; every call from the trio thread."""

    def __init__(self, process: subprocess.Popen[bytes], subreaper_set: bool) -> None:
        self.process = process
        self._subreaper_set = subreaper_set  # by us: cleared by close()
        assert process.stdin is not None and process.stdout is not None
        self._requests = process.stdin
        self._replies = process.stdout.fileno()
        self._pending = b""

    @classmethod
    def start(cls, log_path: Path, preexec_fn: Any) -> ForkServer | None:
        """Spawn the helper (None if this process cannot adopt what it forks); then
        `await ready()`. `preexec_fn` runs in the helper before exec (PR_SET_PDEATHSIG)."""
        was = ctypes.c_int(0)
        if not _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.addressof(was)):
            return None
        if not was.value and not _prctl(_PR_SET_CHILD_SUBREAPER, 1):
            return None
        try:
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "memring.cluster.fork_server", str(os.getpid()),
                     "." * TITLE_ROOM],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                    process_group=0, preexec_fn=preexec_fn)
        except BaseException:
            if not was.value:
                _prctl(_PR_SET_CHILD_SUBREAPER, 0)
            raise
        return cls(process, subreaper_set=not was.value)

    async def _read_line(self, timeout: float) -> bytes:
        with trio.move_on_after(timeout):
            while b"\n" not in self._pending:  # bounded: MAX_LINE bytes
                if len(self._pending) > MAX_LINE:
                    raise ForkServerError("the fork server's reply is too long")
                await trio.lowlevel.wait_readable(self._replies)
                chunk = os.read(self._replies, 65536)
                if not chunk:
                    raise ForkServerError(f"the fork server exited (code "
                                          f"{self.process.wait()})")
                self._pending += chunk
            line, _, self._pending = self._pending.partition(b"\n")
            return line + b"\n"
        raise ForkServerError(f"the fork server did not answer within {timeout:g}s")

    async def ready(self) -> None:
        """Until the helper has imported the servers' modules; ForkServerError if not."""
        line = await self._read_line(READY_TIMEOUT)
        if line != READY:
            raise ForkServerError(f"the fork server said {line!r}")

    async def fork(self, argv: list[str], log_path: Path) -> ForkedProcess:
        """Start the server `argv` (`python -m memring.backend ...`) with its output on
        `log_path`; ForkServerError if the helper could not."""
        request = json.dumps({"argv": argv, "log": str(log_path)}).encode() + b"\n"
        try:
            self._requests.write(request)
            self._requests.flush()
        except OSError as exc:
            raise ForkServerError(f"the fork server is gone: {exc}") from None
        reply = json.loads(await self._read_line(FORK_TIMEOUT))
        if "pid" not in reply:
            raise ForkServerError(str(reply.get("error", reply)))
        return ForkedProcess(int(reply["pid"]))

    def close(self) -> None:
        """No more requests: the helper exits; reaped here (it exits within milliseconds;
        SIGKILL if it does not within a second)."""
        with contextlib.suppress(OSError):
            self._requests.close()
        try:
            self.process.wait(1.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self._subreaper_set:  # every server it forked has been adopted (or never will be)
            self._subreaper_set = False
            _prctl(_PR_SET_CHILD_SUBREAPER, 0)


# --- the helper ---------------------------------------------------------------------------


def set_command_line(argv: list[str]) -> None:
    """What /proc/PID/cmdline (ps, pgrep -f) shows for this process: `argv`, written over
    the original in the process's memory (its length is the helper's, TITLE_ROOM included;
    a longer one is cut). Left as it was where /proc/self/mem is not writable."""
    try:
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(stat[45]), int(stat[46])  # arg_start, arg_end: proc(5) 48, 49
        text = b"\0".join(os.fsencode(arg) for arg in argv)[:end - start - 1]
        with open("/proc/self/mem", "r+b", buffering=0) as memory:
            memory.seek(start)
            memory.write(text.ljust(end - start, b"\0"))
    except (OSError, IndexError, ValueError):
        pass


def _run_server(argv: list[str], log_path: str, launcher: int) -> int:
    """In the forked server: what `argv` (`python -m MODULE ARGS`) would have run."""
    os.setpgid(0, 0)  # its own process group, as the launcher's spawned children
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.closerange(3, 1 << 16)  # the helper's pipes and the log's first fd; no others exist
    set_command_line(argv)  # as if spawned: `ps`, and tests that scan command lines
    # the launcher adopts this process once the middle one has exited (its answer waits
    # for that); then SIGTERM when the launcher dies, as for a child it spawned
    for _ in range(int(REPARENT_WAIT / 0.001)):
        if os.getppid() == launcher:
            break
        time.sleep(0.001)
    if not _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) or os.getppid() != launcher:
        return 1  # the launcher is gone (or never adopted it)
    module = argv[argv.index("-m") + 1]
    main = importlib.import_module(MAINS[module]).main
    sys.argv = [str(Path(sys.modules[module].__file__ or module).parent / "__main__.py"),
                *argv[argv.index("-m") + 2:]]
    try:
        return int(main(sys.argv[1:]))
    except SystemExit as exc:
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # as the interpreter would: the traceback on stderr, code 1
        traceback.print_exc()
        return 1


def _fork(request: dict[str, Any], launcher: int) -> int:
    """Fork the server of `request` through a middle process; its pid, once it is the
    launcher's child."""
    argv, log_path = request["argv"], request["log"]
    if not isinstance(argv, list) or argv[argv.index("-m") + 1] not in MAINS:
        raise ValueError(f"not a server this helper forks: {argv!r}")
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:  # the middle process
        os.close(read_end)
        server = os.fork()
        if server == 0:
            code = 1
            try:
                code = _run_server(argv, str(log_path), launcher)
            finally:
                # a normal exit: atexit (logging's flush among them), then the streams
                with contextlib.suppress(BaseException):
                    atexit._run_exitfuncs()
                    logging.shutdown()
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        os.write(write_end, str(server).encode())
        os._exit(0)
    os.close(write_end)
    try:
        answer = os.read(read_end, 64)
    finally:
        os.close(read_end)
        os.waitpid(middle, 0)  # the server has been re-parented once this returns
    if not answer:
        raise OSError("the middle process could not fork")
    return int(answer)


def serve(launcher: int) -> int:
    """The helper: import, say ready, fork one server per request until stdin closes."""
    set_command_line(sys.orig_argv[:-1])  # TITLE_ROOM's dots, blanked
    for module in PRELOAD:
        importlib.import_module(module)
    replies = sys.stdout.buffer
    replies.write(READY)
    replies.flush()
    requests = sys.stdin.buffer
    while True:  # bounded by the launcher's requests: it closes stdin after the last
        line = requests.readline(MAX_LINE)
        if not line:
            return 0
        try:
            reply: dict[str, Any] = {"pid": _fork(json.loads(line), launcher)}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            reply = {"error": f"cannot fork: {exc}"}
        replies.write(json.dumps(reply).encode() + b"\n")
        replies.flush()


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1])))
