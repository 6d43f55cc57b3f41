"""Many failovers at once: kill -9 a quarter of all shard leaders at the same moment (and
SIGSTOP etcd's raft leader for ~2 s meanwhile) under steady writes through the proxy; per
shard, the time until it takes writes again; afterwards, every acknowledged write read back.

The cluster is bench/failover.py's (its Cluster, Load and read-back), bigger: `--shards` x
`--replicas` backends in cluster mode with sync replication (started all at once), a proxy
in cluster mode, and a 3-member etcd cluster (cluster.etcd_process; `--etcd-members 1` for
one, then without the etcd pause). Before the fault it measures etcd's request rates at idle
with the backends alone, then with the proxy too (bench/etcd_rates.py), and again over the
failovers: the figures of docs/scaling.md.

Per victim shard: the fault -> the new leader seen in its `stats` -> the first write to the
shard sent after the fault and acknowledged (ms); every other shard's longest gap between
acknowledged writes over the same window (what the etcd pause did to shards that lost
nothing); acknowledged writes lost (must be 0). Progress goes to stderr, the table and the
summary to stdout. Bounded (start-up, health and the trial have deadlines); every process is
stopped at the end, also on an error or Ctrl-C.

    flock /tmp/memring-bench.lock .venv/bin/python bench/many_failovers.py
    .venv/bin/python bench/many_failovers.py --quick --json ''    # 8 x 2, 2 victims
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import etcd_rates
from backend_vs_memcached import cpu_model
from failover import (
    CLUSTER,
    HOST,
    REPO,
    Cluster,
    Connection,
    Load,
    Node,
    Op,
    check_placement,
    code_version,
    counts,
    read_back,
    replication_modes,
    stats,
)
from processes import (
    BenchError,
    Server,
    _pdeathsig,
    ask_version,
    run_until_done,
    spawned,
    stop,
)

START_TIMEOUT = 180.0   # every backend answers `version`
HEALTHY_TIMEOUT = 180.0  # every shard led, followers in sync, the proxy routing
REREAD_TIMEOUT = 15.0  # an acknowledged write not read back is asked again this long: a shard
# whose sessions etcd revoked on resuming (#12528) answered misses while it re-elected


def free_port() -> int:
    """A loopback port handed out once, below the kernel's ephemeral range: 96 ports taken
    at once from bind(0) met another process's (`port ... already in use`, seen once)."""
    from memring.cluster.etcd_process import free_port as unused_port

    return unused_port()


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Fleet(Cluster):
    """failover.py's cluster, started all at once, over one or several etcd members."""

    def __init__(self, args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
        super().__init__(args, stack)
        self.etcd_urls: list[str] = []
        self.etcd_cluster: Any = None  # an EtcdCluster when there are several members

    def start_etcd(self) -> None:
        from memring.cluster.etcd_process import start_etcd, start_etcd_cluster

        try:
            if self.args.keep_logs:  # zap: a stamp to the millisecond on each line
                os.environ.setdefault("ETCD_LOGGER", "zap")
            if self.args.etcd_members > 1:
                self.etcd_cluster = start_etcd_cluster(self.args.etcd_members)
                self.stack.callback(self.etcd_cluster.stop)
                if self.args.keep_logs:  # copied before stop removes their data dirs
                    for i, m in enumerate(self.etcd_cluster.members):
                        self.stack.callback(self.copy_etcd_log, m.log_path, f"etcd-{i + 1}")
                self.etcd_urls = [m.url for m in self.etcd_cluster.members]
            else:
                member = start_etcd()
                self.stack.callback(member.stop)
                self.etcd_urls = [member.url]
        except RuntimeError as e:
            raise BenchError(f"etcd: {e}") from e
        self.etcd_url = ",".join(self.etcd_urls)
        progress(f"etcd: {len(self.etcd_urls)} member(s) {self.etcd_url}")
        self._write_records()

    def log_file(self, node_id: str) -> IO[bytes]:
        """Where a backend logs: DIR/NODE.log with --keep-logs DIR, else a temporary file."""
        if self.args.keep_logs:
            return open(Path(self.args.keep_logs) / f"{node_id}.log", "w+b")
        return tempfile.TemporaryFile()

    def start_backends(self) -> float:
        """Spawn every backend at once, then wait until each answers; the seconds it took."""
        args = self.args
        started = time.monotonic()
        for sid in self.shard_ids:
            for r in range(1, args.replicas + 1):
                port = free_port()
                argv = [args.python, "-m", "memring.backend", "--listen", f"{HOST}:{port}",
                        "--etcd", self.etcd_url, "--cluster", CLUSTER, "--shard", sid,
                        "--node-id", f"{sid}-r{r}", "--lease-ttl", f"{args.ttl:g}",
                        "--replication", args.mode, "--peer-listen", f"{HOST}:{free_port()}"]
                node = Node(f"{sid}-r{r}", sid, port, argv)
                log = self.stack.enter_context(self.log_file(node.node_id))
                try:
                    process = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL,
                                               stdout=log, stderr=subprocess.STDOUT,
                                               preexec_fn=_pdeathsig, start_new_session=True)
                except OSError as e:
                    raise BenchError(f"cannot start {node.node_id}: {e}") from e
                self.stack.callback(stop, process)
                node.server = Server(node.node_id, argv, port, process, log)
                self.nodes.append(node)
                self.servers.append(node.server)
        waiting = list(self.nodes)
        deadline = started + START_TIMEOUT
        while waiting:
            if time.monotonic() > deadline:
                raise BenchError(f"{len(waiting)} backends did not answer within "
                                 f"{START_TIMEOUT:g}s, e.g. {waiting[0].node_id}")
            for node in list(waiting):
                if node.process.poll() is not None:
                    assert node.server is not None
                    raise BenchError(f"{node.node_id} exited with {node.process.returncode}:"
                                     f"\n{node.server.log_tail()}")
                if ask_version(node.port) is not None:
                    waiting.remove(node)
            time.sleep(0.1)
        return time.monotonic() - started

    def shards_unready(self) -> str | None:
        """What keeps a shard from taking writes (None: each has one leader with every
        follower connected and caught up)."""
        for sid in self.shard_ids:
            leaders = self.leaders(sid)
            if len(leaders) != 1:
                return f"shard {sid} has {len(leaders)} leaders"
            s = stats(leaders[0].port)
            if s.get("memring_repl_followers") != str(self.args.replicas - 1):
                return f"shard {sid}: {s.get('memring_repl_followers')} followers"
            if s.get("memring_repl_max_lag", "0") != "0":
                return f"shard {sid}: followers lag"
        return None

    def wait_shards(self) -> float:
        started = time.monotonic()
        while (problem := self.shards_unready()) is not None:
            if time.monotonic() - started > HEALTHY_TIMEOUT:
                raise BenchError(f"shards not ready after {HEALTHY_TIMEOUT:g}s: {problem}")
            time.sleep(0.2)
        return time.monotonic() - started

    def start_proxy(self) -> None:
        self.proxy_port = free_port()
        argv = [self.args.python, "-m", "memring.proxy", "--listen",
                f"{HOST}:{self.proxy_port}", "--etcd", self.etcd_url, "--cluster", CLUSTER]
        proxy, _ = self.stack.enter_context(
            spawned("proxy", argv, self.proxy_port, ask_version, "`version`"))
        self.servers.append(proxy)
        if self.args.keep_logs:  # copied before `spawned` closes its temporary file
            self.stack.callback(self.copy_log, proxy.log, "proxy")

    def copy_etcd_log(self, path: Path, name: str) -> None:
        with contextlib.suppress(OSError):
            (Path(self.args.keep_logs) / f"{name}.log").write_bytes(path.read_bytes())

    def copy_log(self, log: IO[bytes], name: str) -> None:
        log.seek(0)
        (Path(self.args.keep_logs) / f"{name}.log").write_bytes(log.read())


