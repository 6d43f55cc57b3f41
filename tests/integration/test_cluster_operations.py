"""`memring leader transfer`, `node drain`, `node remove` and `shard elect` against a real etcd,
real backend processes and a real proxy in cluster mode.

One etcd serves the module; each test uses its own cluster name. The commands run as the
user runs them (`python -m memring.cluster ...`); every wait is bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest
import trio

from memring.cluster.coordinator import ClusterConfig
from memring.cluster.etcd_coordinator import EtcdCoordinator
from memring.cluster.etcd_process import EtcdProcess
from tests.helpers import servers, wire
from tests.helpers.cluster import SHARD, Shard, node_id, proxy_argv, wait_for, wait_in_sync
from tests.helpers.wire import ask

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]

_clusters = itertools.count(1)


@contextlib.asynccontextmanager
async def cluster_of(etcd: EtcdProcess, size: int, config: ClusterConfig | None = None
                     ) -> AsyncIterator[Shard]:
    """A fresh cluster (its `config` written first) with `size` backends in shard s1."""
    name = f"ops{next(_clusters)}"
    if config is not None:
        async with EtcdCoordinator.connect(etcd.url, name) as coordinator:
            await coordinator.put_config(config)
    with contextlib.ExitStack() as stack:
        shard = Shard(etcd, stack, name, {})
        for _ in range(size):
            shard.start()
        yield shard


async def memring(shard: Shard, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "memring.cluster", *args, "--etcd", shard.etcd.url,
            "--cluster", shard.cluster]
    return await trio.to_thread.run_sync(lambda: subprocess.run(
        argv, capture_output=True, text=True, timeout=30))


async def status(shard: Shard) -> dict[str, object]:
    doc: dict[str, object] = json.loads((await memring(shard, "status", "--json")).stdout)
    return doc


def node_ids_in_status(doc: dict[str, object]) -> list[str]:
    shards = doc["shards"]
    assert isinstance(shards, list)
    return [n["id"] for s in shards for n in s["nodes"]]


def gets_served(node: servers.RunningServer) -> int:
    return int(wire.stats(node)["cmd_get"])


async def test_leader_transfer_moves_leadership_and_writes_go_on(etcd: EtcdProcess) -> None:
    async with cluster_of(etcd, 3) as shard:
        with trio.fail_after(40):
            proxy = shard.stack.enter_context(servers.running(
                "proxy", proxy_argv(etcd.url, shard.cluster)))
            await wait_in_sync(shard)
            leader = shard.leader()
            target = next(n for n in shard.live() if n is not leader)
            assert await ask(proxy.port, b"set before 0 0 1\r\nx\r\n") == b"STORED\r\n"

            bad = await memring(shard, "leader", "transfer", SHARD, "nobody")
            assert bad.returncode == 1 and "not a live member" in bad.stderr

            replies: list[bytes] = []
            done = trio.Event()

            async def write_through_proxy() -> None:
                i = 0
                while not done.is_set():
                    replies.append(await ask(proxy.port, b"set w%d 0 0 1\r\nx\r\n" % i))
                    i += 1
                    await trio.sleep(0.005)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_through_proxy)
                started = time.monotonic()
                result = await memring(shard, "leader", "transfer", SHARD, node_id(target))
                moved = await trio.to_thread.run_sync(lambda: wait_for(
                    lambda: shard.role(target) == "leader" and time.monotonic(), 3.0,
                    "the target leading"))
                await trio.sleep(0.3)  # writes after the handover
                done.set()
            assert result.returncode == 0, result.stdout + result.stderr
            stored = replies.count(b"STORED\r\n")
            print(f"\nleader transfer: {result.stdout.strip()}; command start -> target "
                  f"leads {(moved - started) * 1000:.0f} ms (includes the CLI's start-up); "
                  f"{stored} writes stored, {len(replies) - stored} refused "
                  f"({sorted(set(replies) - {b'STORED' + bytes([13, 10])})})")
            assert moved - started < 3.0
            assert shard.role(leader) == "follower"
            assert (await shard.view()).shards[SHARD].hint is None  # the hint was dropped
            # writes through the proxy go on, now to the target
            assert replies[-5:] == [b"STORED\r\n"] * 5, replies[-5:]
            assert await ask(proxy.port, b"set after 0 0 1\r\ny\r\n") == b"STORED\r\n"
            assert wire.request(target, b"get after\r\n") == b"VALUE after 0 1\r\ny\r\nEND\r\n"
            # already the leader: nothing to do
            again = await memring(shard, "leader", "transfer", SHARD, node_id(target))
            assert again.returncode == 0 and "already leads" in again.stdout


async def test_drained_leader_hands_over_and_gets_no_reads(etcd: EtcdProcess) -> None:
    async with cluster_of(etcd, 2, ClusterConfig(read_policy="round_robin")) as shard:
        with trio.fail_after(40):
            proxy = shard.stack.enter_context(servers.running(
                "proxy", proxy_argv(etcd.url, shard.cluster)))
            await wait_in_sync(shard)
            leader = shard.leader()
            other = next(n for n in shard.live() if n is not leader)

            async def reads_reach(node: servers.RunningServer) -> bool:
                before = gets_served(node)
                for _ in range(20):
                    assert await ask(proxy.port, b"get r\r\n", b"END\r\n") == b"END\r\n"
                return gets_served(node) > before

            # round robin: both nodes serve reads while none is drained
            with trio.fail_after(5):
                while not (await reads_reach(leader) and await reads_reach(other)):
                    await trio.sleep(0.05)

            started = time.monotonic()
            result = await memring(shard, "node", "drain", node_id(leader))
            assert result.returncode == 0, result.stderr
            assert f"{node_id(other)} leads" in result.stdout, result.stdout
            handed = time.monotonic() - started
            assert shard.role(other) == "leader" and shard.role(leader) == "follower"
            doc = await status(shard)
            nodes = {n["id"]: n for s in doc["shards"] for n in s["nodes"]}  # type: ignore[attr-defined]
            assert nodes[node_id(leader)]["drained"] is True
            assert nodes[node_id(other)]["drained"] is False
            # the proxy stops sending the drained node reads (within its watch delay)
            with trio.fail_after(2):
                while await reads_reach(leader):
                    await trio.sleep(0.05)
            assert not await reads_reach(leader)
            assert await reads_reach(other)
            assert await ask(proxy.port, b"set d 0 0 1\r\nx\r\n") == b"STORED\r\n"
            print(f"\nnode drain of the leader -> handed over, command took "
                  f"{handed * 1000:.0f} ms (includes the CLI's start-up)")

            # a drained node never campaigns, even when it is the only one left
            other.process.kill()
            other.process.wait(5)
            await trio.sleep(1.0)  # the drained node probes the dead leader's port meanwhile
            view = await shard.view()
            assert view.shards[SHARD].leader is None
            assert shard.role(leader) == "follower"
            # undone, it leads again
            undo = await memring(shard, "node", "drain", node_id(leader), "--undo")
            assert undo.returncode == 0, undo.stderr
            await trio.to_thread.run_sync(lambda: shard.leader(3.0))


async def test_node_remove_takes_it_out_of_status(etcd: EtcdProcess) -> None:
    async with cluster_of(etcd, 3) as shard:
        with trio.fail_after(30):
            await wait_in_sync(shard)
            leader = shard.leader()
            stopped, killed = (n for n in shard.live() if n is not leader)
            # a node stopped gracefully is `down` in status until removed
            stopped.process.terminate()
            stopped.process.wait(5)
            doc = await status(shard)
            down = [n for s in doc["shards"] for n in s["nodes"]  # type: ignore[attr-defined]
                    if n["id"] == node_id(stopped)]
            assert [n["role"] for n in down] == ["down"]
            result = await memring(shard, "node", "remove", node_id(stopped))
            assert result.returncode == 0, result.stderr
            assert node_id(stopped) not in node_ids_in_status(await status(shard))
            # a node killed a moment ago is still registered: its lease is revoked at once
            killed.process.kill()
            killed.process.wait(5)
            result = await memring(shard, "node", "remove", node_id(killed))
            assert result.returncode == 0 and "lease revoked" in result.stdout, result.stdout
            doc = await status(shard)
            assert node_ids_in_status(doc) == [node_id(leader)]
            record = (await shard.view()).shards[SHARD].record
            assert record is not None and record.replicas == (node_id(leader),)
            missing = await memring(shard, "node", "remove", "nobody")
            assert missing.returncode == 1 and "no node" in missing.stderr


async def test_shard_elect_unclean_when_the_isr_is_gone(etcd: EtcdProcess) -> None:
    async with cluster_of(etcd, 1, ClusterConfig(unclean_election="never")) as shard:
        with trio.fail_after(40):
            first = shard.leader()
            assert wire.request(first, b"set k 0 0 1\r\nv\r\n") == b"STORED\r\n"
            first.process.kill()  # the only ISR member dies
            first.process.wait(5)
            late = shard.start()  # not in the ISR: it must not lead on its own
            await trio.sleep(1.5)  # it revokes the dead leader's lease, then waits
            view = await shard.view()
            assert view.shards[SHARD].leader is None
            assert shard.role(late) == "follower"
            assert (await memring(shard, "status")).returncode == 1

            clean = await memring(shard, "shard", "elect", SHARD)
            assert clean.returncode == 1 and "--unclean" in clean.stderr, clean.stderr
            assert node_id(late) in clean.stderr
            started = time.monotonic()
            result = await memring(shard, "shard", "elect", SHARD, "--unclean")
            took = time.monotonic() - started
            assert result.returncode == 0, result.stdout + result.stderr
            assert shard.role(late) == "leader"
            assert wire.request(late, b"set k 0 0 1\r\nw\r\n") == b"STORED\r\n"
            view = await shard.view()
            isr = view.shards[SHARD].isr
            assert isr is not None and isr.node_ids == (node_id(late),)
            assert (await memring(shard, "status")).returncode == 0
            again = await memring(shard, "shard", "elect", SHARD)
            assert again.returncode == 0 and "already has a leader" in again.stdout
            print(f"\nshard elect --unclean: {result.stdout.strip()} "
                  f"(command {took * 1000:.0f} ms)")
