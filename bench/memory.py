"""Memory per item: fill `memcached -t 1` and a memring backend with the same items, compare RSS.

Issue 17's measurement. For each value size, each server is started fresh on a free loopback
port, its idle RSS read from /proc/PID/status (VmRSS), then it is filled over one connection
with pipelined `set ... noreply` in bounded batches (each batch ends with a meta no-op `mn`
whose `MN` reply is awaited, so neither side buffers more than one batch). Then `stats` gives
items kept (`curr_items`) and `bytes`, RSS is read again, then `flush_all`, and RSS once more
at once and after a short wait: does the process give memory back? The full-cache case offers
more 100-byte items than `-m 128` / `--memory 128` holds and compares the RSS above idle with
the 1.25 x 128 MB target. Servers run one at a time and are always stopped (also on Ctrl-C).

    .venv/bin/python bench/memory.py                  # full run, ~3 min
    .venv/bin/python bench/memory.py --quick          # a tenth of the items, -m 16, ~40 s
    .venv/bin/python bench/memory.py --json /tmp/memory.json
    .venv/bin/python bench/memory.py --case 'full -m 128' --servers memring
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
BATCH = 1000  # sets per pipelined batch, then one `mn` round trip
STARTUP_TIMEOUT = 20.0
REPLY_TIMEOUT = 60.0  # longest wait for one reply (a batch's MN, stats, flush_all)
FILL_TIMEOUT = 300.0  # longest fill of one server
FLUSH_WAIT = 3.0  # seconds after flush_all before the last RSS reading
TARGET_FACTOR = 1.25  # issue 17: full-cache RSS above idle <= 1.25 x --memory

# (name, value bytes, items offered, memory MB) for the full and the --quick run. The no-eviction
# cases use 2048 MB so nothing is evicted; the last case overflows 128 MB with 100-byte items.
FULL_CASES = (
    ("10 B", 10, 1_000_000, 2048),
    ("100 B", 100, 1_000_000, 2048),
    ("1 KB", 1_000, 300_000, 2048),
    ("10 KB", 10_000, 50_000, 2048),
    ("full -m 128", 100, 2_000_000, 128),
)
QUICK_CASES = (
    ("10 B", 10, 100_000, 2048),
    ("100 B", 100, 100_000, 2048),
    ("1 KB", 1_000, 30_000, 2048),
    ("10 KB", 10_000, 5_000, 2048),
    ("full -m 16", 100, 250_000, 16),
)
KINDS = ("memcached", "memring")


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


@dataclass
class Measurement:
    """One server filled with one case's items: what it kept and what it cost."""

    case: str
    server: str
    value_size: int
    memory_mb: int
    offered: int
    kept: int
    bytes: int
    evictions: int
    idle_rss: int
    full_rss: int
    flushed_rss: int
    flushed_later_rss: int
    fill_seconds: float
    store_bytes: int  # memring's own figure (stats memring_store_bytes), what --memory bounds
    load: float  # 1-minute load average when the cache was full (the machine is shared)

    @property
    def rss_per_item(self) -> float:
        return (self.full_rss - self.idle_rss) / self.kept if self.kept else 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def server_argv(kind: str, port: int, memory_mb: int) -> list[str]:
    """memcached as issue 17 ran it (`-t 1`), or the backend with the same limit."""
    if kind == "memcached":
        binary = shutil.which("memcached")
        if binary is None:
            raise BenchError("memcached is not installed: `make debian-deps` as root")
        # memcached refuses to run as root without -u; -u root (as backend_vs_memcached.py)
        # keeps the parent-death signal, which switching to another user would clear
        user = ["-u", "root"] if os.geteuid() == 0 else []
        return [binary, "-t", "1", "-p", str(port), "-U", "0", "-l", HOST, *user,
                "-m", str(memory_mb)]
    return [sys.executable, "-m", "memring.backend", "--listen", f"{HOST}:{port}",
            "--memory", str(memory_mb), "--log-level", "warning"]


def _pdeathsig() -> None:
    """In the child before exec: get SIGKILLed if this script dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def rss_bytes(pid: int) -> int:
    """The process's resident set (VmRSS) now."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


@contextlib.contextmanager
def running(kind: str, memory_mb: int) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A fresh server on a free port, ready to answer; stopped when the block ends."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(server_argv(kind, port, memory_mb), cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=_pdeathsig)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                raise BenchError(f"{kind} exited at start with status {process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5) as s:
                s.sendall(b"version\r\n")
                if s.recv(64).startswith(b"VERSION "):
                    break
            if time.monotonic() > deadline:
                raise BenchError(f"{kind} did not answer within {STARTUP_TIMEOUT:.0f} s")
            time.sleep(0.05)
        yield process, port
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def read_until(sock: socket.socket, end: bytes) -> bytes:
    """Read replies until they end with `end` (bounded by REPLY_TIMEOUT and 1 MiB)."""
    sock.settimeout(REPLY_TIMEOUT)
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError(f"connection closed while waiting for {end!r}")
        data += chunk
        if len(data) > MB:
            raise BenchError(f"unexpected reply: {data[:200]!r}")
    return data


