"""A closed-loop memcached text-protocol load generator with exact latency percentiles.

Several processes split the connections; each drives its connections with one request
in flight per connection (like a real client, no pipelining) over raw non-blocking
sockets and epoll, and records every request's latency with `time.perf_counter_ns`,
so the percentiles are computed from all samples rather than estimated from buckets.
With `--multiget N` each get asks for N distinct random keys at once (`get k1 ... kN`);
a request still counts as one op, and `keys_per_s` says how many keys that moved.

With `--tls-ca` (and `--tls-cert`/`--tls-key` for a server that requires a client
certificate) every connection is TLS (the standard library's `ssl`, the same epoll loop):
the load then spends CPU on TLS too, which its `load cpu` figure shows.

Used by `backend_vs_memcached.py`; it can also be run on its own against a server that
is already running:

    python bench/loadgen.py --port 11211 --duration 5
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import math
import multiprocessing as mp
import os
import random
import select
import signal
import socket
import ssl
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

END = b"END\r\n"
STORED = b"STORED\r\n"
ERROR_PREFIXES = (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")
KEY_FORMAT = "bench:%08d"
PRELOAD_BATCH = 200
# The request schedule is precomputed per process and replayed in a loop, so the hot
# loop does no random draws; bound its memory when values are large.
SCHEDULE_MAX = 1 << 16
SCHEDULE_BYTES = 64 << 20


class LoadError(RuntimeError):
    """The load could not be run; the message says what went wrong and what to do."""


@dataclass(frozen=True)
class LoadSpec:
    """What load to apply; the defaults are the issue's: 50 conns, 90% get, 100-byte values."""

    connections: int = 50
    get_ratio: float = 0.9
    value_size: int = 100
    keys: int = 10_000
    duration: float = 10.0
    warmup: float = 2.0
    processes: int = 2
    cpu: int | None = 1
    seed: int = 1
    multiget: int = 1
    tls_ca: str = ""    # TLS to the server, verified against this CA ("" = plain TCP)
    tls_cert: str = ""  # the load's client certificate, for servers that require one
    tls_key: str = ""
    auth: bytes = b""  # memcached's ASCII auth set, sent first on every connection ("": none)

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls_ca:
            return None
        context = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            context.load_cert_chain(self.tls_cert, self.tls_key or None)
        return context

    @property
    def keys_per_op(self) -> float:
        """Keys each request names on average: a get names `multiget`, a set one."""
        return self.get_ratio * self.multiget + (1.0 - self.get_ratio)

    def check(self) -> None:
        """Reject nonsense early, with a message saying which flag to fix."""
        if self.connections < 1:
            raise LoadError("--connections must be at least 1")
        if not 1 <= self.processes <= self.connections:
            raise LoadError("--processes must be between 1 and --connections")
        if not 0.0 <= self.get_ratio <= 1.0:
            raise LoadError("--get-ratio must be between 0 and 1")
        if not 1 <= self.value_size <= 1 << 20:
            raise LoadError("--value-size must be between 1 and 1048576 bytes")
        if self.keys < 1:
            raise LoadError("--keys must be at least 1")
        if self.duration <= 0 or self.warmup < 0:
            raise LoadError("--duration must be > 0 and --warmup >= 0")
        if not 1 <= self.multiget <= min(100, self.keys):
            raise LoadError("--multiget must be between 1 and min(100, --keys)")


@dataclass
class LoadResult:
    """Everything measured in the window after the warmup; latencies are sorted, in ns."""

    label: str
    spec: LoadSpec
    window_s: float
    latencies_ns: list[int] = field(repr=False)
    misses: int = 0
    errors: int = 0
    stuck: int = 0
    error_sample: bytes = b""
    load_cpu_s: float = 0.0
    server_cpu_s: float | None = None

    @property
    def ops(self) -> int:
        return len(self.latencies_ns)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.window_s if self.window_s > 0 else 0.0

    def percentile_us(self, p: float) -> float:
        """Nearest-rank percentile over all samples, in microseconds (exact, no buckets)."""
        n = len(self.latencies_ns)
        if n == 0:
            return math.nan
        rank = min(n, max(1, math.ceil(p / 100.0 * n)))
        return self.latencies_ns[rank - 1] / 1000.0

    def summary(self) -> dict[str, Any]:
        """The figures worth keeping (for the table and --json), without the raw samples."""
        out: dict[str, Any] = {
            "ops": self.ops,
            "window_s": round(self.window_s, 3),
            "ops_per_s": round(self.ops_per_s, 1),
            "p50_us": self.percentile_us(50),
            "p99_us": self.percentile_us(99),
            "p999_us": self.percentile_us(99.9),
            "max_us": self.latencies_ns[-1] / 1000.0 if self.latencies_ns else math.nan,
            "misses": self.misses,
            "errors": self.errors,
            "stuck": self.stuck,
            "load_cpu_pct": round(100.0 * self.load_cpu_s / self.window_s, 1),
        }
        if self.spec.multiget > 1:
            out["keys_per_s"] = round(self.ops_per_s * self.spec.keys_per_op, 1)
        if self.server_cpu_s is not None:
            out["server_cpu_pct"] = round(100.0 * self.server_cpu_s / self.window_s, 1)
        return out


