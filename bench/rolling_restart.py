"""Rolling restart of every backend under client load, in sync mode: no client request fails.

The script starts etcd, shards x replicas backends in cluster mode (`--replication sync`) and a
cluster-mode proxy, all on free loopback ports, and runs a bounded client loop through the
proxy: each client thread sets and gets keys of its own (`rr:<client>:<n>`, all written once
before the restarts), so it knows the value every get must return. Then it restarts every
backend once, shard by shard, the way docs/operations.md tells an operator to:

- a follower: SIGTERM (it leaves: its lease is revoked, the leader drops it from the ISR),
  wait for it to exit, start it again with the same node id, ports and flags (it comes back
  empty and takes a snapshot from the leader), and wait until `memring status --json` shows
  it in sync with lag 0 before touching the next node;
- the leader, last in its shard: `memring leader transfer SHARD NODE` to a follower already
  restarted and in sync, then it is restarted as the follower it now is.

It reports, per step and in total: failed client requests (error replies, closed connections,
timeouts; must be 0), stale reads (a get that did not return the value last acknowledged for
the key; must be 0), acknowledged writes lost (every key read back through the proxy at the
end; must be 0), replicas whose data differ from their leader's at the end, the slowest
request, and the time taken. Exit status 1 if any of those is not 0. Every wait is bounded;
every process is stopped at the end, also on Ctrl-C or an error.

    .venv/bin/python bench/rolling_restart.py                       # 3 shards x 2 replicas
    .venv/bin/python bench/rolling_restart.py --shards 1 --replicas 3 --json ''
    .venv/bin/python bench/rolling_restart.py --read-policy round_robin --rate 800

It starts its own cluster: the processes of a running `memring up` belong to that command,
which restarts none of them, so a script cannot restart them cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend_vs_memcached import cpu_model
from failover import HOST, Cluster, Node, free_port, replication_modes, stats
from processes import BenchError, ask_version, run_until_done, spawned

REPO = Path(__file__).resolve().parent.parent
CLUSTER = "rolling"
POLL = 0.25          # between two `memring status --json`
EXIT_TIMEOUT = 15.0  # a SIGTERMed backend must have exited by then
LEADER_TIMEOUT = 15.0  # nodes agree on their shard's one leader by then (after a transfer too)


# --- the cluster ---------------------------------------------------------------------------


class RollingCluster(Cluster):
    """failover.Cluster's processes and health check, with this script's name and flags."""

    def start(self) -> None:
        from memring.cluster.etcd_process import start_etcd

        args = self.args
        try:
            etcd = start_etcd()
        except RuntimeError as e:
            raise BenchError(f"etcd: {e}") from e
        self.stack.callback(etcd.stop)
        self.etcd_url = etcd.url
        say(f"started etcd {etcd.url} (pid {etcd.process.pid})")
        self._write_records()
        for sid in self.shard_ids:
            for r in range(1, args.replicas + 1):
                port = free_port()
                argv = [args.python, "-m", "memring.backend", "--listen", f"{HOST}:{port}",
                        "--etcd", self.etcd_url, "--cluster", CLUSTER, "--shard", sid,
                        "--node-id", f"{sid}-r{r}", "--lease-ttl", f"{args.ttl:g}",
                        "--replication", "sync", "--peer-listen", f"{HOST}:{free_port()}"]
                if args.max_lag_ms is not None:
                    argv += ["--max-lag-ms", str(args.max_lag_ms)]
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
        say(f"started proxy {HOST}:{self.proxy_port} (pid {proxy.process.pid})")

    def _write_records(self) -> None:
        import trio

        from memring.cluster.coordinator import ClusterConfig, CoordinatorError
        from memring.cluster.etcd_coordinator import EtcdCoordinator

        async def write() -> None:
            async with EtcdCoordinator.connect(self.etcd_url, CLUSTER) as etcd:
                await etcd.put_config(ClusterConfig(replication="sync", lease_ttl=self.args.ttl,
                                                    read_policy=self.args.read_policy))
                for sid in self.shard_ids:
                    await etcd.ensure_shard(sid, weight=1)

        try:
            trio.run(write)
        except (CoordinatorError, ValueError) as e:
            raise BenchError(f"cannot write the cluster's records to etcd: {e}") from e

    def memring(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """`memring ARGV --etcd URL --cluster NAME`, as an operator types it."""
        command = [self.args.python, "-m", "memring.cluster", *argv, "--etcd", self.etcd_url,
                   "--cluster", CLUSTER]
        try:
            return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"`memring {' '.join(argv)}` did not finish within 30s") from e

    def leader(self, sid: str, timeout: float) -> Node:
        """The shard's one leader, once exactly one node says it leads. A node's `stats` is its
        own view, a txn reply behind etcd's (and a busy node may not answer within `stats`'
        timeout), so one look may see none or two: look again until `timeout` s."""
        deadline = time.monotonic() + timeout
        while len(leaders := self.leaders(sid)) != 1:
            if time.monotonic() > deadline:
                raise BenchError(f"shard {sid} has {len(leaders)} leaders after {timeout:g}s")
            time.sleep(POLL)
        return leaders[0]

    def status_of(self, node: Node) -> dict[str, Any] | None:
        """The node's entry in `memring status --json` (None if absent or unreadable)."""
        done = self.memring("status", "--json")
        try:
            doc = json.loads(done.stdout)
        except ValueError:
            return None
        for shard in doc.get("shards", []):
            for entry in shard.get("nodes", []):
                if entry.get("id") == node.node_id:
                    return dict(entry)
        return None


