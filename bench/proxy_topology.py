"""The proxy at size: a topology of 256 shards x 3 replicas, from a static file and from etcd.

In this process (the proxy's own code, with `time.perf_counter` and `tracemalloc`; each
figure the median of `--repeat` runs):
- the static file: parse time, Python memory allocated (tracemalloc peak) and RSS growth;
- the ketama ring of 256 shards: build time; a route lookup (hash + bisect) over 256 shards
  beside 3 shards, alternating rounds, and their ratio;
- the proxy loading it (`ProxyServer.serve` on a port-0 listener: pools and router) and each
  topology change through `apply_topology`: one shard's leader changes, a shard is added;
  the memory kept after `--changes` changes (a leak would grow it);
- from etcd (a real one, started here): the 768 node records, 256 leaders and ISRs written
  on one lease; `snapshot()` + `shard_specs()` time; the time from a leader change in etcd to
  the proxy's router routing the shard to the new leader (watch + view + swap).
Then real proxy processes over the same file, this tree beside `--base` (another checkout:
the code before lazy pools), alternating rounds: time until the proxy answers, RSS, the TCP
connections it holds and the CPU it burns over `--idle` seconds, with 3 shards on real
memcached processes and the other nodes on closed ports.

    flock /tmp/memring-bench.lock .venv/bin/python bench/proxy_topology.py \\
        --base /work/wt-scale-fleet-base --json docs/bench/proxy-topology.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from backend_vs_memcached import (
    REPO,
    BenchError,
    _pdeathsig,
    ask_version,
    free_port,
    run_until_done,
    stop,
)

HOST = "127.0.0.1"
SHARDS, REPLICAS = 256, 3


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(action: Callable[[], Any], repeat: int) -> tuple[Any, dict[str, float]]:
    """`action()`'s last result; median wall ms and tracemalloc peak KiB over `repeat` runs."""
    times, peaks = [], []
    result = None
    for _ in range(repeat):
        gc.collect()
        tracemalloc.start()
        started = time.perf_counter()
        result = action()
        times.append((time.perf_counter() - started) * 1000)
        peaks.append(tracemalloc.get_traced_memory()[1] / 1024)
        tracemalloc.stop()
    return result, {"ms": round(statistics.median(times), 3),
                    "peak_kib": round(statistics.median(peaks))}


def topology(leaders: list[int], closed: Iterator[int]) -> Any:
    from memring.cluster.static_topology import NodeSpec, ShardSpec

    shards = []
    for index in range(SHARDS):
        first = leaders[index] if index < len(leaders) else next(closed)
        ports = [first, *(next(closed) for _ in range(REPLICAS - 1))]
        shards.append(ShardSpec(f"s{index}", tuple(NodeSpec(HOST, p) for p in ports)))
    return tuple(shards)


def closed_ports() -> Iterator[int]:
    """Ports nothing listens on, each once (30000-59999 minus the ones in use)."""
    for port in range(30000, 60000):
        with contextlib.suppress(OSError), socket.socket() as s:
            s.bind((HOST, port))
            yield port


# --- in this process --------------------------------------------------------------------------


def static_figures(path: Path, repeat: int) -> dict[str, Any]:
    from memring.proxy.settings import ProxySettings, load_topology

    before = rss_kib()
    settings, figures = measured(lambda: load_topology(ProxySettings(config=str(path))), repeat)
    figures["rss_growth_kib"] = rss_kib() - before
    figures["file_bytes"] = path.stat().st_size
    assert len(settings.shards) == SHARDS
    return figures