def key(i: int) -> bytes:
    return (KEY_FORMAT % i).encode()


def value(size: int) -> bytes:
    """A value that cannot contain `END\\r\\n`, so `endswith` alone frames a get reply."""
    return b"x" * size


def connect(host: str, port: int, spec: LoadSpec, timeout: float) -> socket.socket:
    """A blocking connection to the server, with TLS when the spec asks for it."""
    s = socket.create_connection((host, port), timeout=timeout)
    context = spec.tls_context()
    if context is None:
        return s
    try:
        return context.wrap_socket(s, server_hostname=host)
    except BaseException:
        s.close()
        raise


def authenticate(s: socket.socket, spec: LoadSpec) -> None:
    """Send the spec's auth set on a new blocking connection; it must be answered STORED."""
    if not spec.auth:
        return
    s.sendall(spec.auth)
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = s.recv(256)
        if not chunk:
            break
        reply += chunk
    if reply != STORED:
        raise OSError(f"authentication refused: {reply[:100]!r}")


def preload(host: str, port: int, spec: LoadSpec, timeout: float = 30.0) -> None:
    """Set every key once, pipelined in batches, so the measured gets hit."""
    val = value(spec.value_size)
    try:
        with connect(host, port, spec, timeout) as s:
            authenticate(s, spec)
            for first in range(0, spec.keys, PRELOAD_BATCH):
                last = min(spec.keys, first + PRELOAD_BATCH)
                s.sendall(b"".join(
                    b"set %s 0 0 %d\r\n%s\r\n" % (key(i), len(val), val)
                    for i in range(first, last)))
                want = (last - first) * len(STORED)
                buf = b""
                while len(buf) < want:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise LoadError(f"server {host}:{port} closed the connection "
                                        "during preload; check its log")
                    buf += chunk
                if buf != STORED * (last - first):
                    raise LoadError(f"server {host}:{port} did not store the preload keys "
                                    f"(got {buf[:80]!r}); give it more memory or fewer --keys")
    except OSError as e:
        raise LoadError(f"preload to {host}:{port} failed: {e}; is the server running?") from e


def get_hit_length(spec: LoadSpec) -> int:
    """Length of a get's reply when every key it names hits (all keys are the same length)."""
    item = len(b"VALUE %s 0 %d\r\n" % (key(0), spec.value_size)) + spec.value_size + 2
    return spec.multiget * item + len(END)


