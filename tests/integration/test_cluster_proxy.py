"""The proxy in cluster mode against a real etcd: it routes from the records it watches.

The cluster's records are written here by hand through the Coordinator (nodes with sessions,
shard records, leaders by campaign), with memcached servers standing in for backends, so these
tests do not depend on the backend's cluster mode; the `memring up` smoke test at the end runs
real backends and is skipped while they have no cluster mode.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager

import pytest
import trio

from memring.cluster.coordinator import Leadership, NodeRecord
from memring.cluster.etcd_coordinator import EtcdCoordinator
from memring.cluster.etcd_process import EtcdProcess
from memring.cluster.records import ClusterConfig
from memring.proxy.ketama import KetamaRing
from tests.helpers import servers
from tests.helpers.cluster import LEADER_WAIT_MS, proxy_argv
from tests.helpers.wire import ask, parse_stats

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]

HOST = servers.HOST


async def backends_up(port: int) -> set[str]:
    """The addresses the proxy has a pool for (`STAT backend:<addr>:state up`)."""
    reply = await ask(port, b"stats\r\n", b"END\r\n")
    up = set()
    for line in reply.decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].startswith("backend:") and \
                parts[1].endswith(":state") and parts[2] == "up":
            up.add(parts[1][len("backend:"):-len(":state")])
    return up


async def wait_until(predicate: object, timeout: float, what: str) -> float:
    """Poll the async `predicate` every 5 ms; the seconds it took to hold."""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        while not await predicate():  # type: ignore[operator]
            await trio.sleep(0.005)
        return trio.current_time() - start
    raise AssertionError(f"not within {timeout}s: {what}")


def key_for(shard_index: int, prefix: str = "k") -> bytes:
    ring = KetamaRing([("s1", 1), ("s2", 1)], "md5")
    for i in range(10000):
        key = f"{prefix}{i}".encode()
        if ring.server_for(key) == shard_index:
            return key
    raise AssertionError("no key found")


async def holds(server: servers.RunningServer, key: bytes) -> bool:
    return b"VALUE" in await ask(server.port, b"get %s\r\n" % key, b"END\r\n")


class HandCluster:
    """Members joined by hand: each a session, a `nodes/` record, maybe the shard's leader."""

    def __init__(self, coordinator: EtcdCoordinator, nursery: trio.Nursery) -> None:
        self.coordinator = coordinator
        self.nursery = nursery
        self.scopes: dict[str, trio.CancelScope] = {}

    async def _member(self, node_id: str, shard: str, address: str, lead: bool, *,
                      task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            async with self.coordinator.open_session(2.0) as session:
                await self.coordinator.ensure_shard(shard, member=node_id)
                await self.coordinator.register_node(session, NodeRecord(node_id, address,
                                                                         shard))
                if lead:
                    won = await self.coordinator.campaign(session, shard, node_id, address,
                                                          unclean=True)
                    assert won is not None, f"{node_id} did not win {shard}"
                else:  # in sync at once, as a leader would say of a caught-up follower
                    view = (await self.coordinator.snapshot()).shards[shard]
                    if view.leader is not None and view.isr is not None:
                        await self.coordinator.update_isr(
                            Leadership(shard, view.leader.node_id, view.epoch,
                                       view.leader.lease_id),
                            {*view.isr.members, session.incarnation(node_id)})
                task_status.started(scope)
                await trio.sleep_forever()

    async def join(self, node_id: str, shard: str, server: servers.RunningServer,
                   lead: bool = False) -> None:
        self.scopes[node_id] = await self.nursery.start(
            self._member, node_id, shard, f"{HOST}:{server.port}", lead)

    def leave(self, node_id: str) -> None:
        """A graceful leave: the session ends and its lease is revoked."""
        self.scopes.pop(node_id).cancel()


@asynccontextmanager
async def hand_cluster(url: str, cluster: str) -> AsyncIterator[HandCluster]:
    async with EtcdCoordinator.connect(url, cluster) as coordinator, \
            trio.open_nursery() as nursery:
        yield HandCluster(coordinator, nursery)
        nursery.cancel_scope.cancel()


async def test_proxy_follows_the_cluster(etcd: EtcdProcess) -> None:
    cluster = "follow"
    with ExitStack() as stack, trio.fail_after(40):
        a, b, c, d, e = (stack.enter_context(servers.memcached()) for _ in range(5))
        # on_shard_error = error: the dead shard's keys below answer SERVER_ERROR, not a miss
        proxy = stack.enter_context(servers.running("proxy", [
            *proxy_argv(etcd.url, cluster), "--on-shard-error", "error"]))
        port = proxy.port
        # an empty cluster: no shard to route to, but the proxy answers
        assert await ask(port, b"get x\r\n") == b"SERVER_ERROR no shards in the cluster\r\n"
        async with hand_cluster(etcd.url, cluster) as hand:
            await hand.join("a", "s1", a, lead=True)
            await hand.join("b", "s1", b)
            await hand.join("c", "s2", c, lead=True)
            await hand.join("d", "s2", d)

            def addr(server: servers.RunningServer) -> str:
                return f"{HOST}:{server.port}"

            async def all_up() -> bool:
                return await backends_up(port) >= {addr(a), addr(b), addr(c), addr(d)}
            await wait_until(all_up, 5, "the proxy routes to all four nodes")

            # registered in etcd
            view = await hand.coordinator.snapshot()
            assert [p.address for p in view.proxies.values()] == [f"{HOST}:{port}"]

            # writes go to the shard's leader alone; reads come back through the proxy
            k1, k2 = key_for(0), key_for(1)
            for key in (k1, k2):
                assert await ask(port, b"set %s 0 0 1\r\nv\r\n" % key) == b"STORED\r\n"
                assert await ask(port, b"get %s\r\n" % key, b"END\r\n") == \
                    b"VALUE %s 0 1\r\nv\r\nEND\r\n" % key
            assert await holds(a, k1) and not await holds(b, k1)
            assert await holds(c, k2) and not await holds(d, k2)
            assert not await holds(c, k1) and not await holds(a, k2)
            # `stats` through the proxy: the leaders' figures (a and c), not the followers'
            for follower in (b, d):
                assert await ask(follower.port, b"set only-here 0 0 1\r\nx\r\n") == \
                    b"STORED\r\n"
            through = parse_stats(await ask(port, b"stats\r\n", b"END\r\n"))
            assert (through["curr_items"], through["cmd_set"]) == ("2", "2"), through
            assert through["memring_shards_answered"] == "2"

            # a node joining and leaving gracefully shows in the routing within 1 s
            start = trio.current_time()
            await hand.join("e", "s1", e)

            async def e_up() -> bool:
                return addr(e) in await backends_up(port)
            await wait_until(e_up, 1.0, "a joining node routed")
            joined = trio.current_time() - start
            start = trio.current_time()
            hand.leave("e")

            async def e_gone() -> bool:
                return addr(e) not in await backends_up(port)
            await wait_until(e_gone, 1.0, "a leaving node unrouted")
            left = trio.current_time() - start
            print(f"join visible after {joined * 1000:.0f} ms, leave after {left * 1000:.0f} ms")

            # an election: a write waits for the new leader, then goes to it (memcached does
            # not fence a deposed leader as a backend does: wait until the proxy saw it go)
            hand.leave("a")

            async def a_gone() -> bool:
                return addr(a) not in await backends_up(port)
            await wait_until(a_gone, 1.0, "the old leader unrouted")
            start = trio.current_time()

            async def write_during_election() -> None:
                assert await ask(port, b"set %s 0 0 2\r\nv2\r\n" % k1) == b"STORED\r\n"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_during_election)
                await trio.sleep(0.3)
                await hand.join("b2", "s1", b, lead=True)
            assert trio.current_time() - start < LEADER_WAIT_MS / 1000 + 0.5
            hand.leave("b")  # b2 is the same server under a new incarnation
            assert await holds(b, k1)

            # no leader at all: the write waits leader_wait_ms, then SERVER_ERROR
            hand.leave("b2")
            await hand.join("b3", "s1", b)  # live, but not leading

            async def b3_only() -> bool:
                return addr(b) in await backends_up(port)
            await wait_until(b3_only, 1.0, "s1's live node without a leader routed")
            for request in (b"set %s 0 0 1\r\nx\r\n" % k1,
                            # with the `leader` read policy reads are the leader's alone
                            # (linearizable): no follower answers in its place
                            b"get %s\r\n" % k1):
                start = trio.current_time()
                reply = await ask(port, request)
                waited = trio.current_time() - start
                assert reply == b"SERVER_ERROR no leader for shard s1\r\n", request
                assert LEADER_WAIT_MS / 1000 - 0.05 <= waited < LEADER_WAIT_MS / 1000 + 0.5
            # the other shard is untouched
            assert await ask(port, b"set %s 0 0 1\r\nw\r\n" % k2) == b"STORED\r\n"

            # a shard with no live node stays on the ring: its keys fail, never remap
            hand.leave("b3")

            async def s1_dead() -> bool:
                return (await ask(port, b"get %s\r\n" % k1)).startswith(b"SERVER_ERROR")
            await wait_until(s1_dead, 2, "shard s1 unroutable")
            assert await ask(port, b"get %s\r\n" % k1) == \
                b"SERVER_ERROR no live node for shard s1\r\n"
            assert await ask(port, b"get %s\r\n" % k2, b"END\r\n") == \
                b"VALUE %s 0 1\r\nw\r\nEND\r\n" % k2

            # the cluster's config overrides the proxy's flag: reads of s1 become misses
            await hand.coordinator.put_config(ClusterConfig(on_shard_error="miss"))

            async def s1_misses() -> bool:
                return await ask(port, b"get %s\r\n" % k1) == b"END\r\n"
            await wait_until(s1_misses, 5, "reads of the dead shard answered as misses")
            assert await ask(port, b"get %s %s\r\n" % (k1, k2), b"END\r\n") == \
                b"VALUE %s 0 1\r\nw\r\nEND\r\n" % k2
            assert (await ask(port, b"set %s 0 0 1\r\nv\r\n" % k1)).startswith(
                b"SERVER_ERROR ")  # writes: the error, whatever the policy