def base_ketama(base: str) -> Any:
    """The --base checkout's ketama module (it imports only the standard library)."""
    spec = importlib.util.spec_from_file_location("base_ketama", Path(base) / "proxy" /
                                                  "ketama.py")
    if spec is None or spec.loader is None:
        raise BenchError(f"no proxy/ketama.py under {base}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ring_figures(repeat: int, rounds: int, lookups: int, base: str) -> dict[str, Any]:
    from memring.proxy.ketama import KetamaRing

    names = [(f"s{i}", 1) for i in range(SHARDS)]
    ring, build = measured(lambda: KetamaRing(names), repeat)
    builds: dict[str, Any] = {}
    if base:  # this tree's build beside the base's, alternating rounds
        old = base_ketama(base).KetamaRing
        times: dict[str, list[float]] = {"this tree": [], "base": []}
        for _ in range(rounds):
            for label, make in (("this tree", KetamaRing), ("base", old)):
                started = time.perf_counter()
                built = make(names)
                times[label].append((time.perf_counter() - started) * 1000)
                assert list(built._values) == ring._values and built._owners == ring._owners
        builds = {label: round(statistics.median(t), 2) for label, t in times.items()}
        builds["ratio_this_vs_base"] = round(builds["this tree"] / builds["base"], 3)
    small = KetamaRing(names[:3])
    keys = [b"key:%d" % i for i in range(lookups)]
    per: dict[str, list[float]] = {"256 shards": [], "3 shards": []}
    for _ in range(rounds):  # alternating: the machine's drift hits both alike
        for label, subject in (("256 shards", ring), ("3 shards", small)):
            lookup = subject.server_for
            started = time.perf_counter()
            for key in keys:
                lookup(key)
            per[label].append((time.perf_counter() - started) / lookups * 1e9)
    big, few = statistics.median(per["256 shards"]), statistics.median(per["3 shards"])
    return {"build": build, "build_ab_ms": builds, "points": len(ring), "lookup_ns_256": round(big),
            "lookup_ns_3": round(few), "lookup_ratio_256_vs_3": round(big / few, 3),
            "rounds": rounds, "lookups_per_round": lookups}


def proxy_figures(shards: Any, repeat: int, changes: int) -> dict[str, Any]:
    """Load, leader-change and shard-add costs of a real ProxyServer in this process."""
    import trio

    from memring.cluster.static_topology import NodeSpec, ShardSpec
    from memring.proxy.server import ProxyServer
    from memring.proxy.settings import ProxySettings

    settings = ProxySettings(listen=f"{HOST}:0", shards=shards)
    out: dict[str, Any] = {}

    async def main() -> None:
        loads = []
        for _ in range(repeat):
            gc.collect()
            tracemalloc.start()
            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                server = ProxyServer(settings)
                await nursery.start(server.serve)
                loads.append(((time.perf_counter() - started) * 1000,
                              tracemalloc.get_traced_memory()[0] / 1024))
                tracemalloc.stop()
                if len(loads) == repeat:
                    out["pools"] = len(server.state.pools())
                    out.update(await changes_of(server))
                server.shutdown(0)
                nursery.cancel_scope.cancel()
        out["load"] = {"ms": round(statistics.median(t for t, _ in loads), 2),
                       "kept_kib": round(statistics.median(m for _, m in loads))}

    async def changes_of(server: ProxyServer) -> dict[str, Any]:
        leader_ms, add_ms = [], []
        gc.collect()
        tracemalloc.start()
        current = settings
        for n in range(changes):
            shard = current.shards[n % SHARDS]
            moved = ShardSpec(shard.name, (*shard.nodes[1:], shard.nodes[0]), shard.weight)
            current = replace(current, shards=tuple(
                moved if s.name == shard.name else s for s in current.shards))
            started = time.perf_counter()
            server.apply_topology(current)
            leader_ms.append((time.perf_counter() - started) * 1000)
            await trio.sleep(0)
        gc.collect()
        after_leaders = tracemalloc.get_traced_memory()[0] / 1024
        for n in range(changes):
            extra = ShardSpec(f"extra{n}", tuple(NodeSpec(HOST, 1 + n * 3 + r)
                                                 for r in range(REPLICAS)))
            grown = replace(settings, shards=(*settings.shards, extra))
            started = time.perf_counter()
            server.apply_topology(grown)
            add_ms.append((time.perf_counter() - started) * 1000)
            server.apply_topology(settings)  # and back: the added pools are closed
            await trio.sleep(0)
        await trio.sleep(0.1)
        gc.collect()
        # the ring built last replaced one built before tracing began: it is not kept growth
        outside_ring = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, "*ketama.py")])
        kept = sum(stat.size for stat in outside_ring.statistics("filename")) / 1024
        tracemalloc.stop()
        return {"leader_change_ms": round(statistics.median(leader_ms), 2),
                "shard_added_ms": round(statistics.median(add_ms), 2),
                "changes": changes, "kept_after_changes_kib": round(kept),
                "kept_after_leader_changes_kib": round(after_leaders)}

    trio.run(main)
    return out


