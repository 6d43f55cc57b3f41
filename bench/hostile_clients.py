"""Hostile clients against memcached and the memring proxy: peak memory, and whether others wait.

Targets (all on loopback, started here, stopped at the end, also on Ctrl-C or an error):
  memcached   one memcached, direct (the reference: what a drop-in may cost)
  proxy-mc    `python -m memring.proxy` -> 3 x memcached (3 single-node shards)
  proxy-be    `python -m memring.proxy` -> 3 x memring backend
Scenarios, each run against every target while a few well-behaved clients do set/get of
100-byte values (their p99 latency is reported):
  a-repeat    one ~1 MiB `get` line naming 3 keys (one per shard) over and over; the attacker
              reads the whole reply, and its bytes are compared with memcached's
  b-noread    100 clients each pipeline 40 gets of a 100 KB value and never read
  c-halfline  200 clients each send a 1 MB `get` line without its newline, and wait
  d-idle      1,000 clients connect and send nothing (and again with the proxy's
              --idle-timeout, if its --help offers one)
  e-manykeys  32 clients each pipeline 4 `get`s of the same 80 distinct 500 KB items (40 MB
              a reply, split over every shard) and never read (round seven)
For each: the peak RSS of the proxy and of the largest backend (VmRSS polled every 20 ms),
their RSS before and 2 s after the hostile clients closed, and what the hostile clients got.
Every loop is bounded in count and time; the script stops by itself.

    .venv/bin/python bench/hostile_clients.py
    .venv/bin/python bench/hostile_clients.py --scenarios a-repeat,b-noread --hold 3
    .venv/bin/python bench/hostile_clients.py --proxy-args="--max-buffered-bytes 67108864"
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processes import (
    HOST,
    REPO,
    BenchError,
    Server,
    ask_version,
    free_port,
    run_until_done,
    spawned,
)

SHARDS = 3
TARGETS = {
    "memcached": "memcached direct",
    "proxy-mc": "memring proxy -> 3 x memcached",
    "proxy-be": "memring proxy -> 3 x backend",
}
SCENARIOS = ("a-repeat", "b-noread", "c-halfline", "d-idle", "e-manykeys")
SAMPLE_EVERY = 0.02      # seconds between RSS samples
SETTLE = 2.0             # seconds after the hostile clients closed before "after" is read
GOOD_CLIENTS = 4
GOOD_TIMEOUT = 2.0       # a well-behaved request slower than this counts as an error
READ_DEADLINE = 120.0    # the repeated-key reply must be read within this
MiB = 1 << 20


# ---------------------------------------------------------------- processes


@dataclass
class Target:
    name: str
    title: str
    port: int
    proxy: Server | None
    servers: list[Server]
    note: str = ""

    def pids(self) -> list[int]:
        return [s.process.pid for s in ([self.proxy] if self.proxy else []) + self.servers]


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memcached_argv(port: int, memory: int) -> list[str]:
    binary = shutil.which("memcached")
    if binary is None:
        raise BenchError("memcached is not installed: `apt-get install memcached` "
                         "(or `make debian-deps` as root)")
    user = ["-u", "root"] if os.geteuid() == 0 else []
    # Without the LRU crawler and maintainer, which briefly hold items: a get that repeats a
    # key past memcached's 59,999 references (IT_REFCOUNT_LIMIT) then answers the same
    # bytes every time (with them, where the limit bites moves from run to run).
    return [binary, "-t", "1", "-p", str(port), "-U", "0", "-l", HOST, "-c", "8192",
            "-m", str(memory), "-o", "no_lru_crawler,no_lru_maintainer", *user]


def backend_argv(python: str, port: int, memory: int) -> list[str]:
    return [python, "-m", "memring.backend", "--listen", f"{HOST}:{port}",
            "--memory", str(memory), "--max-connections", "8192"]


def proxy_argv(python: str, ports: list[int], port: int, conf: Path, extra: list[str]
               ) -> list[str]:
    conf.write_text("[proxy]\n" + "".join(f'\n[[shards]]\nname = "s{i}"\n'
                                         f'nodes = ["{HOST}:{p}"]\n'
                                         for i, p in enumerate(ports, start=1)))
    return [python, "-m", "memring.proxy", "--listen", f"{HOST}:{port}", "--config", str(conf),
            "--max-connections", "8192", *extra]


def proxy_help(python: str, repo: Path) -> str:
    try:
        done = subprocess.run([python, "-m", "memring.proxy", "--help"], cwd=repo,
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"cannot run the proxy's --help: {e}") from e
    return done.stdout


@contextlib.contextmanager
def started_target(name: str, args: argparse.Namespace, stack: contextlib.ExitStack,
                   tmp: Path, extra: list[str], note: str = "") -> Iterator[Target]:
    def server(kind: str, index: int) -> Server:
        port = free_port()
        argv = (memcached_argv(port, args.memory) if kind == "memcached"
                else backend_argv(args.python, port, args.memory))
        srv, _ = stack.enter_context(spawned(f"{name}-{kind}-{index}", argv, port, ask_version,
                                             "`version`", cwd=args.repo))
        return srv

    if name == "memcached":
        mc = server("memcached", 0)
        yield Target(name, TARGETS[name], mc.port, None, [mc], note)
        return
    kind = "memcached" if name == "proxy-mc" else "backend"
    servers = [server(kind, i) for i in range(SHARDS)]
    port = free_port()
    argv = proxy_argv(args.python, [s.port for s in servers], port,
                      tmp / f"{name}-{len(extra)}.toml", extra)
    proxy, _ = stack.enter_context(spawned(f"{name}-proxy", argv, port, ask_get, "a get",
                                           cwd=args.repo))
    yield Target(name, TARGETS[name], port, proxy, servers, note)


def ask_get(port: int) -> bool | None:
    """True once a get through the proxy answers (its backends are connected)."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as s:
            s.sendall(b"get hostile:probe\r\n")
            return True if s.recv(64) == b"END\r\n" else None
    except OSError:
        return None