class ShardLoad(Load):
    """failover.py's load with one writer connection per shard: a write waiting for its
    shard's new leader holds up the replies behind it on its connection (pipelined, in
    order), which would charge the victims' failover to every other shard."""

    def __init__(self, port: int, ring: Any, shard_ids: list[str], victim: str,
                 args: argparse.Namespace) -> None:
        super().__init__(port, 1, ring, shard_ids, victim, args)
        self.by_shard = {sid: Connection(port, self.selector) for sid in shard_ids}
        self.writers = list(self.by_shard.values())

    def _write(self, now: float) -> None:
        self.seq += 1
        key = b"fo:1:%d" % self.seq
        value = b"%012d" % self.seq + self.pad
        op = Op("set", key, self.shard_of(key), now, value)
        self.ops.append(op)
        conn = self.by_shard[op.shard]
        if not conn.ready(now):
            op.done, op.outcome, op.detail = now, "error", "cannot connect to the proxy"
            return
        conn.send(op, b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))


def acked_gaps(ops: list[Any], shard: str, start: float, end: float) -> float:
    """The longest time without an acknowledged write to `shard` within [start, end]."""
    times = sorted(op.done for op in ops if op.kind == "set" and op.shard == shard
                   and op.outcome == "stored" and start <= op.done <= end)
    edges = [start, *times, end]
    return max(b - a for a, b in itertools.pairwise(edges))