async def test_proxy_waits_for_etcd_at_start(etcd: EtcdProcess) -> None:
    """Started before the cluster has any record, the proxy picks the shards up live."""
    cluster = "late"
    with ExitStack() as stack, trio.fail_after(30):
        a = stack.enter_context(servers.memcached())
        proxy = stack.enter_context(servers.running("proxy", proxy_argv(etcd.url,
                                                                         cluster)))
        async with hand_cluster(etcd.url, cluster) as hand:
            await hand.join("a", "s1", a, lead=True)

            async def routed() -> bool:
                return await ask(proxy.port, b"set k 0 0 1\r\nv\r\n") == b"STORED\r\n"
            await wait_until(routed, 3, "the proxy routes to the first shard")
        # the proxy revokes its registration when it stops
        servers.stop(proxy.process)
        async with EtcdCoordinator.connect(etcd.url, cluster) as coordinator:
            assert not (await coordinator.snapshot()).proxies


def _backend_has_cluster_mode() -> bool:
    out = subprocess.run([sys.executable, "-m", "memring.backend", "--help"], capture_output=True,
                         text=True, timeout=30).stdout
    return "--etcd" in out


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_memring_up_smoke(tmp_path: object) -> None:
    if not _backend_has_cluster_mode():
        pytest.skip("the backend has no cluster mode yet (`python -m memring.backend --help` lacks "
                    "--etcd): `memring up` cannot start real shards")
    pymemcache = pytest.importorskip("pymemcache.client.base")
    port = servers.free_port()
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    up = subprocess.Popen([sys.executable, "-m", "memring.cluster", "up", "--shards", "2",
                           "--replicas", "2", "--port", str(port), "--cluster", "smoke"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                          stdin=subprocess.DEVNULL, text=True)
    children: set[int] = set()
    try:
        assert up.stdout is not None
        deadline = time.monotonic() + 45
        lines = []
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("memring up: ready"):
                break
        else:
            raise AssertionError("memring up not ready in 45 s:\n" + "".join(lines))
        assert lines and lines[-1].startswith("memring up: ready"), "".join(lines)
        children = _descendants(up.pid)
        assert len(children) >= 6  # etcd, 4 backends, a proxy
        client = pymemcache.Client((HOST, port), connect_timeout=5, timeout=5)
        client.set("hello", b"world")
        assert client.get("hello") == b"world"
        client.close()
        assert any("peer links authenticated with" in line for line in lines), "".join(lines)
        deadline = time.monotonic() + 10
        while True:  # the followers pass the authenticated handshake and join the ISR
            status = subprocess.run([sys.executable, "-m", "memring.cluster", "status",
                                     "--json", "--cluster", "smoke"], capture_output=True,
                                    text=True, env=env, timeout=30)
            assert status.returncode == 0, status.stdout + status.stderr
            doc = json.loads(status.stdout)
            if all(len(s["isr"]) == 2 for s in doc["shards"]) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert all(len(s["isr"]) == 2 for s in doc["shards"]), doc
        assert doc["cluster"] == "smoke"
        assert [s["id"] for s in doc["shards"]] == ["s1", "s2"]
        for shard in doc["shards"]:
            assert shard["leader"] and len(shard["nodes"]) == 2
        assert [p["address"] for p in doc["proxies"]] == [f"{HOST}:{port}"]
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(20)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in children):
            time.sleep(0.05)
        survivors = [p for p in children if _alive(p)]
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)
    assert up.returncode == 0
    assert not survivors, f"processes left behind: {survivors}"