def _schedule(spec: LoadSpec, seed: int) -> tuple[list[bytes], list[bytes]]:
    """Precomputed requests and the reply suffix each one ends with, replayed in a loop."""
    per_req = 40 + 16 * (spec.multiget - 1) + (1 - spec.get_ratio) * spec.value_size
    n = SCHEDULE_MAX
    while n > 1024 and n * per_req > SCHEDULE_BYTES:
        n //= 2
    rng = random.Random(seed)
    val = value(spec.value_size)
    reqs: list[bytes] = []
    exps: list[bytes] = []
    for _ in range(n):
        k = key(rng.randrange(spec.keys))
        if rng.random() < spec.get_ratio:
            if spec.multiget > 1:
                k = b" ".join(key(i) for i in rng.sample(range(spec.keys), spec.multiget))
            reqs.append(b"get %s\r\n" % k)
            exps.append(END)
        else:
            reqs.append(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(val), val))
            exps.append(STORED)
    return reqs, exps


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL us if the parent dies, so a killed run leaves no stray process."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _worker(index: int, host: str, port: int, nconns: int, spec: LoadSpec,
            counters: Any, pipe: Connection) -> None:
    """One load process: connect, wait for the common start time, run, send samples back."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler, if forked
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        if spec.cpu is not None:
            os.sched_setaffinity(0, {spec.cpu})
        socks = []
        for _ in range(nconns):
            s = connect(host, port, spec, 10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            authenticate(s, spec)
            s.setblocking(False)
            socks.append(s)
    except OSError as e:
        pipe.send(("error", f"load process {index}: cannot connect to {host}:{port}: {e}"))
        return
    reqs, exps = _schedule(spec, spec.seed * 1_000_003 + index)
    gc.disable()  # no collector pauses inside the measured loop
    pipe.send(("ready", None))
    start_ns = pipe.recv()
    try:
        result = _drive(index, socks, reqs, exps, spec, start_ns, counters)
    except (OSError, LoadError) as e:
        pipe.send(("error", f"load process {index}: {e}"))
        return
    finally:
        for s in socks:
            s.close()
    pipe.send(("done", result))


def _drive(index: int, socks: list[socket.socket], reqs: list[bytes], exps: list[bytes],
           spec: LoadSpec, start_ns: int, counters: Any) -> dict[str, Any]:
    """The hot loop, written for speed: per-fd lists, bound methods, one clock read per poll."""
    clock = time.perf_counter_ns
    warm_ns = start_ns + int(spec.warmup * 1e9)
    end_ns = warm_ns + int(spec.duration * 1e9)
    mask = len(reqs) - 1
    recv_size = max(4096, get_hit_length(spec) + 256)
    # A get reply shorter than a full hit missed at least one key. With single-key gets
    # that is only a bare END (and a STORED is longer), so the common case costs one compare.
    miss_below = len(END) + 1 if spec.multiget == 1 else get_hit_length(spec)
    maxfd = max(s.fileno() for s in socks) + 1
    recvs: list[Any] = [None] * maxfd
    sends: list[Any] = [None] * maxfd
    sockets: list[Any] = [None] * maxfd
    t0s = [0] * maxfd
    expect = [b""] * maxfd
    pending = [b""] * maxfd
    ep = select.epoll()
    for s in socks:
        fd = s.fileno()
        recvs[fd], sends[fd], sockets[fd] = \
            (_tls_recv(s) if isinstance(s, ssl.SSLSocket) else s.recv), s.send, s
        ep.register(fd, select.EPOLLIN)
    poll = ep.poll
    lat = array("q")
    append = lat.append
    misses = errors = done = 0
    error_sample = b""
    cursor = index * 7919 & mask

    while clock() < start_ns:
        time.sleep(min(0.01, max(0.0, (start_ns - clock()) / 1e9)))
    for s in socks:  # one request in flight per connection from here on
        fd = s.fileno()
        req = reqs[cursor]
        expect[fd] = exps[cursor]
        cursor = (cursor + 1) & mask
        t0s[fd] = clock()
        if sends[fd](req) != len(req):
            _send_rest(sockets[fd], req)
    # Load processes sharing a core would otherwise run for whole scheduler slices (ms)
    # while the others' replies wait, which shows up as fake tail latency: yield per batch.
    share_cpu = spec.processes > 1
    sched_yield = os.sched_yield
    cpu0 = None
    while True:
        events = poll(0.05)
        now = clock()
        if now >= end_ns:
            break
        record = now >= warm_ns
        if record and cpu0 is None:
            cpu0 = time.process_time()
        for fd, _ in events:
            data = recvs[fd](recv_size)
            if pending[fd]:
                data = pending[fd] + data
                pending[fd] = b""
            if data.endswith(expect[fd]):
                if len(data) < miss_below and record and expect[fd] is END:
                    misses += 1
            elif not data:
                raise LoadError("the server closed a connection mid-run; check its log")
            elif data.startswith(ERROR_PREFIXES) and data.endswith(b"\r\n"):
                errors += record
                error_sample = error_sample or data[:200]
            else:
                pending[fd] = data  # partial reply; wait for the rest
                continue
            if record:
                append(now - t0s[fd])
            done += 1
            req = reqs[cursor]
            expect[fd] = exps[cursor]
            cursor = (cursor + 1) & mask
            t0s[fd] = clock()
            if sends[fd](req) != len(req):
                _send_rest(sockets[fd], req)
        counters[index] = done
        if share_cpu:
            sched_yield()
    cpu1 = time.process_time()
    counters[index] = done
    # A connection whose request has waited over a second when the window closes, with no
    # reply waiting to be read (so not just this process being descheduled), is stalled: its
    # request never completed, so no latency sample shows it.
    readable = {fd for fd, _ in poll(0)}
    now = clock()
    stuck = sum(1 for s in socks
                if s.fileno() not in readable and now - t0s[s.fileno()] > 1_000_000_000)
    ep.close()
    return {
        "latencies": lat.tobytes(),
        "misses": misses,
        "errors": errors,
        "stuck": stuck,
        "error_sample": error_sample,
        "cpu_s": cpu1 - cpu0 if cpu0 is not None else 0.0,
    }


def _tls_recv(sock: ssl.SSLSocket) -> Callable[[int], bytes]:
    """recv for a TLS connection: all the plaintext there is (a readable socket may hold
    only part of a record: then wait for the rest, briefly blocking this process)."""
    def recv(size: int) -> bytes:
        while True:
            try:
                data = sock.recv(size)
                break
            except ssl.SSLWantReadError:
                select.select([sock], [], [], 1.0)
        while sock.pending():
            data += sock.recv(size)
        return data

    return recv


def _send_rest(sock: socket.socket, req: bytes) -> None:
    """Finish a partial send (only large values): block briefly rather than track state."""
    sent = sock.send(req)
    sock.setblocking(True)
    try:
        sock.sendall(req[sent:])
    finally:
        sock.setblocking(False)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


Progress = Callable[[str], None]


def run_load(host: str, port: int, spec: LoadSpec, label: str = "",
             progress: Progress | None = None,
             server_cpu: Callable[[], float] | None = None) -> LoadResult:
    """Run `spec` against host:port and return the merged, sorted samples.

    `progress` gets a status line about once a second; `server_cpu` (CPU seconds used by
    the server so far) is sampled at the start and end of the measured window.
    """
    spec.check()
    ctx = mp.get_context("fork")
    counters = ctx.RawArray("q", spec.processes)
    procs: list[Any] = []
    pipes: list[Connection] = []
    finished = False
    try:
        for i, n in enumerate(_split(spec.connections, spec.processes)):
            parent_end, child_end = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(i, host, port, n, spec, counters, child_end),
                            name=f"loadgen-{i}", daemon=True)
            p.start()
            child_end.close()
            procs.append(p)
            pipes.append(parent_end)
        for pipe in pipes:
            _expect(pipe, "ready", timeout=30)
        start_ns = time.perf_counter_ns() + 100_000_000
        for pipe in pipes:
            pipe.send(start_ns)
        srv0 = _watch(spec, label, start_ns, counters, progress, server_cpu)
        results = [_expect(pipe, "done", timeout=30 + spec.warmup + spec.duration)
                   for pipe in pipes]
        srv1 = server_cpu() if server_cpu else None
        finished = True
    finally:
        for p in procs:
            if finished:
                p.join(2)
            if p.is_alive():
                p.terminate()
                p.join(2)
            if p.is_alive():
                p.kill()
                p.join()
    samples = array("q")
    for r in results:
        samples.frombytes(r["latencies"])
    return LoadResult(
        label=label, spec=spec, window_s=spec.duration,
        latencies_ns=sorted(samples),
        misses=sum(r["misses"] for r in results),
        errors=sum(r["errors"] for r in results),
        stuck=sum(r["stuck"] for r in results),
        error_sample=next((r["error_sample"] for r in results if r["error_sample"]), b""),
        load_cpu_s=sum(r["cpu_s"] for r in results),
        server_cpu_s=(srv1 - srv0) if srv0 is not None and srv1 is not None else None,
    )


def _expect(pipe: Connection, kind: str, timeout: float) -> Any:
    if not pipe.poll(timeout):
        raise LoadError(f"a load process did not report '{kind}' within {timeout:.0f}s; "
                        "is the server responding?")
    try:
        got, payload = pipe.recv()
    except EOFError as e:
        raise LoadError("a load process died; see the traceback above") from e
    if got == "error":
        raise LoadError(payload)
    return payload


def _watch(spec: LoadSpec, label: str, start_ns: int, counters: Any,
           progress: Progress | None, server_cpu: Callable[[], float] | None) -> float | None:
    """Report progress every second until the run ends; sample server CPU at warmup end."""
    warm_ns = start_ns + int(spec.warmup * 1e9)
    end_ns = warm_ns + int(spec.duration * 1e9)
    total = spec.warmup + spec.duration
    srv0: float | None = None
    sampled = False
    last_ops, last_ns = 0, start_ns
    next_tick = start_ns + 1_000_000_000
    while True:
        now = time.perf_counter_ns()
        if not sampled and now >= warm_ns:
            srv0 = server_cpu() if server_cpu else None
            sampled = True
        if now >= end_ns:
            break
        if now >= next_tick:
            ops = sum(counters)
            rate = (ops - last_ops) * 1e9 / max(1, now - last_ns)
            last_ops, last_ns = ops, now
            phase = "warmup" if now < warm_ns else "measure"
            if progress:
                progress(f"{label}: {phase} {(now - start_ns) / 1e9:5.1f}/{total:.0f}s  "
                         f"{ops:>10,} ops  {rate:>9,.0f} ops/s")
            next_tick += 1_000_000_000
        wake = min(next_tick, end_ns, end_ns if sampled else warm_ns)
        time.sleep(max(0.0, (wake - time.perf_counter_ns()) / 1e9))
    return srv0


class ProgressLine:
    """Status to stderr: overwritten in place with \\r on a tty, one line per update otherwise."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.width = 0

    def __call__(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The load flags shared by this module's CLI and the runner."""
    d = LoadSpec()
    parser.add_argument("--connections", type=int, default=d.connections,
                        help="concurrent connections, one request in flight each (%(default)s)")
    parser.add_argument("--get-ratio", type=float, default=d.get_ratio,
                        help="fraction of requests that are gets; the rest are sets (%(default)s)")
    parser.add_argument("--value-size", type=int, default=d.value_size,
                        help="bytes per value (%(default)s)")
    parser.add_argument("--keys", type=int, default=d.keys,
                        help="key space, preloaded so gets hit (%(default)s)")
    parser.add_argument("--duration", type=float, default=d.duration,
                        help="measured seconds per server per round (%(default)s)")
    parser.add_argument("--warmup", type=float, default=d.warmup,
                        help="seconds of load before measuring, not counted (%(default)s)")
    parser.add_argument("--processes", type=int, default=d.processes,
                        help="load processes splitting the connections (%(default)s)")
    parser.add_argument("--multiget", type=int, default=d.multiget,
                        help="keys per get request (`get k1 ... kN`, distinct random keys); "
                             "1 = single-key gets (%(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed, help=argparse.SUPPRESS)
    parser.add_argument("--tls-ca", default="", metavar="FILE",
                        help="connect over TLS, verifying the server against this CA")
    parser.add_argument("--tls-cert", default="", metavar="FILE",
                        help="client certificate to present over TLS")
    parser.add_argument("--tls-key", default="", metavar="FILE", help="its private key")


def spec_from_args(args: argparse.Namespace, cpu: int | None) -> LoadSpec:
    return LoadSpec(connections=args.connections, get_ratio=args.get_ratio,
                    value_size=args.value_size, keys=args.keys, duration=args.duration,
                    warmup=args.warmup, processes=args.processes, cpu=cpu, seed=args.seed,
                    multiget=getattr(args, "multiget", 1), tls_ca=getattr(args, "tls_ca", ""),
                    tls_cert=getattr(args, "tls_cert", ""), tls_key=getattr(args, "tls_key", ""))


def main(argv: list[str] | None = None) -> int:
    """Load one already-running server and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11211)
    parser.add_argument("--cpu", type=int, default=None,
                        help="pin the load processes to this CPU (default: not pinned)")
    parser.add_argument("--no-preload", action="store_true", help="skip setting every key first")
    add_load_arguments(parser)
    args = parser.parse_args(argv)
    spec = spec_from_args(args, args.cpu)
    line = ProgressLine()
    try:
        spec.check()
        if not args.no_preload:
            preload(args.host, args.port, spec)
        result = run_load(args.host, args.port, spec, f"{args.host}:{args.port}", line)
    except LoadError as e:
        line.clear()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        line.clear()
        print("interrupted", file=sys.stderr)
        return 130
    line.clear()
    for k, v in asdict(spec).items():
        print(f"{k:>12}: {v}")
    for k, v in result.summary().items():
        print(f"{k:>12}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