def fault(fleet: Fleet, load: Load, victims: list[str], args: argparse.Namespace
          ) -> dict[str, Any]:
    """kill -9 every victim's leader at once, pause etcd's leader meanwhile; the timings."""
    old = {sid: fleet.leaders(sid)[0] for sid in victims}
    survivors = {sid: [n for n in fleet.shard_nodes(sid) if n is not old[sid]]
                 for sid in victims}
    etcd_leader = fleet.etcd_cluster.leader() \
        if fleet.etcd_cluster is not None and args.etcd_pause > 0 else None  # 0: no pause
    before = etcd_rates.sample(fleet.etcd_urls)
    t0, t0_wall = time.monotonic(), time.time()
    for node in old.values():
        node.process.kill()
    paused_at = None
    if etcd_leader is not None:
        etcd_leader.pause()
        paused_at = time.monotonic()
    progress(f"killed the leaders of {', '.join(victims)} at {time.time():.3f}"
             + (f"; etcd leader {etcd_leader.url} paused" if etcd_leader else ""))
    elected: dict[str, tuple[float, str]] = {}
    first: dict[str, float] = {}
    deadline = t0 + args.trial_timeout
    try:
        while time.monotonic() < deadline and (len(first) < len(victims) or paused_at
                                               is not None or len(elected) < len(victims)):
            if paused_at is not None and time.monotonic() - paused_at >= args.etcd_pause:
                etcd_leader.resume()
                paused_at = None
                progress("etcd leader resumed")
            for sid in victims:
                if sid not in elected:
                    leading = [n for n in survivors[sid] if n.role() == "leader"]
                    if leading:
                        elected[sid] = (time.monotonic(), leading[0].node_id)
            ops = list(load.ops)
            for sid in victims:
                if sid not in first:
                    done = [op.done for op in ops if op.kind == "set" and op.shard == sid
                            and op.sent > t0 and op.outcome == "stored"]
                    if done:
                        first[sid] = min(done)
            time.sleep(0.02)
    finally:
        if paused_at is not None:
            etcd_leader.resume()
    if etcd_leader is not None:  # the counters of the paused member, once it answers again
        etcd_rates.sample([etcd_leader.url])
    missing = [sid for sid in victims if sid not in first]
    if missing:
        raise BenchError(f"no write acknowledged within {args.trial_timeout:g}s of the fault "
                         f"on {', '.join(missing)}")
    last = max(first.values())
    time.sleep(max(0.0, last + args.after - time.monotonic()))
    after = etcd_rates.sample(fleet.etcd_urls)
    return {"t0": t0, "t0_wall": t0_wall, "end": last + args.after,
            "old": {s: n.node_id for s, n in old.items()},
            "elected": elected, "first": first, "etcd_paused": etcd_leader is not None,
            "frozen_url": etcd_leader.url if etcd_leader is not None else None,
            "etcd_during": etcd_rates.rates(before, after)}