def wall_clock(monotonic: float | None) -> str | None:
    """A monotonic instant as UTC wall-clock time, to compare with the processes' logs."""
    if monotonic is None:
        return None
    at = time.time() - (time.monotonic() - monotonic)
    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="milliseconds")


def say(line: str) -> None:
    print(line, flush=True)


# --- the client loop -----------------------------------------------------------------------


@dataclass
class Failure:
    at: float
    kind: str     # "set" | "get"
    detail: str


@dataclass
class Client:
    """One client thread: a connection to the proxy, its own keys, one request at a time."""

    number: int
    port: int
    keys: list[bytes]
    gap: float       # seconds between two requests (pacing)
    timeout: float
    pad: bytes
    acked: dict[bytes, bytes] = field(default_factory=dict)  # the value last acknowledged
    possible: dict[bytes, set[bytes]] = field(default_factory=dict)  # after a failed set
    failures: list[Failure] = field(default_factory=list)
    stale: list[tuple[float, bytes, str]] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (done, seconds)
    sets: int = 0
    gets: int = 0
    seq: int = 0
    error: BaseException | None = None
    sock: socket.socket | None = None
    buffer: bytes = b""

    def run(self, stop: threading.Event, deadline: float) -> None:
        try:
            self._loop(stop, deadline)
        except BaseException as e:  # reported by the main thread
            self.error = e
        finally:
            self._close()

    def preload(self) -> None:
        for key in self.keys:
            self._set(key)
        missing = [k for k in self.keys if k not in self.acked]
        if missing:
            raise BenchError(f"client {self.number}: {len(missing)} keys could not be written "
                             f"before the restarts: {self.failures[-1].detail}")
        self.sets, self.latencies = 0, []  # the figures count the client loop only

    def _loop(self, stop: threading.Event, deadline: float) -> None:
        next_at = time.monotonic()
        index = 0
        while not stop.is_set() and time.monotonic() < deadline:
            self._set(self.keys[index % len(self.keys)])
            index += 1
            self._get(random.choice(self.keys))
            next_at = max(next_at + 2 * self.gap, time.monotonic() - 2 * self.gap)
            pause = next_at - time.monotonic()
            if pause > 0:
                stop.wait(pause)

    def _set(self, key: bytes) -> None:
        self.seq += 1
        self.sets += 1
        value = b"%d:%d:" % (self.number, self.seq) + self.pad
        reply = self._exchange("set", b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
        if reply is None:  # not known whether it was applied: either value may be read
            self.possible[key] = {*self.possible.get(key, set()), value}
            return
        if reply == b"STORED":
            self.acked[key] = value
            self.possible.pop(key, None)
        else:
            self._failed("set", reply.decode(errors="replace"))
            self.possible[key] = {*self.possible.get(key, set()), value}

    def _get(self, key: bytes) -> None:
        self.gets += 1
        reply = self._exchange("get", b"get %s\r\n" % key)
        if reply is None:
            return
        if reply.startswith(b"VALUE ") or reply == b"END":
            value = reply.split(b"\r\n")[1] if reply.startswith(b"VALUE ") else None
            if not self.matches(key, value):
                self.stale.append((time.monotonic(), key,
                                   "miss" if value is None else "another value"))
        else:
            self._failed("get", reply.decode(errors="replace"))

    def matches(self, key: bytes, value: bytes | None) -> bool:
        expected = self.acked.get(key)
        return value == expected or (value is not None and value in self.possible.get(key, ()))

    def _failed(self, kind: str, detail: str) -> None:
        self.failures.append(Failure(time.monotonic(), kind, detail))

    def _exchange(self, kind: str, payload: bytes) -> bytes | None:
        """One request and its reply (a get's VALUE block without the END); None after a
        connection-level failure (recorded, the connection dropped)."""
        started = time.monotonic()
        try:
            if self.sock is None:
                self.sock = socket.create_connection((HOST, self.port), timeout=self.timeout)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.buffer = b""
            self.sock.sendall(payload)
            reply = self._read_reply(kind)
        except (OSError, BenchError) as e:
            self._failed(kind, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
            self._close()
            return None
        self.latencies.append((time.monotonic(), time.monotonic() - started))
        return reply

    def _read_reply(self, kind: str) -> bytes:
        while True:
            buf = self.buffer
            end = buf.find(b"\r\n")
            if end >= 0:
                line = buf[:end]
                if kind == "get" and line.startswith(b"VALUE "):
                    size = int(line.split()[3])
                    stop = end + 2 + size + 2
                    if len(buf) >= stop + 5:
                        if buf[stop:stop + 5] != b"END\r\n":
                            raise BenchError(f"unexpected reply {buf[:100]!r}")
                        self.buffer = buf[stop + 5:]
                        return buf[:stop - 2]
                else:
                    self.buffer = buf[end + 2:]
                    return line
            assert self.sock is not None
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BenchError("the proxy closed the connection")
            self.buffer += chunk

    def _close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


class Load:
    """The client threads, started and stopped together."""

    def __init__(self, port: int, args: argparse.Namespace) -> None:
        per = max(1, args.keys // args.clients)
        pad = b"x" * max(0, args.value_size - 12)
        gap = args.clients / args.rate
        self.clients = [Client(i, port, [b"rr:%d:%d" % (i, j) for j in range(per)], gap,
                               args.request_timeout, pad) for i in range(args.clients)]
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.deadline = time.monotonic() + args.max_seconds

    def preload(self) -> None:
        for client in self.clients:
            client.preload()

    def start(self) -> None:
        for client in self.clients:
            thread = threading.Thread(target=client.run, args=(self.stop, self.deadline),
                                      name=f"client-{client.number}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(self.clients[0].timeout + 5)
            if thread.is_alive():
                raise BenchError(f"{thread.name} did not stop")
        for client in self.clients:
            if client.error is not None:
                raise BenchError(f"client {client.number} failed: {client.error!r}")

    def failures(self, since: float = 0.0, until: float = float("inf")) -> list[Failure]:
        return [f for c in self.clients for f in c.failures if since <= f.at <= until]

    def stale(self, since: float = 0.0, until: float = float("inf")) -> int:
        return sum(1 for c in self.clients for s in c.stale if since <= s[0] <= until)

    def requests(self, since: float = 0.0, until: float = float("inf")) -> list[float]:
        return [seconds for c in self.clients for done, seconds in c.latencies
                if since <= done <= until]

    def slowest(self, since: float, until: float) -> float | None:
        """When the slowest request that ended in the window was sent (monotonic)."""
        found = [(seconds, done - seconds) for c in self.clients for done, seconds in c.latencies
                 if since <= done <= until]
        return max(found)[1] if found else None

    def totals(self) -> tuple[int, int]:
        return sum(c.sets for c in self.clients), sum(c.gets for c in self.clients)


def read_back(port: int, clients: list[Client]) -> tuple[int, int, list[str]]:
    """(keys checked, keys whose acknowledged value is gone, examples) through the proxy."""
    checked, lost, examples = 0, 0, []
    with socket.create_connection((HOST, port), timeout=10) as s:
        for client in clients:
            keys = list(client.acked)
            for start in range(0, len(keys), 100):
                batch = keys[start:start + 100]
                s.sendall(b"get " + b" ".join(batch) + b"\r\n")
                got = parse_values(read_until_end(s))
                for key in batch:
                    checked += 1
                    if not client.matches(key, got.get(key)):
                        lost += 1
                        if len(examples) < 5:
                            examples.append(key.decode())
    return checked, lost, examples


def read_until_end(s: socket.socket) -> bytes:
    reply = b""
    while not reply.endswith(b"END\r\n"):
        chunk = s.recv(1 << 20)
        if not chunk:
            raise BenchError("the connection closed during a read-back")
        reply += chunk
        if reply.startswith((b"SERVER_ERROR", b"ERROR", b"CLIENT_ERROR")) and \
                reply.endswith(b"\r\n"):
            raise BenchError(f"read-back: {reply[:200]!r}")
    return reply


def parse_values(reply: bytes) -> dict[bytes, bytes]:
    lines = reply.split(b"\r\n")
    return {line.split()[1]: lines[i + 1] for i, line in enumerate(lines)
            if line.startswith(b"VALUE ")}


def replica_differences(cluster: RollingCluster, clients: list[Client]) -> dict[str, int]:
    """Per shard: keys a follower shows otherwise than its leader (read on each node)."""
    keys = [k for c in clients for k in c.keys]
    out = {}
    for sid in cluster.shard_ids:
        leader = cluster.leader(sid, LEADER_TIMEOUT)
        held = {}
        for node in cluster.shard_nodes(sid):
            values: dict[bytes, bytes] = {}
            with socket.create_connection((HOST, node.port), timeout=10) as s:
                for start in range(0, len(keys), 100):
                    s.sendall(b"get " + b" ".join(keys[start:start + 100]) + b"\r\n")
                    values.update(parse_values(read_until_end(s)))
            held[node.node_id] = values
        mine = held[leader.node_id]
        out[sid] = sum(sum(1 for k in set(mine) | set(v) if mine.get(k) != v.get(k))
                       for n, v in held.items() if n != leader.node_id)
    return out


# --- the restarts ----------------------------------------------------------------------------


class Rolling:
    def __init__(self, cluster: RollingCluster, load: Load, args: argparse.Namespace) -> None:
        self.cluster, self.load, self.args = cluster, load, args
        self.t0 = time.monotonic()
        self.steps: list[dict[str, Any]] = []

    def note(self, line: str) -> None:
        say(f"[{time.monotonic() - self.t0:6.1f}s] {line}")

    def restart(self, node: Node, what: str) -> dict[str, Any]:
        """SIGTERM, wait for the exit, start again, wait until in sync with lag 0."""
        started = time.monotonic()
        node.process.send_signal(signal.SIGTERM)
        try:
            code = node.process.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"{node.node_id} did not exit within {EXIT_TIMEOUT:g}s of "
                             "SIGTERM") from e
        exited = time.monotonic()
        if code != 0:
            assert node.server is not None
            raise BenchError(f"{node.node_id} exited with {code} after SIGTERM:\n"
                             f"{node.server.log_tail()}")
        self.cluster.launch(node)
        answered = time.monotonic()
        self.note(f"{node.shard}: {what} {node.node_id} stopped (SIGTERM, exit 0 after "
                  f"{exited - started:.2f}s), started again (pid {node.process.pid}, answers "
                  f"after {answered - exited:.2f}s); waiting for it in the ISR")
        deadline = time.monotonic() + self.args.step_timeout
        entry: dict[str, Any] | None = None
        while True:
            entry = self.cluster.status_of(node)
            if entry and entry.get("in_sync") and entry.get("lag_seq") == 0 and \
                    entry.get("role") == "follower":
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{node.node_id} not back in sync within "
                                 f"{self.args.step_timeout:g}s; `memring status`: {entry}")
            if node.process.poll() is not None:
                assert node.server is not None
                raise BenchError(f"{node.node_id} exited with {node.process.returncode}:\n"
                                 f"{node.server.log_tail()}")
            time.sleep(POLL)
        synced = time.monotonic()
        return {"exit_s": round(exited - started, 3), "answers_s": round(answered - exited, 3),
                "in_sync_s": round(synced - answered, 3), "took_s": round(synced - started, 3)}

    def transfer(self, shard: str, old: Node, target: Node) -> dict[str, Any]:
        started = time.monotonic()
        done = self.cluster.memring("leader", "transfer", shard, target.node_id)
        took = time.monotonic() - started
        if done.returncode != 0:
            raise BenchError(f"`memring leader transfer {shard} {target.node_id}` failed "
                             f"({done.returncode}): {done.stderr.strip()}")
        self.note(f"{shard}: `memring leader transfer {shard} {target.node_id}`: "
                  f"{done.stdout.strip()} (command {took:.2f}s)")
        # The command returns when etcd shows the new leader; each node learns its own role a
        # txn reply later (and a busy node may not answer `stats` at once): poll, bounded.
        deadline = time.monotonic() + LEADER_TIMEOUT
        while (roles := (target.role(), old.role()))[0] != "leader" or roles[1] in ("leader", ""):
            if time.monotonic() > deadline:
                raise BenchError(f"{LEADER_TIMEOUT:g}s after the transfer {target.node_id} is "
                                 f"{roles[0]!r} and {old.node_id} is {roles[1]!r}")
            time.sleep(POLL)
        return {"transfer_s": round(took, 3), "memring_says": done.stdout.strip()}

    def step(self, kind: str, node: Node, action: Any) -> None:
        started = time.monotonic()
        result = action()
        time.sleep(self.args.settle)  # load after the step, before the next one
        ended = time.monotonic()
        failures = self.load.failures(started, ended)
        latencies = self.load.requests(started, ended)
        slowest = self.load.slowest(started, ended)
        result.update({
            "step": kind, "node": node.node_id, "shard": node.shard,
            "requests": len(latencies), "failed": len(failures),
            "failures": sorted({f"{f.kind}: {f.detail}" for f in failures}),
            "stale_reads": self.load.stale(started, ended),
            "slowest_request_s": round(max(latencies, default=0.0), 4),
            "slowest_request_sent": wall_clock(slowest)})
        self.steps.append(result)
        self.note(f"{node.shard}: {kind} {node.node_id} done: {result['requests']} client "
                  f"requests meanwhile, {result['failed']} failed, {result['stale_reads']} "
                  f"stale, slowest {result['slowest_request_s'] * 1000:.0f} ms")

    def run(self) -> None:
        cluster = self.cluster
        for sid in cluster.shard_ids:
            leader = cluster.leader(sid, LEADER_TIMEOUT)
            followers = [n for n in cluster.shard_nodes(sid) if n is not leader]
            for follower in followers:
                self.step("restart follower", follower,
                          lambda f=follower: self.restart(f, "follower"))
            target = followers[0]

            def hand_over_and_restart(old: Node = leader, new: Node = target,
                                      shard: str = sid) -> dict[str, Any]:
                result = self.transfer(shard, old, new)
                result.update(self.restart(old, "former leader"))
                return result

            self.step("transfer + restart leader", leader, hand_over_and_restart)


# --- the run ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    if "sync" not in replication_modes(args.python):
        raise BenchError("the backend offers no --replication sync")
    for flag, value, low in (("--shards", args.shards, 1), ("--replicas", args.replicas, 2),
                             ("--clients", args.clients, 1), ("--keys", args.keys, args.clients)):
        if value < low:
            raise BenchError(f"{flag} must be at least {low}")
    if args.rate <= 0:
        raise BenchError("--rate must be > 0")
    args.mode = "sync"  # failover.Cluster's health check reads it
    json_path = args.json if args.json is not None else \
        str(REPO / "docs" / "bench" / "rolling-restart.json")
    say(f"rolling restart: {args.shards} shard(s) x {args.replicas} replicas, --replication "
        f"sync, read policy {args.read_policy}; {args.clients} clients through the proxy, "
        f"{args.rate:g} requests/s (half sets, half gets) over {args.keys} keys")
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        cluster = RollingCluster(args, stack)
        try:
            cluster.start()
            say(f"cluster healthy after {cluster.wait_healthy():.1f}s")
            load = Load(cluster.proxy_port, args)
            load.preload()
            say(f"{args.keys} keys written through the proxy; client loop running")
            load.start()
            rolling = Rolling(cluster, load, args)
            try:
                time.sleep(args.settle)
                rolling.run()
            finally:
                load.finish()
            rolled = time.monotonic() - rolling.t0
            cluster.wait_healthy()
            checked, lost, examples = read_back(cluster.proxy_port, load.clients)
            differ = replica_differences(cluster, load.clients)
            epochs = {sid: stats(cluster.leader(sid, LEADER_TIMEOUT).port).get(
                "memring_epoch") for sid in cluster.shard_ids}
        finally:
            if args.logs:  # before the stack stops the processes and drops their logs
                cluster.save_logs(args.logs)
    sets, gets = load.totals()
    failures = load.failures()
    latencies = load.requests()
    summary = {
        "restarted": len(rolling.steps), "rolling_s": round(rolled, 2),
        "total_s": round(time.monotonic() - started, 2),
        "requests": sets + gets, "sets": sets, "gets": gets,
        "failed_requests": len(failures),
        "failures": sorted({f"{f.kind}: {f.detail}" for f in failures}),
        "stale_reads": load.stale(), "acked_keys_checked": checked,
        "lost_acked_writes": lost, "lost_examples": examples,
        "replica_differences": differ,
        "median_request_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
        "slowest_request_ms": round(max(latencies, default=0.0) * 1000, 1),
        "slowest_step_s": max((s["took_s"] for s in rolling.steps), default=0.0),
        "final_epochs": epochs}
    say("")
    say(f"restarted {summary['restarted']} backends in {rolled:.1f}s "
        f"({summary['total_s']:.1f}s in all); client requests: {sets + gets:,} "
        f"({sets:,} sets, {gets:,} gets), failed {len(failures)}, stale reads "
        f"{summary['stale_reads']}; acknowledged writes lost: {lost} of {checked:,} keys; "
        f"replicas differing from their leader: {sum(differ.values())} keys; request latency "
        f"median {summary['median_request_ms']} ms, max {summary['slowest_request_ms']} ms")
    if json_path:
        doc = {
            "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "settings": {k: v for k, v in vars(args).items() if k not in ("json", "python")},
            "host": {"python": platform.python_version(), "machine": platform.machine(),
                     "cpu_model": cpu_model(), "cpus": os.cpu_count()},
            "summary": summary, "steps": rolling.steps}
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        say(f"wrote {path}")
    problems = []
    if failures:
        problems.append(f"{len(failures)} client requests failed: {summary['failures'][:5]}")
    if summary["stale_reads"]:
        problems.append(f"{summary['stale_reads']} stale reads")
    if lost:
        problems.append(f"{lost} acknowledged writes lost, e.g. {examples}")
    if any(differ.values()):
        problems.append(f"replicas differ from their leader: {differ}")
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=3, help="shards (%(default)s)")
    parser.add_argument("--replicas", type=int, default=2,
                        help="nodes per shard, leader included (%(default)s)")
    parser.add_argument("--clients", type=int, default=4,
                        help="client threads, one connection each (%(default)s)")
    parser.add_argument("--rate", type=float, default=400.0,
                        help="client requests per second in all, at most (%(default)s)")
    parser.add_argument("--keys", type=int, default=2000,
                        help="keys, split among the clients (%(default)s)")
    parser.add_argument("--value-size", type=int, default=32,
                        help="bytes per value (%(default)s)")
    parser.add_argument("--read-policy", choices=("leader", "round_robin", "weighted"),
                        default="leader", help="the cluster's read policy (%(default)s)")
    parser.add_argument("--ttl", type=float, default=2.0,
                        help="--lease-ttl of the backends, seconds (%(default)s)")
    parser.add_argument("--max-lag-ms", type=int, default=None,
                        help="the backends' --max-lag-ms (default: theirs)")
    parser.add_argument("--leader-wait-ms", type=int, default=None,
                        help="the proxy's --leader-wait-ms (default: the proxy's own)")
    parser.add_argument("--request-timeout", type=float, default=3.0,
                        help="a request without a reply after this many seconds fails "
                             "(%(default)s)")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds of load before the first step and after each "
                             "(%(default)s)")
    parser.add_argument("--step-timeout", type=float, default=60.0,
                        help="a restarted node not in sync by then fails the run "
                             "(%(default)s)")
    parser.add_argument("--max-seconds", type=float, default=900.0,
                        help="the client loop stops after this long whatever happens "
                             "(%(default)s)")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="where to write the figures (default "
                             "docs/bench/rolling-restart.json; '' for none)")
    parser.add_argument("--logs", metavar="DIR", default="",
                        help="save every process's log (each backend incarnation) there")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs `-m backend`, `-m proxy` and `-m cluster` "
                             "(%(default)s)")
    return run_until_done(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
