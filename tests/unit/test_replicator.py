"""The Replicator's roles and tasks: two backends' replicators over loopback peer ports, with
their ClusterMembers on the in-memory coordinator (real clock, 1 s leases; absolute
`fail_after`). Members get real loopback listeners as client addresses, because a follower
probes its leader's port."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from memring.backend.cluster_member import ClusterMember, MemberIdentity
from memring.backend.replication.replicator import Replicator
from memring.backend.settings import BackendSettings
from memring.backend.store import Store
from memring.cluster.certificates import CertificateAuthority
from memring.cluster.memory_coordinator import MemoryCoordinator, MemoryEtcd, open_memory_etcd
from tests.helpers.servers import free_port

pytestmark = pytest.mark.unit


async def node(etcd: MemoryEtcd, node_id: str) -> tuple[ClusterMember, Replicator,
                                                       trio.socket.SocketType]:
    """A member of shard s1 with its replicator (sync mode); neither runs yet."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    sock.listen()
    peer = f"127.0.0.1:{free_port()}"
    member = ClusterMember(MemoryCoordinator(etcd, "unit", call_timeout=0.3),
                           MemberIdentity(node_id, "s1", f"127.0.0.1:{sock.getsockname()[1]}",
                                          peer_address=peer), lease_ttl=1.0)
    settings = BackendSettings(peer_listen=peer, replication="sync")
    replicator = Replicator(Store(), member, settings)
    member.listener = replicator
    return member, replicator, sock


async def isr_nodes(etcd: MemoryEtcd) -> set[str]:
    shard = (await MemoryCoordinator(etcd, "unit").snapshot()).shards.get("s1")
    return {m.node_id for m in shard.isr.members} if shard and shard.isr else set()


async def test_a_leadership_that_began_before_run_is_served_and_its_isr_kept() -> None:
    with trio.fail_after(10):
        async with open_memory_etcd() as etcd, trio.open_nursery() as nursery:
            member, replicator, sock = await node(etcd, "n1")
            nursery.start_soon(member.run)
            while member.leadership is None:  # the first member of a new shard leads it
                await trio.sleep(0.01)
            assert replicator.insync is not None  # before run(): the leadership is not lost
            await nursery.start(replicator.run)
            follower, follower_replicator, follower_sock = await node(etcd, "n2")
            await nursery.start(follower_replicator.run)
            nursery.start_soon(follower.run)
            # the follower is served, catches up, and the ISR task (started by run(), after
            # the leadership began) writes it into the shard's ISR
            while await isr_nodes(etcd) != {"n1", "n2"}:
                await trio.sleep(0.01)
            assert follower.role == "follower"
            assert dict(replicator.stats())["memring_repl_isr"] == "n1,n2"
            nursery.cancel_scope.cancel()
    sock.close()
    follower_sock.close()


@pytest.mark.parametrize(("listen", "secret", "tls", "warned"), [
    ("0.0.0.0", False, False, {"TLS", "secret"}), ("0.0.0.0", True, False, {"TLS"}),
    ("0.0.0.0", False, True, set()), ("0.0.0.0", True, True, set()),
    ("127.0.0.1", False, False, set())])
async def test_a_peer_port_other_machines_reach_without_tls_or_a_secret_is_warned_about(
        listen: str, secret: bool, tls: bool, warned: set[str], tmp_path: Path,
        private_ca: CertificateAuthority, caplog: pytest.LogCaptureFixture) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"x" * 32)
    member = ClusterMember(MemoryCoordinator(MemoryEtcd(), "unit"),
                           MemberIdentity("n1", "s1", "127.0.0.1:1"), lease_ttl=1.0)
    credential = private_ca.issue("n1") if tls else None
    settings = BackendSettings(peer_listen=f"{listen}:{free_port()}", replication="sync",
                               peer_secret_file=str(secret_file) if secret else "",
                               peer_tls=tls, tls_cert=str(credential.cert) if credential else "",
                               tls_key=str(credential.key) if credential else "",
                               tls_ca=str(credential.ca) if credential else "")
    replicator = Replicator(Store(), member, settings)
    caplog.set_level(logging.WARNING, "memring.backend.replication")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(replicator.run)
            replicator.shutdown()
    messages = [r.getMessage() for r in caplog.records]
    found = {what for what, text in (("TLS", "reachable from other machines without TLS"),
                                     ("secret", "without a peer secret"))
             if any(text in m for m in messages)}
    assert found == warned, messages
    assert dict(replicator.stats())["memring_repl_peer_tls"] == ("yes" if tls else "no")