LOG_TIME = re.compile(r'^ts=(\S+)Z .*? msg="(.*)"$')


def log_events(path: Path, since: float) -> list[tuple[float, str]]:
    """(wall-clock time, message) of each line of a kept log written at or after `since`."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        match = LOG_TIME.match(line)
        if match is None:
            continue
        when = datetime.datetime.fromisoformat(match[1]).replace(
            tzinfo=datetime.UTC).timestamp()
        if when >= since - 0.001:  # the log's stamps are whole milliseconds
            events.append((when, match[2]))
    return events


def failover_steps(log_dir: Path, sid: str, old: str, new: str, t0_wall: float
                   ) -> dict[str, int | None]:
    """When each step of one shard's failover happened, ms after the fault, from the kept
    logs: the survivor saw its leader's port refuse, it led, its ISR dropped the old
    leader (its writes wait for that etcd write), the proxy's view named it, a waiting write
    heard its claim to lead; `proxy_lag_ms`: from leading to the first of the last two."""
    steps: dict[str, tuple[Path, str]] = {
        "detected_ms": (log_dir / f"{new}.log", f"leader {old} of shard {sid} refuses"),
        "led_ms": (log_dir / f"{new}.log", f"leader of shard {sid} (epoch"),
        "isr_shrunk_ms": (log_dir / f"{new}.log", f"ISR: dropped {old} "),
        "proxy_routed_ms": (log_dir / "proxy.log", f"shard {sid}: leader {new} (epoch"),
        # a waiting write found it leading before the view did (proxy/leader_claims.py)
        "proxy_claimed_ms": (log_dir / "proxy.log", f"shard {sid}: {new} claims to lead"),
    }
    found: dict[str, int | None] = {}
    cache: dict[Path, list[tuple[float, str]]] = {}
    for name, (path, text) in steps.items():
        if path not in cache:
            cache[path] = log_events(path, t0_wall) if path.exists() else []
        found[name] = next((round((when - t0_wall) * 1000) for when, message in cache[path]
                            if text in message), None)
    known = [found[k] for k in ("proxy_routed_ms", "proxy_claimed_ms") if found[k] is not None]
    found["proxy_lag_ms"] = min(known) - found["led_ms"] if known and found["led_ms"] is not None \
        else None
    return found


# a coordinator's log lines naming the member it moves to (cluster.etcd_coordinator)
CLIENT_MOVE = re.compile(r"(?:again through|moving the watch to) (\S+)")


def client_moves(log_dir: Path, frozen_url: str, t0_wall: float, resumed_wall: float,
                 until_wall: float) -> dict[str, int]:
    """In every kept log: while etcd's leader was frozen, how often a client moved to another
    etcd member (a call resent, a watch moved) and how often to the frozen one; from the
    fault to `until_wall`, how many processes lost their session."""
    moves = to_frozen = lost = 0
    for path in sorted(log_dir.glob("*.log")):
        events = [(w, m) for w, m in log_events(path, t0_wall) if w <= until_wall]
        for when, message in events:
            match = CLIENT_MOVE.search(message)
            if match is not None and when <= resumed_wall:
                moves += 1
                to_frozen += match[1].rstrip(".,;") == frozen_url
        lost += any(message.startswith("session ") and " lost: " in message
                    for _, message in events)
    return {"moves": moves, "to_frozen_member": to_frozen, "processes_lost_session": lost}


ETCD_ELECTED = re.compile(r'"ts":"([^"]+)Z".*"msg":"raft\.node: \w+ elected leader \w+ at term')


def etcd_elected_ms(log_dir: Path, t0_wall: float) -> int | None:
    """When a member of etcd first logged a new leader after the fault, ms after it (etcd's
    zap logs, which --keep-logs asks for; None without them)."""
    times = []
    for path in log_dir.glob("etcd-*.log"):
        for line in path.read_text(errors="replace").splitlines():
            match = ETCD_ELECTED.search(line)
            if match is None:
                continue
            when = datetime.datetime.fromisoformat(match[1]).replace(
                tzinfo=datetime.UTC).timestamp()
            if when >= t0_wall:
                times.append(when)
    return round((min(times) - t0_wall) * 1000) if times else None


def etcd_leader_changes(log_dir: Path) -> int | None:
    """Raft leaders etcd elected after its first (each member's "became leader" lines, all
    members): the pause's election and any spurious one (None without etcd's logs)."""
    paths = list(log_dir.glob("etcd-*.log"))
    if not paths:
        return None
    elections = sum(path.read_text(errors="replace").count('became leader at term')
                    for path in paths)
    return max(0, elections - 1)


def run(args: argparse.Namespace) -> int:
    from memring.proxy.ketama import KetamaRing

    if args.quick:
        args.shards, args.idle_seconds = 8, 3.0
    victims_n = args.victims or max(1, args.shards // 4)
    if args.shards < 2 or args.replicas < 2 or not 1 <= victims_n <= args.shards:
        raise BenchError("needs --shards >= 2, --replicas >= 2, 1 <= --victims <= --shards")
    modes = replication_modes(args.python)
    if "sync" not in modes:
        raise BenchError("the backend offers no sync replication")
    args.mode = "sync"
    args.leader_wait_ms = None
    result: dict[str, Any] = {"load_average_start": load_average()}
    progress(f"many failovers: {args.shards} shards x {args.replicas}, {victims_n} leaders "
             f"killed at once, {args.etcd_members} etcd member(s); load average "
             f"{result['load_average_start']}")
    ring = KetamaRing([(f"s{i}", 1) for i in range(1, args.shards + 1)], "md5")
    rng = random.Random(args.seed)
    if args.keep_logs:
        Path(args.keep_logs).mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        fleet = Fleet(args, stack)
        fleet.start_etcd()
        result["backends_answer_s"] = round(fleet.start_backends(), 1)
        progress(f"{len(fleet.nodes)} backends answer after {result['backends_answer_s']} s")
        result["shards_ready_s"] = round(fleet.wait_shards(), 1)
        progress(f"every shard led and in sync {result['shards_ready_s']} s later")
        etcd: dict[str, Any] = {}
        etcd["idle_backends"] = etcd_rates.measure(fleet.etcd_urls, args.idle_seconds)
        fleet.start_proxy()
        fleet.wait_healthy(HEALTHY_TIMEOUT)
        etcd["idle_with_proxy"] = etcd_rates.measure(fleet.etcd_urls, args.idle_seconds)
        progress(f"etcd at idle: {etcd['idle_backends']['requests_per_s']} requests/s with "
                 f"the backends, {etcd['idle_with_proxy']['requests_per_s']} with the proxy")
        check_placement(fleet, ring)
        victims = sorted(rng.sample(fleet.shard_ids, victims_n), key=lambda s: int(s[1:]))
        load = ShardLoad(fleet.proxy_port, ring, fleet.shard_ids, victims[0], args)
        load.start()
        try:
            time.sleep(args.steady)
            result["load_average_fault"] = load_average()
            timings = fault(fleet, load, victims, args)
        finally:
            load.stop()
        lost = read_back(fleet.proxy_port, load.ops)
        first_pass = len(lost)
        if lost:  # a shard re-electing answers a miss (on_shard_error "miss"): ask again later
            progress(f"{len(lost)} acknowledged writes not read back (e.g. {lost[:3]}): "
                     f"reading them again for up to {REREAD_TIMEOUT:g} s")
            deadline = time.monotonic() + REREAD_TIMEOUT
            while lost and time.monotonic() < deadline:
                time.sleep(0.5)
                wanted = set(lost)
                lost = read_back(fleet.proxy_port, [op for op in load.ops if op.key in wanted])
        etcd["during_failovers"] = timings.pop("etcd_during")
    t0, end = timings["t0"], timings["end"]
    rows = []
    for sid in victims:
        when, who = timings["elected"].get(sid, (None, "-"))
        rows.append({"shard": sid, "old_leader": timings["old"][sid], "new_leader": who,
                     "elected_ms": None if when is None else round((when - t0) * 1000),
                     "first_write_ms": round((timings["first"][sid] - t0) * 1000)})
    if args.keep_logs:
        for row in rows:
            row.update(failover_steps(Path(args.keep_logs), row["shard"], row["old_leader"],
                                      row["new_leader"], timings["t0_wall"]))
    for row in rows:  # each victim's writes sent after the fault: when sent and answered
        row["writes_after_fault"] = [
            (round((op.sent - t0) * 1000), round((op.done - t0) * 1000) if op.done else None,
             op.outcome) for op in load.ops
            if op.kind == "set" and op.shard == row["shard"] and op.sent > t0][:40]
    others = [sid for sid in fleet.shard_ids if sid not in victims]
    gaps = {sid: round(acked_gaps(load.ops, sid, t0, end) * 1000) for sid in others}
    firsts = [r["first_write_ms"] for r in rows]
    writes = counts(load.ops, "set")
    summary: dict[str, Any] = {
        "first_write_ms": {"median": statistics.median(firsts), "max": max(firsts)},
        "other_shards_longest_ack_gap_ms": {"median": statistics.median(gaps.values()),
                                            "max": max(gaps.values())} if gaps else None,
        "acked": writes.get("stored", 0), "failed_writes": sum(
            v for k, v in writes.items() if k != "stored"),
        "lost_acked_writes": len(lost),
        "not_read_back_at_first": first_pass,
    }
    lags = [r["proxy_lag_ms"] for r in rows if r.get("proxy_lag_ms") is not None]
    if lags:
        summary["proxy_lag_after_leading_ms"] = {"median": statistics.median(lags),
                                                 "max": max(lags)}
    elected = etcd_elected_ms(Path(args.keep_logs), timings["t0_wall"]) \
        if args.keep_logs and timings["frozen_url"] else None
    if elected is not None:  # what is ours: the time from etcd's election on
        summary["etcd_elected_ms"] = elected
        led = [r["led_ms"] for r in rows if r.get("led_ms") is not None]
        summary["after_etcd_election_ms"] = {
            "led_median": statistics.median(led) - elected if led else None,
            "first_write_median": statistics.median(firsts) - elected,
            "first_write_max": max(firsts) - elected}
    if args.keep_logs:
        summary["etcd_leader_changes"] = etcd_leader_changes(Path(args.keep_logs))
    if args.keep_logs and timings["frozen_url"]:  # the fault's window: to the bench's `end`
        summary["etcd_clients"] = client_moves(Path(args.keep_logs), timings["frozen_url"],
                                               timings["t0_wall"],
                                               timings["t0_wall"] + args.etcd_pause,
                                               timings["t0_wall"] + end - t0)
    result.update({"settings": {k: v for k, v in vars(args).items() if k not in ("json",)},
                   "victims": rows, "other_shards_gap_ms": gaps, "summary": summary,
                   "etcd": etcd, "etcd_paused": timings["etcd_paused"],
                   "nodes": len(fleet.nodes), "proxies": 1})
    print("| shard | old leader | new leader | fault -> new leader | fault -> first write |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shard']} | {r['old_leader']} | {r['new_leader']} | "
              f"{r['elected_ms'] if r['elected_ms'] is not None else '-'} ms | "
              f"{r['first_write_ms']} ms |")
    print(f"\n{victims_n} of {args.shards} leaders killed at once"
          + (" with etcd's leader paused " + f"{args.etcd_pause:g} s" if timings["etcd_paused"]
             else "") + f": first write median {summary['first_write_ms']['median']} ms, max "
          f"{summary['first_write_ms']['max']} ms; other shards' longest gap between "
          f"acknowledged writes: median {summary['other_shards_longest_ack_gap_ms']['median']}"
          f" ms, max {summary['other_shards_longest_ack_gap_ms']['max']} ms; acknowledged "
          f"writes lost: {len(lost)} of {summary['acked']:,} ({first_pass} not read back at "
          f"first; failed writes {summary['failed_writes']}); load average "
          f"{result['load_average_fault']}")
    if args.keep_logs:
        print("\nFrom the kept logs, ms after the fault (wall clocks; '-': no such line):\n")
        print("| shard | follower saw the port refuse | led | ISR shrunk | proxy routed | "
              "proxy heard its claim | proxy's lag after leading | first write |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            cells = [r.get(k) for k in ("detected_ms", "led_ms", "isr_shrunk_ms",
                                        "proxy_routed_ms", "proxy_claimed_ms", "proxy_lag_ms",
                                        "first_write_ms")]
            print(f"| {r['shard']} | " + " | ".join("-" if c is None else str(c)
                                                     for c in cells) + " |")
        if lags:
            print(f"\nThe proxy's lag after leading (routed, or heard the claim): median "
                  f"{statistics.median(lags)} ms, max {max(lags)} ms")
        if "after_etcd_election_ms" in summary:
            after = summary["after_etcd_election_ms"]
            print(f"\netcd elected a new leader {summary['etcd_elected_ms']} ms after the fault;"
                  f" from then: led median {after['led_median']} ms, first write median "
                  f"{after['first_write_median']} ms, max {after['first_write_max']} ms")
        if "etcd_clients" in summary:
            clients = summary["etcd_clients"]
            print(f"\nWhile etcd's leader was frozen, etcd clients moved {clients['moves']} "
                  f"times, {clients['to_frozen_member']} of them to the frozen member; to "
                  f"{round((end - t0) * 1000)} ms after the fault "
                  f"{clients['processes_lost_session']} processes lost their session")
        print()
    for name, figures in etcd.items():
        print(f"etcd {name}: {figures['requests_per_s']} requests/s "
              f"({figures['unary_per_s']} unary, {figures['store_writes_per_s']} store writes)"
              f", {figures['watchers']:g} watchers on {figures['watch_streams']:g} streams")
    if args.json:
        doc = {"generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
               "code": code_version(),
               "host": {"python": platform.python_version(), "cpu_model": cpu_model(),
                        "cpus": os.cpu_count()}, **result}
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        progress(f"wrote {path}")
    if lost:
        print(f"problem: {len(lost)} acknowledged writes lost, e.g. {lost[:3]}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=24, help="shards (%(default)s)")
    parser.add_argument("--replicas", type=int, default=2, help="nodes per shard (%(default)s)")
    parser.add_argument("--victims", type=int, default=0,
                        help="leaders killed at once (default: a quarter of the shards)")
    parser.add_argument("--quick", action="store_true", help="8 shards, 2 victims, 3 s idle")
    parser.add_argument("--etcd-members", type=int, default=3, choices=(1, 3, 5),
                        help="etcd cluster size (%(default)s)")
    parser.add_argument("--etcd-pause", type=float, default=2.0,
                        help="seconds etcd's leader is SIGSTOPped (%(default)s; 0: not paused)")
    parser.add_argument("--ttl", type=float, default=2.0, help="lease TTL (%(default)s)")
    parser.add_argument("--rate", type=float, default=600.0,
                        help="sets per second through the proxy (%(default)s)")
    parser.add_argument("--read-rate", type=float, default=100.0,
                        help="gets per second (%(default)s)")
    parser.add_argument("--connections", type=int, default=4, help="writer connections")
    parser.add_argument("--value-size", type=int, default=32)
    parser.add_argument("--request-timeout", type=float, default=3.0)
    parser.add_argument("--steady", type=float, default=2.0,
                        help="seconds of load before the fault (%(default)s)")
    parser.add_argument("--after", type=float, default=2.0,
                        help="seconds of load after the last shard's first write (%(default)s)")
    parser.add_argument("--idle-seconds", type=float, default=5.0,
                        help="each idle etcd-rate interval (%(default)s)")
    parser.add_argument("--trial-timeout", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=18, help="picks the victims")
    parser.add_argument("--keep-logs", metavar="DIR", default="",
                        help="write each backend's log to DIR/NODE.log, the proxy's to "
                        "DIR/proxy.log (default: not kept)")
    parser.add_argument("--json", metavar="FILE", default=str(REPO / "docs" / "bench" /
                                                               "many-failovers.json"),
                        help="where to write the figures ('' for none; default %(default)s)")
    parser.add_argument("--python", default=sys.executable)
    return run_until_done(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