# ---------------------------------------------------------------- measuring


class RssSampler(threading.Thread):
    """Polls VmRSS of `pids` until stopped (or `limit` seconds), keeping each one's peak."""

    def __init__(self, pids: list[int], limit: float) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.limit = limit
        self.peak = {pid: rss_kib(pid) for pid in pids}
        self.stopped = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self.stopped.is_set() and time.monotonic() < deadline:
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], rss_kib(pid))
            self.stopped.wait(SAMPLE_EVERY)


@dataclass
class Latencies:
    ops: list[float] = field(default_factory=list)
    errors: int = 0
    causes: dict[str, int] = field(default_factory=dict)  # errors by cause (`error_cause`)

    def failed(self, cause: str) -> None:
        self.errors += 1
        self.causes[cause] = self.causes.get(cause, 0) + 1


class WrongReply(ConnectionError):
    """A reply other than the one expected: `cause` says which kind."""

    def __init__(self, cause: str, data: bytes) -> None:
        super().__init__(f"unexpected reply {data[:80]!r}")
        self.cause = cause


def error_cause(op: str, error: OSError) -> str:
    """A good client's failure by kind: `set-timeout`, `get-SERVER_ERROR`, `get-wrong`
    (a reply that is neither the right one nor an error: a hit answered as a miss), ..."""
    if isinstance(error, WrongReply):
        return f"{op}-{error.cause}"
    if isinstance(error, TimeoutError):
        return f"{op}-timeout"
    return f"{op}-closed"


class WellBehaved(threading.Thread):
    """One client doing set then get of its own 100-byte values until stopped."""

    def __init__(self, port: int, index: int, limit: float) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.index = index
        self.limit = limit
        self.result = Latencies()
        self.stopped = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        value = b"w" * 100
        sock: socket.socket | None = None
        n = 0
        while not self.stopped.is_set() and time.monotonic() < deadline and n < 1_000_000:
            n += 1
            key = b"hostile:good:%d:%d" % (self.index, n % 100)
            try:
                if sock is None:
                    sock = socket.create_connection((HOST, self.port), timeout=GOOD_TIMEOUT)
                op = "set"
                started = time.perf_counter()
                sock.sendall(b"set %s 0 0 100\r\n%s\r\n" % (key, value))
                read_reply(sock, b"STORED\r\n")
                self.result.ops.append(time.perf_counter() - started)
                op = "get"
                started = time.perf_counter()
                sock.sendall(b"get %s\r\n" % key)
                read_reply(sock, b"VALUE %s 0 100\r\n%s\r\nEND\r\n" % (key, value))
                self.result.ops.append(time.perf_counter() - started)
            except OSError as error:
                self.result.failed(error_cause(op, error))
                self.result.ops.append(GOOD_TIMEOUT)
                if sock is not None:
                    sock.close()
                sock = None
                self.stopped.wait(0.05)
            time.sleep(0.002)  # a light load: ~200 requests/s per client
        if sock is not None:
            sock.close()


