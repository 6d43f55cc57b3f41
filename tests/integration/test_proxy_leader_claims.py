"""A write waiting for its shard's new leader reaches it before the proxy's view names it
(proxy/leader_claims.py): real etcd, a shard of two sync-replicated backends, a proxy whose
only way to etcd is a relay the test cuts (tests/helpers/jepsen/relay.py), so its watch
stands still while the old leader is killed and the follower takes over.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest
import trio

from memring.cluster.etcd_process import EtcdProcess
from memring.proxy.ketama import KetamaRing
from tests.helpers import servers, wire
from tests.helpers.cluster import SHARD, ReplicatedShard, node_id, wait_for
from tests.helpers.jepsen.relay import CutLink

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]

LEADER_WAIT_MS = 4000  # longer than a takeover: the write waits for the new leader


class SyncShard(ReplicatedShard):
    mode = "sync"


class RelayThread:
    """A CutLink served by its own trio run in a thread: the test's blocking waits do not
    stall it; `cut()` and `heal()` are called into that run."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.link = CutLink("etcd", target)
        self._started = threading.Event()
        self._stop = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.link.serve)
            self._started.set()
            await trio.to_thread.run_sync(self._stop.wait)
            nursery.cancel_scope.cancel()

    @property
    def url(self) -> str:
        return f"http://{self.link.address}"

    def cut(self) -> None:
        trio.from_thread.run_sync(self.link.cut, trio_token=self._token)

    def heal(self) -> None:
        trio.from_thread.run_sync(self.link.heal, trio_token=self._token)

    def __enter__(self) -> RelayThread:
        self._thread.start()
        assert self._started.wait(10), "the relay did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def set_one(sock: socket.socket, key: bytes, value: bytes) -> bytes:
    sock.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
    return wire.read_until(sock, b"\r\n", timeout=10)


def state_of(proxy: servers.RunningServer, node: servers.RunningServer) -> str:
    return wire.stats(proxy).get(f"backend:{node_id(node)}:state", "")


def relay_to(etcd: EtcdProcess) -> RelayThread:
    target = urlsplit(etcd.url)
    assert target.hostname is not None and target.port is not None
    return RelayThread((target.hostname, target.port))


def proxy_through(relay: RelayThread, cluster: str) -> contextlib.AbstractContextManager[
        servers.RunningServer]:
    return servers.running("proxy", [
        sys.executable, "-m", "memring.proxy", "--listen", servers.HOST + ":{port}",
        "--etcd", relay.url, "--cluster", cluster, "--leader-wait-ms", str(LEADER_WAIT_MS)])


def leader_and_follower(shard: SyncShard) -> tuple[servers.RunningServer, servers.RunningServer]:
    first, second = shard.start(), shard.start()
    leader = shard.leader()
    follower = second if leader is first else first
    wait_for(lambda: wire.stats(follower).get("memring_role") == "follower", 10, "a follower")
    return leader, follower


def test_a_waiting_write_reaches_the_new_leader_before_the_view_names_it(
        etcd: EtcdProcess) -> None:
    with contextlib.ExitStack() as stack:
        shard = SyncShard(etcd, stack, f"lc{time.monotonic_ns()}", {})
        leader, follower = leader_and_follower(shard)
        relay = stack.enter_context(relay_to(etcd))
        proxy = stack.enter_context(proxy_through(relay, shard.cluster))
        with wire.connect(proxy) as sock:
            wait_for(lambda: set_one(sock, b"before", b"1") == b"STORED\r\n", 10,
                     "writes through the proxy")
        epoch_before = int(wire.stats(leader)["memring_epoch"])

        relay.cut()  # the proxy's view of etcd stands still from here
        leader.process.kill()
        leader.process.wait()
        # a write sent to the dead leader's reconnecting pool fails at once (not this
        # change's path): send once the pool is ejected and writes wait for a leader
        wait_for(lambda: state_of(proxy, leader) not in ("", "up"), 10, "the old leader ejected")
        with wire.connect(proxy) as sock:
            started = time.monotonic()
            reply = set_one(sock, b"after", b"2")
            took = time.monotonic() - started
        print(f"\nthe write waited {took * 1000:.0f} ms for the new leader, the view cut off")
        assert reply == b"STORED\r\n", reply
        # the follower took it as the new leader, at a newer epoch than the view's
        stats = wire.stats(follower)
        assert stats["memring_role"] == "leader" and int(stats["memring_epoch"]) > epoch_before
        assert wire.request(follower, b"get after\r\n") == b"VALUE after 0 1\r\n2\r\nEND\r\n"
        # the proxy learnt it from the claim, not from its view (still cut off)
        log = proxy.log_text()
        assert f"shard {SHARD}: " in log and "claims to lead" in log, log[-2000:]
        assert f"(epoch {int(stats['memring_epoch'])}) in the view" not in log
        relay.heal()


def test_a_reply_ready_is_not_held_behind_a_write_still_waiting(etcd: EtcdProcess) -> None:
    """One connection pipelines a write to s1 (its leader killed, its follower takes over)
    and then one to s2 (its only node killed: no leader for the whole wait); the first STORED
    is sent when it is ready, not once the second write has given up."""
    ring = KetamaRing([("s1", 1), ("s2", 1)], "md5")
    keys = {shard: next(b"k%d" % i for i in range(1000) if ring.server_for(b"k%d" % i) == index)
            for index, shard in enumerate(("s1", "s2"))}
    with contextlib.ExitStack() as stack:
        shard = SyncShard(etcd, stack, f"lr{time.monotonic_ns()}", {})
        leader, follower = leader_and_follower(shard)
        lonely = stack.enter_context(servers.running("memring-backend", servers.backend_argv(
            "--etcd", etcd.url, "--cluster", shard.cluster, "--shard", "s2",
            "--replication", "sync", "--peer-listen", f"{servers.HOST}:{servers.free_port()}")))
        wait_for(lambda: wire.stats(lonely).get("memring_role") == "leader", 10, "s2's leader")
        relay = stack.enter_context(relay_to(etcd))
        proxy = stack.enter_context(proxy_through(relay, shard.cluster))
        with wire.connect(proxy) as sock:
            for key in keys.values():
                wait_for(lambda key=key: set_one(sock, key, b"1") == b"STORED\r\n", 10,
                         f"writes to {key!r} through the proxy")

        relay.cut()
        for node in (leader, lonely):
            node.process.kill()
            node.process.wait()
        wait_for(lambda: all(state_of(proxy, n) not in ("", "up") for n in (leader, lonely)),
                 10, "both ejected")
        with wire.connect(proxy) as sock:
            started = time.monotonic()
            sock.sendall(b"set %s 0 0 1\r\n2\r\nset %s 0 0 1\r\n2\r\n" % (keys["s1"], keys["s2"]))
            first = wire.read_until(sock, b"\r\n", timeout=10)
            first_at = time.monotonic() - started
            second = wire.read_until(sock, b"\r\n", timeout=10)
            second_at = time.monotonic() - started
        print(f"\nfirst reply after {first_at * 1000:.0f} ms, second after {second_at * 1000:.0f} ms")
        assert first == b"STORED\r\n" and second.startswith(b"SERVER_ERROR "), (first, second)
        assert second_at >= LEADER_WAIT_MS / 1000 - 0.1  # s2's write waited it out
        assert first_at < LEADER_WAIT_MS / 1000 / 2, first_at  # s1's did not wait for it
        assert wire.request(follower, b"get %s\r\n" % keys["s1"]).startswith(b"VALUE ")
        relay.heal()