def etcd_figures(repeat: int, changes: int) -> dict[str, Any]:
    """The same topology as records in a real etcd, read and followed by a ProxyServer."""
    import trio

    from memring.cluster.coordinator import ClusterConfig
    from memring.cluster.etcd_coordinator import EtcdCoordinator
    from memring.cluster.etcd_process import running_etcd
    from memring.cluster.records import NodeRecord
    from memring.proxy.cluster_topology import ClusterTopology, settings_for, shard_specs
    from memring.proxy.server import ProxyServer
    from memring.proxy.settings import ProxySettings

    out: dict[str, Any] = {}
    ports = closed_ports()

    async def main(url: str) -> None:
        async with EtcdCoordinator.connect(url, "topology") as etcd:
            await etcd.put_config(ClusterConfig(lease_ttl=60.0))
            started = time.perf_counter()
            async with etcd.open_session(60.0) as session:
                leaderships = {}
                addresses: dict[str, str] = {}
                for index in range(SHARDS):
                    sid = f"s{index}"
                    await etcd.ensure_shard(sid, weight=1)
                    nodes = [f"{sid}-r{r}" for r in range(REPLICAS)]
                    for node in nodes:
                        addresses[node] = f"{HOST}:{next(ports)}"
                        await etcd.register_node(session, NodeRecord(node, addresses[node], sid))
                    leadership = await etcd.campaign(session, sid, nodes[0],
                                                     addresses[nodes[0]])
                    assert leadership is not None, sid
                    await etcd.update_isr(leadership, [session.incarnation(n) for n in nodes])
                    leaderships[sid] = leadership
                out["records_written_s"] = round(time.perf_counter() - started, 2)

                async def read() -> Any:
                    return shard_specs(await etcd.snapshot())

                times = []
                for _ in range(repeat):
                    tracemalloc.start()
                    t = time.perf_counter()
                    specs = await read()
                    times.append(((time.perf_counter() - t) * 1000,
                                  tracemalloc.get_traced_memory()[1] / 1024))
                    tracemalloc.stop()
                assert len(specs) == SHARDS and all(len(s.nodes) == REPLICAS for s in specs)
                out["snapshot_and_specs"] = {
                    "ms": round(statistics.median(t for t, _ in times), 1),
                    "peak_kib": round(statistics.median(m for _, m in times))}
                base = ProxySettings(listen=f"{HOST}:0", etcd=url, cluster="topology")
                topology = ClusterTopology(etcd, base)
                server = ProxyServer(settings_for(base, await topology.first_view()))
                async with trio.open_nursery() as nursery:
                    await nursery.start(server.serve)
                    nursery.start_soon(topology.follow, server)
                    await trio.sleep(0.5)
                    seen = []
                    for n in range(changes):
                        sid = f"s{(n * 37) % SHARDS}"
                        old = leaderships[sid]
                        nodes = [f"{sid}-r{r}" for r in range(REPLICAS)]
                        successor = nodes[(nodes.index(old.node_id) + 1) % REPLICAS]
                        address = addresses[successor]
                        t = trio.current_time()
                        await etcd.resign(old)
                        new = await etcd.campaign(session, sid, successor, address)
                        assert new is not None
                        leaderships[sid] = new
                        with trio.fail_after(10):
                            while server.state.router.by_name[sid].leader.address != address:
                                await trio.sleep(0.001)
                        seen.append((trio.current_time() - t) * 1000)
                    out["leader_change_to_routed_ms"] = {
                        "median": round(statistics.median(seen), 1), "max": round(max(seen), 1),
                        "changes": changes, "includes": "resign + campaign txns in etcd"}
                    out["swaps"] = topology.swaps
                    server.shutdown(0)
                    nursery.cancel_scope.cancel()

    with running_etcd() as member:
        trio.run(main, member.url)
    return out


# --- proxy processes: this tree beside --base --------------------------------------------------


# `python -m memring.proxy` from the checkout in argv[1]: the venv's editable install finds
# `memring` before PYTHONPATH would, so its finder is dropped first.
LAUNCH = """import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path.insert(0, sys.argv.pop(1))
runpy.run_module("memring.proxy", run_name="__main__", alter_sys=True)
"""


def proxy_process(config: Path, tree: str, idle: float, backends: set[int]
                  ) -> dict[str, Any]:
    port = free_port()
    argv = [sys.executable, "-c", LAUNCH, tree, "--listen", f"{HOST}:{port}", "--config",
            str(config)]
    with tempfile.TemporaryFile() as log:
        started = time.monotonic()
        process = subprocess.Popen(argv, cwd="/", stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=_pdeathsig, start_new_session=True)
        try:
            while ask_version(port) is None:
                if process.poll() is not None or time.monotonic() - started > 60:
                    log.seek(0)
                    raise BenchError(f"proxy did not start: {log.read()[-500:]!r}")
                time.sleep(0.02)
            ready = time.monotonic() - started
            cpu0 = cpu_seconds(process.pid)
            time.sleep(idle)
            figures = {"ready_s": round(ready, 2), "rss_mib": round(rss_kib(process.pid) / 1024, 1),
                       "idle_cpu_pct": round((cpu_seconds(process.pid) - cpu0) / idle * 100, 1),
                       "fds": len(os.listdir(f"/proc/{process.pid}/fd"))}
            figures.update(connections(process.pid, backends))
            process.send_signal(signal.SIGTERM)
            return figures
        finally:
            stop(process)