def read_reply(sock: socket.socket, expected: bytes) -> None:
    """Read `expected`; a reply that departs from it fails at once (a miss's `END` does not
    wait for the rest of a hit), named by `WrongReply.cause`."""
    data = b""
    while len(data) < len(expected):
        chunk = sock.recv(len(expected) - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
        if not expected.startswith(data):
            cause = ("SERVER_ERROR" if data.startswith(b"SERVER_E"[:len(data)]) else
                     "miss" if data.startswith(b"END") else "wrong")
            raise WrongReply(cause, data)


def p99_ms(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


# ---------------------------------------------------------------- the hostile clients


def connect_many(port: int, count: int, deadline: float) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        try:
            s = socket.create_connection((HOST, port), timeout=2.0)
        except OSError:
            break
        s.setblocking(False)
        socks.append(s)
    return socks


def push(socks: list[socket.socket], payload: bytes, deadline: float) -> int:
    """Send `payload` on every socket without blocking, until all sent or `deadline`; the
    number of sockets that sent it all."""
    offsets = dict.fromkeys(range(len(socks)), 0)
    while offsets and time.monotonic() < deadline:
        for i in list(offsets):
            try:
                sent = socks[i].send(payload[offsets[i]: offsets[i] + 65536])
            except BlockingIOError:
                continue
            except OSError:
                del offsets[i]  # the server closed it
                continue
            offsets[i] += sent
        for i in [i for i, off in offsets.items() if off >= len(payload)]:
            del offsets[i]
        if offsets:
            time.sleep(0.002)
    return sum(1 for i in range(len(socks)) if i not in offsets)


def drain_answers(socks: list[socket.socket], limit: int = 4096) -> dict[str, int]:
    """What the server sent the hostile clients (first bytes) and how many it closed."""
    seen: dict[str, int] = {}
    for s in socks:
        try:
            data = s.recv(limit)
            key = ("closed" if not data else
                   data.split(b"\r\n", 1)[0][:60].decode(errors="replace"))
        except BlockingIOError:
            key = "nothing"
        except OSError as e:
            key = f"error {e.errno}"
        seen[key] = seen.get(key, 0) + 1
    return seen


def hold(seconds: float) -> None:
    time.sleep(seconds)


def keys_on_every_shard() -> list[bytes]:
    """One key per shard of the proxies' ring (shards named s1, s2, s3, md5 ketama); the
    direct memcached gets the same names, so the replies can be compared byte for byte."""
    from memring.proxy.ketama import KetamaRing

    ring = KetamaRing([(f"s{i}", 1) for i in range(1, SHARDS + 1)])
    found: dict[int, bytes] = {}
    for i in range(1000):
        found.setdefault(ring.server_for(b"rk%d" % i), b"rk%d" % i)
        if len(found) == SHARDS:
            break
    return [found[index] for index in sorted(found)]


def recv_until(sock: socket.socket, end: bytes, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(end) and time.monotonic() < deadline and len(data) < 8 * MiB:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def set_value(port: int, key: bytes, value: bytes) -> None:
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
        if recv_until(s, b"\r\n", 5.0) != b"STORED\r\n":
            raise BenchError(f"could not store {key!r} on port {port}")


def backend_counters(port: int) -> dict[str, int]:
    """The proxy's backend counters summed over its nodes (`stats`: backend:<node>:cuts,
    resent, errors, timeouts, ...); empty if it does not answer."""
    try:
        with socket.create_connection((HOST, port), timeout=5) as s:
            s.sendall(b"stats\r\n")
            reply = recv_until(s, b"END\r\n", 5.0)
    except OSError:
        return {}
    sums: dict[str, int] = {}
    for line in reply.decode(errors="replace").splitlines():
        words = line.split()
        if len(words) == 3 and words[1].startswith("backend:") and words[2].isdigit():
            name = words[1].rsplit(":", 1)[1]
            sums[name] = sums.get(name, 0) + int(words[2])
    return sums


def scenario_repeat(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    value = bytes(i % 251 for i in range(args.repeat_value))
    keys = keys_on_every_shard()
    for key in keys:
        set_value(target.port, key, value)
    unit = b" " + b" ".join(keys)
    line = b"get" + unit * ((args.line_bytes - 3) // len(unit)) + b"\r\n"
    digest = hashlib.sha256()
    size = 0
    started = time.monotonic()
    with socket.create_connection((HOST, target.port), timeout=10) as s:
        s.sendall(line)
        tail = b""
        s.settimeout(10)
        while time.monotonic() - started < READ_DEADLINE:
            try:
                chunk = s.recv(1 << 20)
            except OSError:
                break
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
            tail = (tail + chunk)[-5:]
            if tail == b"END\r\n" or (size < 64 and chunk.startswith(b"SERVER_ERROR")):
                break
    took = time.monotonic() - started
    return {"line_bytes": len(line), "repeats": line.count(b" "), "reply_bytes": size,
            "reply_sha256": digest.hexdigest()[:16], "read_s": round(took, 2)}


def scenario_noread(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    set_value(target.port, b"hostile:big", b"b" * 100_000)
    return flood(target, args, args.noread_clients, b"get hostile:big\r\n" * 40, 20, 64)


def flood(target: Target, args: argparse.Namespace, clients: int, data: bytes,
          seconds: float, drain: int) -> dict[str, Any]:
    """`clients` connections each send `data` and read nothing for `args.hold` seconds; then
    what they got (the first `drain` bytes of each), and all close."""
    deadline = time.monotonic() + seconds
    socks = connect_many(target.port, clients, deadline)
    try:
        pushed = push(socks, data, deadline)
        hold(args.hold)
        answers = drain_answers(socks, drain)
    finally:
        for s in socks:
            s.close()
    return {"clients": len(socks), "sent_all": pushed, "got": answers}


def scenario_halfline(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    line = b"get" + b" hk" * ((1_000_000 - 3) // 3)  # no newline
    return flood(target, args, args.halfline_clients, line, 30, 128)


def scenario_manykeys(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """A multi-get the proxy splits per shard and assembles before its first byte leaves:
    what the proxy holds for clients that ask for it and never read, against its
    --max-buffered-bytes (256 MB by default)."""
    keys = [b"hostile:many%02d" % i for i in range(80)]
    for key in keys:
        set_value(target.port, key, key[-2:] * 250_000)
    return flood(target, args, args.manykeys_clients, (b"get " + b" ".join(keys) + b"\r\n") * 4,
                 20, 64)


def scenario_idle(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    socks = connect_many(target.port, args.idle_clients, deadline)
    try:
        hold(args.hold + (args.idle_timeout + 1 if "idle-timeout" in target.note else 0))
        answers = drain_answers(socks, 64)
    finally:
        for s in socks:
            s.close()
    return {"clients": len(socks), "got": answers}


SCENARIO_RUNS: dict[str, Callable[[Target, argparse.Namespace], dict[str, Any]]] = {
    "a-repeat": scenario_repeat,
    "b-noread": scenario_noread,
    "c-halfline": scenario_halfline,
    "d-idle": scenario_idle,
    "e-manykeys": scenario_manykeys,
}


def measure(target: Target, scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    pids = target.pids()
    before = {pid: rss_kib(pid) for pid in pids}
    sampler = RssSampler(pids, READ_DEADLINE + 60 + args.hold * 2)
    good = [WellBehaved(target.port, i, READ_DEADLINE + 60 + args.hold * 2)
            for i in range(GOOD_CLIENTS)]
    sampler.start()
    for client in good:
        client.start()
    time.sleep(0.3)  # the well-behaved clients are under way first
    try:
        outcome = SCENARIO_RUNS[scenario](target, args)
    finally:
        for client in good:
            client.stopped.set()
        for client in good:
            client.join(GOOD_TIMEOUT + 5)
    time.sleep(SETTLE)
    sampler.stopped.set()
    sampler.join(5)
    after = {pid: rss_kib(pid) for pid in pids}
    ops = [op for client in good for op in client.result.ops]
    row: dict[str, Any] = {
        "scenario": scenario, "target": target.name, "note": target.note,
        "good_ops": len(ops), "good_errors": sum(c.result.errors for c in good),
        "good_error_causes": {cause: sum(c.result.causes.get(cause, 0) for c in good)
                              for cause in sorted({k for c in good for k in c.result.causes})},
        "good_p99_ms": round(p99_ms(ops), 2),
        "good_max_ms": round(max(ops) * 1000, 1) if ops else float("nan"),
        "outcome": outcome,
    }
    if target.proxy is not None:
        row["proxy_backend_counters"] = backend_counters(target.port)
    proxy_pid = target.proxy.process.pid if target.proxy else None
    server_pids = [s.process.pid for s in target.servers]
    if proxy_pid is not None:
        row |= {"proxy_before_mb": before[proxy_pid] / 1024,
                "proxy_peak_mb": sampler.peak[proxy_pid] / 1024,
                "proxy_after_mb": after[proxy_pid] / 1024,
                "proxy_alive": target.proxy.process.poll() is None if target.proxy else True}
    biggest = max(server_pids, key=lambda pid: sampler.peak[pid] - before[pid])
    row |= {"server_before_mb": before[biggest] / 1024,
            "server_peak_mb": sampler.peak[biggest] / 1024,
            "server_after_mb": after[biggest] / 1024}
    return row


# ---------------------------------------------------------------- report


def fmt_mb(row: dict[str, Any], prefix: str) -> str:
    if f"{prefix}_peak_mb" not in row:
        return "-"
    return (f"{row[f'{prefix}_before_mb']:.0f}/{row[f'{prefix}_peak_mb']:.0f}/"
            f"{row[f'{prefix}_after_mb']:.0f}")


def outcome_text(row: dict[str, Any]) -> str:
    o = row["outcome"]
    if row["scenario"] == "a-repeat":
        return (f"{o['repeats']} repeats, {o['reply_bytes'] / MiB:.0f} MiB reply read in "
                f"{o['read_s']} s, sha256 {o['reply_sha256']}")
    got = ", ".join(f"{k}: {v}" for k, v in sorted(o["got"].items(), key=lambda kv: -kv[1]))
    sent = f", sent all {o['sent_all']}" if "sent_all" in o else ""
    return f"{o['clients']} clients{sent}; got {got}"


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'scenario':<11} {'target':<24} {'proxy MB':>15} {'backend MB':>15} "
             f"{'good p99':>9} {'max ms':>8} {'errs':>5}  hostile clients",
             f"{'':<11} {'':<24} {'before/peak/after':>15} {'before/peak/after':>15}"]
    for row in rows:
        name = row["target"] + (f" {row['note']}" if row["note"] else "")
        lines.append(f"{row['scenario']:<11} {name:<24} {fmt_mb(row, 'proxy'):>15} "
                     f"{fmt_mb(row, 'server'):>15} {row['good_p99_ms']:>7.1f}ms "
                     f"{row['good_max_ms']:>8.1f} {row['good_errors']:>5}  {outcome_text(row)}")
        causes = row.get("good_error_causes")
        if causes:
            lines.append(f"{'':<11} good clients' errors by cause: "
                         + ", ".join(f"{cause} {count}" for cause, count in causes.items()))
        counters = row.get("proxy_backend_counters")
        if counters:
            lines.append(f"{'':<11} proxy's backend counters: " + ", ".join(
                f"{name} {counters[name]}" for name in ("cuts", "resent", "errors", "timeouts")
                if name in counters))
    return lines


def check_repeats(rows: list[dict[str, Any]]) -> list[str]:
    """The repeated-key replies must be byte-identical to memcached's."""
    reference = next((r for r in rows if r["scenario"] == "a-repeat"
                      and r["target"] == "memcached"), None)
    out = []
    for row in rows:
        if row["scenario"] != "a-repeat" or reference is None or row is reference:
            continue
        same = (row["outcome"]["reply_sha256"] == reference["outcome"]["reply_sha256"]
                and row["outcome"]["reply_bytes"] == reference["outcome"]["reply_bytes"])
        out.append(f"a-repeat {row['target']}: reply "
                   f"{'identical to' if same else 'DIFFERS from'} memcached's "
                   f"({row['outcome']['reply_bytes']} bytes)")
    return out


def run(args: argparse.Namespace) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * max(args.idle_clients, args.noread_clients, args.halfline_clients) + 256
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    targets = [t for t in args.targets.split(",") if t]
    scenarios = [s for s in args.scenarios.split(",") if s]
    for name in targets:
        if name not in TARGETS:
            raise BenchError(f"unknown target {name!r} (known: {', '.join(TARGETS)})")
    for name in scenarios:
        if name not in SCENARIOS:
            raise BenchError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    extra = shlex.split(args.proxy_args)
    idle_flag = "--idle-timeout" in proxy_help(args.python, args.repo)
    print(f"proxy flags: {' '.join(extra) or '(defaults)'}; --idle-timeout "
          f"{'offered' if idle_flag else 'not offered'} by the proxy")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="memring-hostile-") as tmpdir:
        for scenario in scenarios:
            runs = [(name, extra, "") for name in targets]
            if scenario == "d-idle" and idle_flag:
                runs += [(name, [*extra, "--idle-timeout", str(args.idle_timeout)],
                          f"idle-timeout {args.idle_timeout}")
                         for name in targets if name != "memcached"]
            for name, flags, note in runs:
                # Fresh processes per scenario, so one scenario's leftovers do not count
                # against the next.
                with contextlib.ExitStack() as stack, \
                        started_target(name, args, stack, Path(tmpdir), flags, note) as target:
                    print(f"{scenario} on {target.title}{' (' + note + ')' if note else ''} ...",
                          flush=True)
                    row = measure(target, scenario, args)
                    rows.append(row)
                    print("  " + "\n  ".join(line.strip() for line in table([row])[2:]),
                          flush=True)
    print()
    print("RSS in MB: before the hostile clients / peak while they ran / 2 s after they closed;"
          " backend = the shard that grew most (memcached direct: the server itself)")
    print(f"good p99 = p99 latency of {GOOD_CLIENTS} well-behaved clients doing set/get of "
          "100-byte values meanwhile")
    print("\n".join(table(rows)))
    for line in check_repeats(rows):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="comma-separated targets (%(default)s)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated scenarios (%(default)s)")
    parser.add_argument("--hold", type=float, default=5.0,
                        help="seconds the hostile clients stay connected (%(default)s)")
    parser.add_argument("--line-bytes", type=int, default=1_000_000,
                        help="a-repeat: length of the get line (%(default)s)")
    parser.add_argument("--repeat-value", type=int, default=1000,
                        help="a-repeat: value size of the repeated keys (%(default)s)")
    parser.add_argument("--noread-clients", type=int, default=100)
    parser.add_argument("--halfline-clients", type=int, default=200)
    parser.add_argument("--manykeys-clients", type=int, default=32)
    parser.add_argument("--idle-clients", type=int, default=1000)
    parser.add_argument("--idle-timeout", type=int, default=2,
                        help="d-idle: the proxy's --idle-timeout, when it has one (%(default)s)")
    parser.add_argument("--proxy-args", default="",
                        help="extra flags for the memring proxies, e.g. "
                             "'--max-buffered-bytes 67108864'")
    parser.add_argument("--memory", type=int, default=1024,
                        help="server memory limit in MB (%(default)s)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs the proxy and backends (%(default)s)")
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="the checkout whose proxy and backend run, with --python its "
                             "venv's interpreter: an A/B with one script (%(default)s)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows to FILE")
    return run_until_done(run, parser.parse_args(argv), "every process started here was stopped")


if __name__ == "__main__":
    sys.exit(main())
