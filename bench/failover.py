"""Failover under load: kill -9 (or freeze) a shard leader while a client writes through the
proxy at a steady rate, and measure what that client sees.

The script starts etcd, shards x replicas backends in cluster mode with replication, and a
proxy in cluster mode, all on free loopback ports. Each trial runs an open-loop writer
(`--rate` sets/s of unique keys `fo:<trial>:<seq>`, pipelined over a few connections) and a
reader (gets of keys already acknowledged) through the proxy, then hits the leader of one
shard (the shard of the key `victim:<trial>`):

- `--fault kill`: kill -9; the node is restarted (empty, a new incarnation) after the trial;
- `--fault stop`: SIGSTOP until the lease TTL has passed and a new leader is seen, then
  SIGCONT; writes queued on a direct connection to the frozen leader must all be refused,
  and it must rejoin as a follower and catch up.

Per trial and as median/max over the trials it reports: the time from the fault to the
first write to that shard acknowledged afterwards, acknowledged writes lost (every key that
got STORED is read back through the proxy afterwards; must be 0 in sync mode), failed and
timed-out client requests, and stale reads (a read that missed, or saw another value, for a
key whose STORED had already arrived). Every trial has a deadline; every process is stopped
at the end, also on Ctrl-C or an error.

    .venv/bin/python bench/failover.py                      # kill -9, 10 trials, sync if offered
    .venv/bin/python bench/failover.py --fault stop --trials 5
    .venv/bin/python bench/failover.py --mode async --shards 1 --replicas 2 --json ''
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend_vs_memcached import cpu_model
from processes import BenchError, Server, ask_version, free_port, run_until_done, spawned

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
CLUSTER = "failover"
POLL = 0.02
HEALTHY_TIMEOUT = 60.0


# --- processes -----------------------------------------------------------------------------


def replication_modes(python: str) -> list[str]:
    """The `--replication` choices the backend's --help offers (off excluded)."""
    try:
        text = subprocess.run([python, "-m", "memring.backend", "--help"], cwd=REPO, text=True,
                              capture_output=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise BenchError(f"cannot run `{python} -m backend --help`: {e}") from e
    found = re.search(r"--replication \{([^}]*)\}", text)
    return [m for m in found.group(1).split(",") if m != "off"] if found else []


def stats(port: int, timeout: float = 0.5) -> dict[str, str]:
    """`stats` of a server on 127.0.0.1:port ({} if it does not answer in time)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"stats\r\n")
            reply = b""
            while not reply.endswith(b"END\r\n") and len(reply) < 1 << 20:
                chunk = s.recv(65536)
                if not chunk:
                    return {}
                reply += chunk
    except OSError:
        return {}
    out = {}
    for line in reply.decode(errors="replace").splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "STAT":
            out[parts[1]] = parts[2]
    return out


def request(port: int, payload: bytes, end: bytes, timeout: float = 2.0) -> bytes:
    """One exchange on a fresh connection; b"" if the server does not answer in time."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(payload)
            reply = b""
            while not reply.endswith(end):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
            return reply
    except OSError:
        return b""


@dataclass
class Node:
    node_id: str
    shard: str
    port: int
    argv: list[str]
    server: Server | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self.server is not None
        return self.server.process

    def alive(self) -> bool:
        return self.server is not None and self.process.poll() is None

    def role(self) -> str:
        return stats(self.port).get("memring_role", "") if self.alive() else ""


class Cluster:
    """etcd, the backends and the proxy of one run; `stack` stops them all."""

    def __init__(self, args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
        self.args = args
        self.stack = stack
        self.shard_ids = [f"s{i}" for i in range(1, args.shards + 1)]
        self.nodes: list[Node] = []
        self.proxy_port = 0
        self.etcd_url = ""
        self.servers: list[Server] = []  # every backend and proxy process started, in order

    def save_logs(self, directory: str) -> None:
        """Write each process's whole log to DIRECTORY/<name>-<n>.log (n: its start order)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for n, server in enumerate(self.servers, start=1):
            server.log.flush()
            server.log.seek(0)
            (path / f"{server.name}-{n}.log").write_bytes(server.log.read())
        print(f"logs of {len(self.servers)} processes in {path}", flush=True)

    def start(self) -> None:
        from memring.cluster.etcd_process import start_etcd

        args = self.args
        try:
            etcd = start_etcd()
        except RuntimeError as e:
            raise BenchError(f"etcd: {e}") from e
        self.stack.callback(etcd.stop)
        self.etcd_url = etcd.url
        print(f"started etcd {etcd.url} (pid {etcd.process.pid})", flush=True)
        self._write_records()
        for sid in self.shard_ids:
            for r in range(1, args.replicas + 1):
                port = free_port()
                argv = [args.python, "-m", "memring.backend", "--listen", f"{HOST}:{port}",
                        "--etcd", self.etcd_url, "--cluster", CLUSTER, "--shard", sid,
                        "--node-id", f"{sid}-r{r}", "--lease-ttl", f"{args.ttl:g}",
                        "--replication", args.mode, "--peer-listen", f"{HOST}:{free_port()}"]
                node = Node(f"{sid}-r{r}", sid, port, argv)
                self.nodes.append(node)
                self.launch(node)
        self.proxy_port = free_port()
        argv = [args.python, "-m", "memring.proxy", "--listen", f"{HOST}:{self.proxy_port}",
                "--etcd", self.etcd_url, "--cluster", CLUSTER]
        if args.leader_wait_ms is not None:
            argv += ["--leader-wait-ms", str(args.leader_wait_ms)]
        proxy, _ = self.stack.enter_context(
            spawned("proxy", argv, self.proxy_port, ask_version, "`version`"))
        self.servers.append(proxy)
        print(f"started proxy {HOST}:{self.proxy_port} (pid {proxy.process.pid})", flush=True)

    def _write_records(self) -> None:
        import trio

        from memring.cluster.coordinator import ClusterConfig, CoordinatorError
        from memring.cluster.etcd_coordinator import EtcdCoordinator

        async def write() -> None:
            async with EtcdCoordinator.connect(self.etcd_url, CLUSTER) as etcd:
                await etcd.put_config(ClusterConfig(replication=self.args.mode,
                                                    lease_ttl=self.args.ttl))
                for sid in self.shard_ids:
                    await etcd.ensure_shard(sid, weight=1)

        try:
            trio.run(write)
        except (CoordinatorError, ValueError) as e:
            raise BenchError(f"cannot write the cluster's records to etcd: {e}") from e

    def launch(self, node: Node) -> None:
        node.server, _ = self.stack.enter_context(
            spawned(node.node_id, node.argv, node.port, ask_version, "`version`"))
        self.servers.append(node.server)
        print(f"started backend {node.node_id} on {node.address} (pid {node.process.pid})",
              flush=True)

    def shard_nodes(self, sid: str) -> list[Node]:
        return [n for n in self.nodes if n.shard == sid]

    def leaders(self, sid: str) -> list[Node]:
        return [n for n in self.shard_nodes(sid) if n.role() == "leader"]

    def unhealthy(self) -> str | None:
        """What is not ready yet (None: every shard has one leader with every follower
        connected and caught up, and the proxy routes to every leader)."""
        want = self.args.replicas - 1
        addresses = set()
        for sid in self.shard_ids:
            for node in self.shard_nodes(sid):
                if not node.alive():
                    return f"{node.node_id} is not running"
            leaders = self.leaders(sid)
            if len(leaders) != 1:
                return f"shard {sid} has {len(leaders)} leaders"
            s = stats(leaders[0].port)
            if s.get("memring_repl_followers") != str(want):
                return f"shard {sid}: {s.get('memring_repl_followers')} of {want} followers"
            if s.get("memring_repl_max_lag", "0") != "0":
                return f"shard {sid}: followers lag {s['memring_repl_max_lag']}"
            isr = [m for m in s.get("memring_repl_isr", "").split(",") if m]
            if "memring_repl_isr" in s and len(isr) != self.args.replicas:
                return f"shard {sid}: ISR {isr}"
            addresses.add(leaders[0].address)
        import trio

        from memring.cluster.launcher import routes_to

        if not trio.run(routes_to, f"{HOST}:{self.proxy_port}", addresses):
            return "the proxy does not route to every leader"
        return None

    def wait_healthy(self, timeout: float = HEALTHY_TIMEOUT) -> float:
        started = time.monotonic()
        while (problem := self.unhealthy()) is not None:
            for node in self.nodes:
                if node.server is not None and node.process.poll() is not None \
                        and node.process.returncode != -signal.SIGKILL:
                    raise BenchError(f"{node.node_id} exited with {node.process.returncode}:"
                                     f"\n{node.server.log_tail()}")
            if time.monotonic() - started > timeout:
                roles = ", ".join(f"{n.node_id} {n.role() or 'down'}" for n in self.nodes)
                raise BenchError(f"cluster not healthy after {timeout:g}s: {problem} ({roles})")
            time.sleep(0.05)
        return time.monotonic() - started


# --- the client load -------------------------------------------------------------------------


@dataclass(slots=True)
class Op:
    kind: str          # "set" | "get"
    key: bytes
    shard: str
    sent: float
    value: bytes = b""  # the value written, or the value a get expects
    done: float = 0.0
    outcome: str = ""   # stored | hit | stale | server_error | timeout | error | unexpected
    detail: str = ""


class Connection:
    """One pipelined client connection to the proxy: requests in flight, replies in order."""

    def __init__(self, port: int, selector: selectors.BaseSelector) -> None:
        self.port = port
        self.selector = selector
        self.sock: socket.socket | None = None
        self.pending: deque[Op] = deque()
        self.buffer = bytearray()
        self.retry_at = 0.0

    def ready(self, now: float) -> bool:
        if self.sock is not None:
            return True
        if now < self.retry_at:
            return False
        try:
            sock = socket.create_connection((HOST, self.port), timeout=0.5)
        except OSError:
            self.retry_at = now + 0.05
            return False
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(0.5)
        self.sock = sock
        self.selector.register(sock, selectors.EVENT_READ, self)
        return True

    def send(self, op: Op, payload: bytes) -> None:
        assert self.sock is not None
        self.pending.append(op)
        try:
            self.sock.sendall(payload)
        except OSError as e:
            self.fail("error", str(e))

    def fail(self, outcome: str, detail: str) -> None:
        """Give up on the connection: every request in flight ends with `outcome`."""
        now = time.monotonic()
        for op in self.pending:
            op.done, op.outcome, op.detail = now, outcome, detail
        self.pending.clear()
        self.buffer.clear()
        if self.sock is not None:
            self.selector.unregister(self.sock)
            self.sock.close()
            self.sock = None
        self.retry_at = now + 0.05

    def receive(self) -> list[tuple[Op, str, bytes | None]]:
        """Read what arrived; the requests it completes with their reply line and value."""
        assert self.sock is not None
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, TimeoutError):
            return []
        except OSError as e:
            self.fail("error", str(e))
            return []
        if not data:
            self.fail("error", "the proxy closed the connection")
            return []
        self.buffer += data
        done = []
        while self.pending:
            parsed = self._one_reply(self.pending[0].kind)
            if parsed is None:
                break
            done.append((self.pending.popleft(), *parsed))
        return done

    def _one_reply(self, kind: str) -> tuple[str, bytes | None] | None:
        buf = self.buffer
        end = buf.find(b"\r\n")
        if end < 0:
            return None
        line = bytes(buf[:end])
        if kind == "get" and line.startswith(b"VALUE "):
            size = int(line.split()[3])
            start = end + 2
            stop = start + size + 2 + 5
            if len(buf) < stop:
                return None
            value = bytes(buf[start:start + size])
            del buf[:stop]  # the value, \r\n, then END\r\n (one key per get)
            return "VALUE", value
        del buf[:end + 2]
        return line.decode(errors="replace"), None


class Load:
    """The open-loop writer and the reader, in one thread with one selector."""

    def __init__(self, port: int, trial: int, ring: Any, shard_ids: list[str], victim: str,
                 args: argparse.Namespace) -> None:
        self.port, self.trial, self.ring, self.shard_ids = port, trial, ring, shard_ids
        self.victim = victim
        self.rate, self.read_rate = args.rate, args.read_rate
        self.timeout = args.request_timeout
        self.pad = b"x" * max(0, args.value_size - 12)
        self.selector = selectors.DefaultSelector()
        self.writers = [Connection(port, self.selector) for _ in range(args.connections)]
        self.readers = [Connection(port, self.selector) for _ in range(2)]
        self.ops: list[Op] = []
        self.recent: dict[bool, deque[Op]] = {True: deque(maxlen=32), False: deque(maxlen=32)}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="load", daemon=True)
        self.error: BaseException | None = None
        self.seq = 0

    def shard_of(self, key: bytes) -> str:
        return self.shard_ids[self.ring.server_for(key)]

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(self.timeout + 5)
        if self.thread.is_alive():
            raise BenchError("the load thread did not stop")
        if self.error is not None:
            raise BenchError(f"the load thread failed: {self.error!r}")

    def first_stored_after(self, t0: float) -> Op | None:
        """The first write to the victim shard sent after t0 that was acknowledged."""
        found = [op for op in list(self.ops) if op.kind == "set" and op.shard == self.victim
                 and op.sent > t0 and op.outcome == "stored"]
        return min(found, key=lambda op: op.done) if found else None

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # reported by stop()
            self.error = e
        finally:
            for conn in self.writers + self.readers:
                if conn.sock is not None:
                    conn.fail("error", "load stopped")
            self.selector.close()

    def _pick(self, conns: list[Connection], now: float) -> Connection | None:
        ready = [c for c in conns if c.ready(now)]
        return min(ready, key=lambda c: len(c.pending)) if ready else None

    def _loop(self) -> None:
        start = time.monotonic()
        next_write, next_read = start, start + 0.05
        write_gap, read_gap = 1 / self.rate, 1 / self.read_rate if self.read_rate else 0.0
        while True:
            now = time.monotonic()
            if self.stopping.is_set():
                if not any(c.pending for c in self.writers + self.readers):
                    return
                next_write = next_read = float("inf")
            while now >= next_write:
                next_write += write_gap
                self._write(now)
            while read_gap and now >= next_read:
                next_read += read_gap
                self._read(now)
            for conn in self.writers + self.readers:
                if conn.pending and now - conn.pending[0].sent > self.timeout:
                    conn.fail("timeout", f"no reply within {self.timeout:g}s")
            wake = min(next_write, next_read, now + 0.05) - time.monotonic()
            for key, _ in self.selector.select(max(0.0, wake)):
                conn = key.data
                for op, line, value in conn.receive():
                    self._complete(op, line, value)

    def _write(self, now: float) -> None:
        self.seq += 1
        key = b"fo:%d:%d" % (self.trial, self.seq)
        value = b"%012d" % self.seq + self.pad
        op = Op("set", key, self.shard_of(key), now, value)
        self.ops.append(op)
        conn = self._pick(self.writers, now)
        if conn is None:
            op.done, op.outcome, op.detail = now, "error", "cannot connect to the proxy"
            return
        conn.send(op, b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))

    def _read(self, now: float) -> None:
        victim = self.recent[True]
        pool = victim if victim and (random.random() < 0.75 or not self.recent[False]) \
            else self.recent[False]
        if not pool:
            return
        target = random.choice(list(pool))
        op = Op("get", target.key, target.shard, now, target.value)
        self.ops.append(op)
        conn = self._pick(self.readers, now)
        if conn is None:
            op.done, op.outcome, op.detail = now, "error", "cannot connect to the proxy"
            return
        conn.send(op, b"get %s\r\n" % target.key)

    def _complete(self, op: Op, line: str, value: bytes | None) -> None:
        op.done = time.monotonic()
        if op.kind == "set":
            if line == "STORED":
                op.outcome = "stored"
                self.recent[op.shard == self.victim].append(op)
            else:
                op.outcome = "server_error" if line.startswith("SERVER_ERROR") else "unexpected"
                op.detail = line
        elif line == "VALUE":
            op.outcome = "hit" if value == op.value else "stale"
            op.detail = "" if value == op.value else "another value"
        elif line == "END":
            op.outcome, op.detail = "stale", "miss"
        else:
            op.outcome = "server_error" if line.startswith("SERVER_ERROR") else "unexpected"
            op.detail = line


class ProxyPulse:
    """`version` on its own connection to the proxy every 50 ms: the longest wait for an
    answer shows whether the proxy itself stalled (its event loop, not one shard)."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port, self.timeout = port, timeout
        self.samples: list[tuple[float, float]] = []  # (sent, seconds to answer or timeout)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pulse", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(self.timeout + 2)

    def worst(self, since: float) -> tuple[float, float]:
        """(longest wait, when it began relative to `since`) over samples sent after since."""
        later = [(took, sent - since) for sent, took in self.samples if sent >= since]
        return max(later, default=(0.0, 0.0))

    def _run(self) -> None:
        sock: socket.socket | None = None
        while not self.stopping.is_set():
            sent = time.monotonic()
            try:
                if sock is None:
                    sock = socket.create_connection((HOST, self.port), timeout=self.timeout)
                    sock.settimeout(self.timeout)
                sock.sendall(b"version\r\n")
                reply = b""
                while not reply.endswith(b"\r\n"):
                    chunk = sock.recv(256)
                    if not chunk:
                        raise ConnectionError("closed")
                    reply += chunk
            except OSError:
                if sock is not None:
                    sock.close()
                sock = None
            self.samples.append((sent, time.monotonic() - sent))
            self.stopping.wait(max(0.0, sent + 0.05 - time.monotonic()))
        if sock is not None:
            sock.close()


# --- one trial -------------------------------------------------------------------------------


def read_back(port: int, ops: list[Op]) -> list[bytes]:
    """Keys whose acknowledged value is not what the proxy returns now."""
    acked = {op.key: op.value for op in ops if op.kind == "set" and op.outcome == "stored"}
    keys = list(acked)
    wrong: list[bytes] = []
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.settimeout(10)
        for start in range(0, len(keys), 100):
            batch = keys[start:start + 100]
            s.sendall(b"get " + b" ".join(batch) + b"\r\n")
            reply = b""
            while not reply.endswith(b"END\r\n") and not reply.startswith(b"SERVER_ERROR"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise BenchError("the proxy closed the connection during the read-back")
                reply += chunk
            if reply.startswith(b"SERVER_ERROR"):
                raise BenchError(f"read-back through the proxy: {reply[:200]!r}")
            got: dict[bytes, bytes] = {}
            lines = reply.split(b"\r\n")
            for i, line in enumerate(lines):
                if line.startswith(b"VALUE "):
                    got[line.split()[1]] = lines[i + 1]
            wrong += [k for k in batch if got.get(k) != acked[k]]
    return wrong


def wait_until(probe: Any, timeout: float) -> float | None:
    """Poll `probe()` until true; the monotonic time it was, or None after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return time.monotonic()
        time.sleep(POLL)
    return None


def counts(ops: list[Op], kind: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for op in ops:
        if op.kind == kind:
            out[op.outcome or "unfinished"] = out.get(op.outcome or "unfinished", 0) + 1
    return out


def failures(ops: list[Op]) -> dict[str, int]:
    """Failed requests by kind, outcome and reply (numbers in replies folded)."""
    out: dict[str, int] = {}
    for op in ops:
        if op.outcome not in ("stored", "hit"):
            what = f"{op.kind} {op.outcome}: {re.sub(r'[0-9]+', 'N', op.detail)}"
            out[what] = out.get(what, 0) + 1
    return out


def run_trial(cluster: Cluster, number: int, ring: Any, args: argparse.Namespace
              ) -> dict[str, Any]:
    cluster.wait_healthy()
    victim = cluster.shard_ids[ring.server_for(b"victim:%d" % number)]
    leaders = cluster.leaders(victim)
    if len(leaders) != 1:
        raise BenchError(f"shard {victim} has {len(leaders)} leaders before trial {number}")
    old = leaders[0]
    others = [n for n in cluster.shard_nodes(victim) if n is not old]
    load = Load(cluster.proxy_port, number, ring, cluster.shard_ids, victim, args)
    result: dict[str, Any] = {"trial": number, "shard": victim, "old_leader": old.node_id}
    fenced = None
    pulse = ProxyPulse(cluster.proxy_port, args.request_timeout)
    pulse.start()
    load.start()
    try:
        time.sleep(args.steady)
        if args.fault == "stop":
            fenced = socket.create_connection((HOST, old.port), timeout=2)
        t0 = time.monotonic()
        if args.fault == "kill":
            old.process.kill()
        else:
            old.process.send_signal(signal.SIGSTOP)
        try:
            result.update(observe(cluster, load, old, others, fenced, t0, number, args))
        finally:
            if args.fault == "stop":
                old.process.send_signal(signal.SIGCONT)
    finally:
        load.stop()
        pulse.stop()
        if fenced is not None:
            fenced.close()
    stall, stall_at = pulse.worst(result["_t0"] - args.steady)
    result["proxy_stall_s"] = round(stall, 3)  # longest `version` round trip of the trial
    result["proxy_stall_at_s"] = round(stall_at - args.steady, 3)  # its start, from the fault
    result.pop("_t0")
    ops = load.ops
    writes, reads = counts(ops, "set"), counts(ops, "get")
    lost = read_back(cluster.proxy_port, ops)
    result.update({
        "writes": sum(writes.values()), "acked": writes.get("stored", 0),
        "write_outcomes": writes, "read_outcomes": reads,
        "failed_writes": sum(v for k, v in writes.items() if k != "stored"),
        "timed_out": writes.get("timeout", 0) + reads.get("timeout", 0),
        "failed_reads": sum(v for k, v in reads.items() if k not in ("hit", "stale")),
        "stale_reads": reads.get("stale", 0),
        "lost_acked_writes": len(lost), "lost_examples": [k.decode() for k in lost[:5]],
        "failures": failures(ops),
    })
    if args.fault == "kill":
        old.process.wait(5)
        cluster.launch(old)  # back empty, as a new incarnation: it must catch up
    # every node back, connected, caught up and in the ISR; the proxy routes to the leaders
    result["healthy_again_s"] = round(cluster.wait_healthy(), 3)
    return result


def observe(cluster: Cluster, load: Load, old: Node, others: list[Node],
            fenced: socket.socket | None, t0: float, number: int, args: argparse.Namespace
            ) -> dict[str, Any]:
    """From the fault to the end of the trial's load; the trial's timings."""
    out: dict[str, Any] = {"_t0": t0}
    deadline = t0 + args.trial_timeout
    queued = 0
    elected = None
    while time.monotonic() < deadline and elected is None:
        if fenced is not None and queued < 200:  # writes the frozen leader finds on waking
            fenced.sendall(b"set fenced:%d:%d 0 0 1\r\nx\r\n" % (number, queued))
            queued += 1
        leading = [n for n in others if n.role() == "leader"]
        if leading:
            elected = time.monotonic()
            out["new_leader"] = leading[0].node_id
        time.sleep(POLL)
    if elected is None:
        raise BenchError(f"trial {number}: no new leader for shard {old.shard} within "
                         f"{args.trial_timeout:g}s")
    out["elected_s"] = round(elected - t0, 4)
    first = None
    while time.monotonic() < deadline and (first := load.first_stored_after(t0)) is None:
        time.sleep(POLL)
    if first is None:
        raise BenchError(f"trial {number}: no write to shard {old.shard} acknowledged within "
                         f"{args.trial_timeout:g}s of the fault")
    out["first_write_s"] = round(first.done - t0, 4)
    if fenced is not None:
        # frozen past its lease and past the election, then woken up
        time.sleep(max(0.0, max(t0 + args.ttl + 1.0, elected + 0.3) - time.monotonic()))
        old.process.send_signal(signal.SIGCONT)
        woke = time.monotonic()
        out["frozen_s"] = round(woke - t0, 3)
        replies = b""
        fenced.settimeout(0.5)
        while replies.count(b"\r\n") < queued and time.monotonic() - woke < 10:
            with contextlib.suppress(TimeoutError):
                chunk = fenced.recv(65536)
                if not chunk:
                    break
                replies += chunk
        lines = replies.split(b"\r\n")[:-1]
        out["queued_on_old_leader"] = queued
        out["old_leader_acks_after_election"] = lines.count(b"STORED")
        out["old_leader_unanswered"] = queued - len(lines)
        rejoined = wait_until(lambda: old.role() == "follower", 20.0)
        out["rejoined_s"] = None if rejoined is None else round(rejoined - woke, 3)
        newest = next((op for op in reversed(list(load.recent[True])) if op.sent > elected),
                      None)
        if newest is not None:
            caught = wait_until(lambda: request(old.port, b"get %s\r\n" % newest.key, b"END\r\n")
                                .startswith(b"VALUE "), 10.0)
            out["caught_up_s"] = None if caught is None else round(caught - woke, 3)
    time.sleep(max(0.0, first.done + args.after - time.monotonic()))
    return out


# --- the run ---------------------------------------------------------------------------------


def code_version() -> dict[str, Any]:
    """The commit the servers ran from, and the tracked files changed since (if any)."""
    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no")
               .splitlines() if line[3:].startswith(("backend/", "proxy/", "cluster/",
                                                      "protocol/", "netio/"))]
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_server_files": changed}


def summarize(trials: list[dict[str, Any]], fault: str) -> dict[str, Any]:
    def spread(key: str) -> dict[str, float | None]:
        values = [t[key] for t in trials if t.get(key) is not None]
        if not values:
            return {"median": None, "max": None}
        return {"median": round(statistics.median(values), 4), "max": round(max(values), 4)}

    out: dict[str, Any] = {
        "trials": len(trials),
        "first_write_s": spread("first_write_s"), "elected_s": spread("elected_s"),
        "failed_writes": spread("failed_writes"), "timed_out": spread("timed_out"),
        "lost_acked_writes_total": sum(t["lost_acked_writes"] for t in trials),
        "acked_total": sum(t["acked"] for t in trials),
        "stale_reads_total": sum(t["stale_reads"] for t in trials),
        "failed_reads_total": sum(t["failed_reads"] for t in trials),
        "failed_writes_total": sum(t["failed_writes"] for t in trials),
        "timed_out_total": sum(t["timed_out"] for t in trials),
        "healthy_again_s": spread("healthy_again_s"),
    }
    if fault == "stop":
        out["old_leader_acks_after_election_total"] = sum(
            t.get("old_leader_acks_after_election", 0) for t in trials)
        out["rejoined_s"] = spread("rejoined_s")
        out["caught_up_s"] = spread("caught_up_s")
        out["not_rejoined"] = sum(1 for t in trials if t.get("rejoined_s") is None)
    return out


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:,.0f}"


def trial_line(t: dict[str, Any]) -> str:
    line = (f"trial {t['trial']:>2} shard {t['shard']}: new leader {ms(t['elected_s'])} ms, "
            f"first write {ms(t['first_write_s'])} ms; {t['acked']:,} acked, "
            f"{t['lost_acked_writes']} lost; failed writes {t['failed_writes']} "
            f"({t['timed_out']} timed out); stale reads {t['stale_reads']}, failed reads "
            f"{t['failed_reads']}; proxy's slowest `version` {ms(t['proxy_stall_s'])} ms; all "
            f"in sync again after {ms(t['healthy_again_s'])} ms")
    if "old_leader_acks_after_election" in t:
        line += (f"; old leader: {t['old_leader_acks_after_election']} of "
                 f"{t['queued_on_old_leader']} queued writes acked, follower again "
                 f"{ms(t.get('rejoined_s'))} ms after SIGCONT")
    return line


def markdown_row(args: argparse.Namespace, s: dict[str, Any]) -> str:
    fw, el = s["first_write_s"], s["elected_s"]
    extra = ""
    if args.fault == "stop":
        extra = (f" {s['old_leader_acks_after_election_total']} |"
                 f" {ms(s['rejoined_s']['median'])} ms |")
    return (f"| {args.fault} | {args.mode} | {args.shards}x{args.replicas} | {s['trials']} | "
            f"{ms(el['median'])} / {ms(el['max'])} ms | {ms(fw['median'])} / {ms(fw['max'])} ms | "
            f"{s['lost_acked_writes_total']} of {s['acked_total']:,} | "
            f"{s['failed_writes_total']} ({s['timed_out_total']} timed out) | "
            f"{s['stale_reads_total']} |{extra}")


def run(args: argparse.Namespace) -> int:
    from memring.proxy.ketama import KetamaRing

    modes = replication_modes(args.python)
    if not modes:
        raise BenchError("the backend offers no --replication mode: replication is not "
                         "built in this tree")
    args.mode = args.mode or ("sync" if "sync" in modes else modes[0])
    if args.mode not in modes:
        raise BenchError(f"the backend does not accept --replication {args.mode} (it offers "
                         f"{', '.join(modes)})")
    for flag, value, low in (("--shards", args.shards, 1), ("--replicas", args.replicas, 2),
                             ("--trials", args.trials, 1), ("--connections", args.connections, 1)):
        if value < low:
            raise BenchError(f"{flag} must be at least {low}")
    if args.rate <= 0 or args.read_rate < 0:
        raise BenchError("--rate must be > 0 and --read-rate >= 0")
    json_path = args.json if args.json is not None else \
        str(REPO / "docs" / "bench" / f"failover-{args.fault}-{args.mode}.json")
    print(f"failover: --fault {args.fault}, --replication {args.mode}, {args.shards} shard(s) x "
          f"{args.replicas} replicas, lease TTL {args.ttl:g}s, {args.trials} trial(s); load "
          f"through the proxy: {args.rate:g} sets/s over {args.connections} connections + "
          f"{args.read_rate:g} gets/s, request timeout {args.request_timeout:g}s", flush=True)
    ring = KetamaRing([(sid, 1) for sid in [f"s{i}" for i in range(1, args.shards + 1)]], "md5")
    trials: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        cluster = Cluster(args, stack)
        try:
            cluster.start()
            waited = cluster.wait_healthy()
            print(f"cluster healthy after {waited:.1f}s", flush=True)
            check_placement(cluster, ring)
            for number in range(1, args.trials + 1):
                trial = run_trial(cluster, number, ring, args)
                trials.append(trial)
                print(trial_line(trial), flush=True)
        finally:
            if args.logs:
                cluster.save_logs(args.logs)
    summary = summarize(trials, args.fault)
    fw, el = summary["first_write_s"], summary["elected_s"]
    print()
    print(f"{args.fault} / {args.mode} over {len(trials)} trials: first write after the fault "
          f"median {ms(fw['median'])} ms, max {ms(fw['max'])} ms (new leader seen: median "
          f"{ms(el['median'])} ms, max {ms(el['max'])} ms)")
    print(f"acknowledged writes lost: {summary['lost_acked_writes_total']} of "
          f"{summary['acked_total']:,}; failed writes during failovers: "
          f"{summary['failed_writes_total']} ({summary['timed_out_total']} timed out); "
          f"stale reads: {summary['stale_reads_total']}; failed reads: "
          f"{summary['failed_reads_total']}")
    if args.fault == "stop":
        print(f"old leader after SIGCONT: {summary['old_leader_acks_after_election_total']} "
              f"queued writes acknowledged after the election (must be 0); follower again "
              f"median {ms(summary['rejoined_s']['median'])} ms, max "
              f"{ms(summary['rejoined_s']['max'])} ms; caught up median "
              f"{ms(summary['caught_up_s']['median'])} ms; {summary['not_rejoined']} never "
              "rejoined")
    row = markdown_row(args, summary)
    print(row)
    if json_path:
        doc = {
            "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "fault": args.fault, "mode": args.mode, "code": code_version(),
            "settings": {k: v for k, v in vars(args).items()
                         if k not in ("json", "python", "logs")},
            "host": {"python": platform.python_version(), "machine": platform.machine(),
                     "cpu_model": cpu_model(), "cpus": os.cpu_count()},
            "summary": summary, "markdown_row": row, "trials": trials,
        }
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"wrote {path}")
    problems = []
    if args.mode == "sync" and summary["lost_acked_writes_total"]:
        problems.append(f"{summary['lost_acked_writes_total']} acknowledged writes lost in "
                        "sync mode")
    if summary.get("old_leader_acks_after_election_total"):
        problems.append("the frozen leader acknowledged writes after the election")
    if summary.get("not_rejoined"):
        problems.append(f"{summary['not_rejoined']} old leader(s) did not rejoin as followers")
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if problems else 0


def check_placement(cluster: Cluster, ring: Any) -> None:
    """Keys written through the proxy land on the shard this script's ring says."""
    keys = [b"placement:%d" % i for i in range(40)]
    payload = b"".join(b"set %s 0 0 1\r\nx\r\n" % k for k in keys)
    reply = request(cluster.proxy_port, payload, b"STORED\r\n" * len(keys), timeout=5)
    if reply != b"STORED\r\n" * len(keys):
        raise BenchError(f"writes through the proxy failed: {reply[:200]!r}")
    for key in keys:
        sid = cluster.shard_ids[ring.server_for(key)]
        leader = cluster.leaders(sid)[0]
        if not request(leader.port, b"get %s\r\n" % key, b"END\r\n").startswith(b"VALUE "):
            raise BenchError(f"key {key!r} is not on {sid}'s leader: this script's ketama ring "
                             "disagrees with the proxy's")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fault", choices=("kill", "stop"), default="kill",
                        help="kill -9 the leader, or SIGSTOP it past the TTL then SIGCONT "
                             "(%(default)s)")
    parser.add_argument("--mode", choices=("sync", "async"), default=None,
                        help="replication mode (default: sync if the backend offers it)")
    parser.add_argument("--shards", type=int, default=2, help="shards (%(default)s)")
    parser.add_argument("--replicas", type=int, default=3,
                        help="nodes per shard, leader included (%(default)s)")
    parser.add_argument("--trials", type=int, default=10, help="trials (%(default)s)")
    parser.add_argument("--ttl", type=float, default=2.0,
                        help="--lease-ttl of the backends, seconds (%(default)s)")
    parser.add_argument("--rate", type=float, default=500.0,
                        help="sets per second through the proxy (%(default)s)")
    parser.add_argument("--read-rate", type=float, default=200.0,
                        help="gets per second of acknowledged keys (%(default)s)")
    parser.add_argument("--connections", type=int, default=4,
                        help="writer connections to the proxy (%(default)s)")
    parser.add_argument("--value-size", type=int, default=32,
                        help="bytes per value (%(default)s)")
    parser.add_argument("--request-timeout", type=float, default=3.0,
                        help="a request without a reply after this many seconds is timed out "
                             "and its connection reopened (%(default)s)")
    parser.add_argument("--steady", type=float, default=1.0,
                        help="seconds of load before the fault (%(default)s)")
    parser.add_argument("--after", type=float, default=2.0,
                        help="seconds of load after the first write that follows the fault "
                             "(%(default)s)")
    parser.add_argument("--trial-timeout", type=float, default=30.0,
                        help="a trial without a new leader and a stored write by then "
                             "fails the run (%(default)s)")
    parser.add_argument("--leader-wait-ms", type=int, default=None,
                        help="the proxy's --leader-wait-ms (default: the proxy's own)")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="where to write the figures (default "
                             "docs/bench/failover-<fault>-<mode>.json; '' for none)")
    parser.add_argument("--logs", metavar="DIR", default=None,
                        help="at the end (also after an error) save every process's log there")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs `-m backend` and `-m proxy` (%(default)s)")
    return run_until_done(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