def fill(sock: socket.socket, value_size: int, count: int, label: str) -> float:
    """Offer `count` items in pipelined noreply batches; seconds it took."""
    value = b"v" * value_size
    started = time.monotonic()
    next_report = started + 2.0
    for first in range(0, count, BATCH):
        batch = b"".join(b"set k%012d 0 0 %d noreply\r\n%s\r\n" % (i, value_size, value)
                         for i in range(first, min(first + BATCH, count)))
        sock.sendall(batch + b"mn\r\n")
        reply = read_until(sock, b"MN\r\n")
        if reply != b"MN\r\n":
            raise BenchError(f"{label}: a noreply set answered: {reply[:200]!r}")
        now = time.monotonic()
        if now - started > FILL_TIMEOUT:
            raise BenchError(f"{label}: fill took over {FILL_TIMEOUT:.0f} s")
        if now >= next_report:
            print(f"  {label}: {first + BATCH:,}/{count:,} offered", file=sys.stderr)
            next_report = now + 2.0
    return time.monotonic() - started


def stats(sock: socket.socket) -> dict[str, str]:
    sock.sendall(b"stats\r\n")
    lines = read_until(sock, b"END\r\n").decode().split("\r\n")
    return {p[1]: p[2] for p in (line.split(" ", 2) for line in lines) if len(p) == 3}


def measure(kind: str, case: str, value_size: int, count: int, memory_mb: int,
            flush_wait: float = FLUSH_WAIT) -> Measurement:
    label = f"{case} {kind}"
    print(f"{label}: starting (-m {memory_mb}, {count:,} items of {value_size} B)",
          file=sys.stderr)
    with running(kind, memory_mb) as (process, port):
        time.sleep(0.5)  # let start-up settle before the idle reading
        idle = rss_bytes(process.pid)
        with socket.create_connection((HOST, port), 5.0) as sock:
            seconds = fill(sock, value_size, count, label)
            figures = stats(sock)
            full = rss_bytes(process.pid)
            load = os.getloadavg()[0]
            sock.sendall(b"flush_all\r\n")
            if read_until(sock, b"\r\n") != b"OK\r\n":
                raise BenchError(f"{label}: flush_all did not answer OK")
            flushed = rss_bytes(process.pid)
            time.sleep(flush_wait)
            later = rss_bytes(process.pid)
    return Measurement(case, kind, value_size, memory_mb, count, int(figures["curr_items"]),
                       int(figures["bytes"]), int(figures.get("evictions", 0)), idle, full,
                       flushed, later, seconds, int(figures.get("memring_store_bytes", 0)), load)


def mb(n: float) -> str:
    return f"{n / MB:,.1f}"


def table(results: list[Measurement]) -> str:
    """The results as markdown, memring beside memcached for each case."""
    rows = ["| case | server | offered | kept | `bytes` | idle RSS MB | full RSS MB "
            "| RSS/item B | ratio | fill s | after flush_all MB | +3 s MB | load |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by_case: dict[str, dict[str, Measurement]] = {}
    for m in results:
        by_case.setdefault(m.case, {})[m.server] = m
    for case, pair in by_case.items():
        base = pair.get("memcached")
        for m in (pair[kind] for kind in KINDS if kind in pair):
            ratio = ""
            if m.server == "memring" and base is not None and base.rss_per_item:
                ratio = f"**{m.rss_per_item / base.rss_per_item:.2f}x**"
            rows.append(f"| {case} | {m.server} | {m.offered:,} | {m.kept:,} | {m.bytes:,} "
                        f"| {mb(m.idle_rss)} | {mb(m.full_rss)} | {m.rss_per_item:,.0f} "
                        f"| {ratio} | {m.fill_seconds:.1f} | {mb(m.flushed_rss)} "
                        f"| {mb(m.flushed_later_rss)} | {m.load:.1f} |")
    return "\n".join(rows)


def full_cache_verdicts(results: list[Measurement]) -> list[str]:
    """For each eviction case: RSS above idle against the 1.25 x limit target."""
    lines = []
    for m in results:
        if m.evictions == 0 and m.kept == m.offered:
            continue
        above = m.full_rss - m.idle_rss
        target = TARGET_FACTOR * m.memory_mb * MB
        verdict = "within" if above <= target else "OVER"
        lines.append(f"{m.case} {m.server}: RSS above idle {mb(above)} MB = "
                     f"{above / (m.memory_mb * MB):.2f}x the {m.memory_mb} MB limit, {verdict} "
                     f"the {TARGET_FACTOR} x target ({mb(target)} MB); "
                     f"evictions {m.evictions:,}"
                     + (f"; memring_store_bytes {mb(m.store_bytes)} MB" if m.store_bytes else ""))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="a tenth of the items, -m 16 (~40 s)")
    parser.add_argument("--servers", default=",".join(KINDS),
                        help="comma-separated: memcached, memring (default both)")
    parser.add_argument("--json", metavar="FILE", help="write every figure and the table here")
    parser.add_argument("--case", action="append", metavar="NAME",
                        help="run only this case (repeatable), e.g. --case 'full -m 128'")
    args = parser.parse_args()
    kinds = [k for k in args.servers.split(",") if k]
    if unknown := set(kinds) - set(KINDS):
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the `finally` blocks
    results: list[Measurement] = []
    try:
        for case, value_size, count, memory_mb in QUICK_CASES if args.quick else FULL_CASES:
            if args.case and case not in args.case:
                continue
            for kind in kinds:
                results.append(measure(kind, case, value_size, count, memory_mb))
    except BenchError as error:
        print(f"memory bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    markdown = table(results)
    verdicts = full_cache_verdicts(results)
    print(markdown)
    print()
    print("RSS/item = (full RSS - idle RSS) / items kept; ratio = memring / memcached.")
    for line in verdicts:
        print(line)
    if args.json:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        Path(args.json).write_text(json.dumps({
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "commit": commit, "python": platform.python_version(), "quick": args.quick,
            "results": [{**asdict(m), "rss_per_item": m.rss_per_item} for m in results],
            "full_cache": verdicts, "markdown": markdown,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