def test_memring_operations(etcd: EtcdProcess) -> None:
    """`memring shard add/list/remove`, `config get/set`, and `status` exiting 1 without a
    leader, against a real etcd."""
    def memring(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "memring.cluster", *args, "--etcd",
                               etcd.url, "--cluster", "ops"], capture_output=True,
                              text=True, timeout=30)

    assert memring("shard", "add", "s1", "--weight", "2").returncode == 0
    again = memring("shard", "add", "s1")
    assert again.returncode == 1 and "already exists" in again.stderr
    assert "s1  weight 2  leader -" in memring("shard", "list").stdout
    status = memring("status", "--json")
    assert status.returncode == 1  # a shard without a leader
    doc = json.loads(status.stdout)
    assert [(s["id"], s["leader"], s["nodes"]) for s in doc["shards"]] == [("s1", None, [])]
    assert "NO LEADER" in memring("status").stdout
    assert memring("config", "set", "read_policy", "round_robin").returncode == 0
    assert memring("config", "get", "read_policy").stdout.strip() == "round_robin"
    assert memring("config", "set", "lease_ttl", "1.5").returncode == 0
    assert json.loads(memring("config", "get").stdout)["lease_ttl"] == 1.5
    bad = memring("config", "set", "hash", "crc32")
    assert bad.returncode == 2 and "hash" in bad.stderr
    assert memring("config", "get", "on_shard_error").stdout.strip() == "miss"
    assert memring("config", "set", "on_shard_error", "error").returncode == 0
    assert json.loads(memring("config", "get").stdout)["on_shard_error"] == "error"
    bad = memring("config", "set", "on_shard_error", "ignore")
    assert bad.returncode == 2 and "on_shard_error" in bad.stderr
    assert memring("shard", "remove", "s1").returncode == 0
    assert memring("shard", "remove", "s1").returncode == 1
    assert memring("status").returncode == 0