def connections(pid: int, backends: set[int]) -> dict[str, int]:
    """TCP sockets the process holds: established to the real backends, and all others
    that are not its listener (connecting to closed ports, closing)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    established = other = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] not in inodes or fields[3] == "0A":  # 0A: listening
            continue
        if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) in backends:
            established += 1
        else:
            other += 1
    return {"backend_connections": established, "other_tcp_sockets": other}


def process_ab(config: Path, base: str, rounds: int, idle: float, backends: set[int]
               ) -> dict[str, Any]:
    trees = {"this tree": str(REPO), "base": base}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for n in range(rounds):
        for name, tree in trees.items():
            figures = proxy_process(config, tree, idle, backends)
            figures["load_average"] = load_average()
            runs[name].append(figures)
            progress(f"round {n + 1} {name}: {figures}")
    medians = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]
                      if key != "load_average"} for name, rs in runs.items()}
    ratio = {key: round(medians["this tree"][key] / medians["base"][key], 3)
             for key in medians["base"] if medians["base"][key]}
    return {"runs": runs, "median": medians, "ratio_this_vs_base": ratio}


def run(args: argparse.Namespace) -> int:
    from memring.cluster.static_topology import shards_toml

    sys.path.insert(0, str(REPO))
    result: dict[str, Any] = {"load_average_start": load_average(),
                              "topology": f"{SHARDS} shards x {REPLICAS} replicas"}
    progress(f"proxy at size: {result['topology']}; load average {result['load_average_start']}")
    with contextlib.ExitStack() as stack:
        memcached = []
        for _ in range(3):
            port = free_port()
            process = subprocess.Popen(["memcached", "-p", str(port), "-l", HOST, "-U", "0",
                                        *(["-u", "root"] if os.geteuid() == 0 else [])],
                                       preexec_fn=_pdeathsig)
            stack.callback(stop, process)
            memcached.append(port)
        shards = topology(memcached, closed_ports())
        config = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "big.toml"
        config.write_text(shards_toml(shards))
        result["static_file"] = static_figures(config, args.repeat)
        progress(f"static file: {result['static_file']}")
        result["ketama"] = ring_figures(args.repeat, args.rounds, args.lookups, args.base)
        progress(f"ketama: {result['ketama']}")
        result["proxy"] = proxy_figures(shards, args.repeat, args.changes)
        progress(f"proxy: {result['proxy']}")
        result["etcd"] = etcd_figures(args.repeat, args.changes)
        progress(f"etcd: {result['etcd']}")
        if args.base:
            for port in memcached:
                while ask_version(port) is None:
                    time.sleep(0.05)
            result["processes"] = process_ab(config, args.base, args.rounds_processes,
                                             args.idle, set(memcached))
    result["load_average_end"] = load_average()
    print(json.dumps(result, indent=2, default=str))
    if args.json:
        doc = {"generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
               **result}
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str) + "\n")
        progress(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per in-process figure")
    parser.add_argument("--rounds", type=int, default=5, help="alternating lookup rounds")
    parser.add_argument("--lookups", type=int, default=100_000, help="keys per lookup round")
    parser.add_argument("--changes", type=int, default=20, help="topology changes timed")
    parser.add_argument("--base", default="", help="another checkout (the code before): "
                        "its proxy processes run beside this tree's")
    parser.add_argument("--rounds-processes", type=int, default=3)
    parser.add_argument("--idle", type=float, default=3.0,
                        help="seconds each proxy process is watched idle (%(default)s)")
    parser.add_argument("--json", metavar="FILE", default="")
    args = parser.parse_args(argv)
    for name in ("repeat", "rounds", "lookups", "changes", "rounds_processes"):
        if not 1 <= getattr(args, name) <= 1_000_000:
            parser.error(f"--{name.replace('_', '-')} out of range")
    return run_until_done(run, args)


if __name__ == "__main__":
    sys.exit(main())
