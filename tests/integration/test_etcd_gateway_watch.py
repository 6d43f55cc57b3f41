"""Watches through etcd's JSON gateway (cluster.etcd_gateway_watch) on a real etcd: events
with no thread, a compacted revision, over TLS and auth past the token's expiry, a refused
prefix, and back over gRPC when etcd's gateway refuses a certificate with a common name.
(The coordinator contract, the moved and frozen-member watches run on this path too:
test_etcd_coordinator.py, test_etcd_members.py.)"""

from __future__ import annotations

import json
import threading
import urllib.request
from contextlib import AbstractAsyncContextManager

import pytest
import trio

from memring.cluster import etcd_coordinator
from memring.cluster.certificates import CertificateAuthority
from memring.cluster.coordinator import AccessDenied, WatchCompacted, WatchStream
from memring.cluster.etcd_coordinator import EtcdCoordinator
from memring.cluster.etcd_process import EtcdProcess
from memring.cluster.etcd_security import EtcdSecurity
from memring.cluster.records import ClusterConfig, NodeRecord
from tests.helpers.secure_etcd import SecureEtcd, secure_etcd

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]


def _no_grpc_watch(prefix: str, from_revision: int
                   ) -> AbstractAsyncContextManager[WatchStream]:
    raise AssertionError("the watch went over gRPC")


async def test_a_watch_takes_the_gateway_and_no_thread(etcd: EtcdProcess,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Puts and deletes arrive as over gRPC, read by a trio task: no thread is started."""
    with trio.fail_after(20):
        async with EtcdCoordinator.connect(etcd.url, "gw-watch") as coordinator:
            monkeypatch.setattr(coordinator.watches, "_watch_grpc", _no_grpc_watch)
            await coordinator.put_config(ClusterConfig(lease_ttl=2.5))  # a worker thread
            start = (await coordinator.snapshot()).revision
            threads = threading.active_count()
            async with coordinator.open_session(2) as session, \
                    coordinator.watch(start + 1) as stream:
                await coordinator.register_node(session, NodeRecord("n1", "127.0.0.1:1", "s1"))
                await coordinator.revoke(session.lease_id)
                seen: list[tuple[str, str, int]] = []
                async for batch in stream:
                    seen += [(e.kind, e.entry.key, e.entry.lease) for e in batch.events]
                    if any(kind == "delete" for kind, _, _ in seen):
                        break
                assert threading.active_count() <= threads  # (idle workers may end)
            node = coordinator.keyspace.node("n1")
            assert seen == [("put", node, session.lease_id), ("delete", node, 0)]


async def test_a_compacted_revision_is_watch_compacted(etcd: EtcdProcess) -> None:
    with trio.fail_after(20):
        async with EtcdCoordinator.connect(etcd.url, "gw-compact") as coordinator:
            await coordinator.put_config(ClusterConfig(lease_ttl=2.5))
            await coordinator.put_config(ClusterConfig(lease_ttl=3.0))
            now = (await coordinator.snapshot()).revision
            request = urllib.request.Request(f"{etcd.url}/v3/kv/compaction",
                                             json.dumps({"revision": str(now)}).encode())
            with await trio.to_thread.run_sync(urllib.request.urlopen, request) as answer:
                assert answer.status == 200
            with pytest.raises(WatchCompacted, match=f"was compacted \\(now {now}\\)"):
                async with coordinator.watch(now - 1) as stream:
                    await stream.__anext__()
            assert coordinator.gateway.watches


def _without_common_name(etcd: SecureEtcd, ca: CertificateAuthority) -> EtcdSecurity:
    client = ca.issue(f"memring-gateway-watch-{etcd.member.client_port}", common_name=False)
    return EtcdSecurity(str(client.ca), str(client.cert), str(client.key), etcd.users.user,
                        str(etcd.users.password_file))


async def test_watches_over_tls_and_auth_renew_a_stale_token_and_refuse_a_prefix(
        private_ca: CertificateAuthority) -> None:
    """TLS, --client-cert-auth and a user: the watch goes to the gateway with the token; one
    made after the token expired is refused by etcd (created and cancelled, "invalid auth
    token"), made again once with a new token; a prefix the role does not cover is
    AccessDenied, as over gRPC."""
    with secure_etcd(private_ca, "/memring/gwsec", auth_token_ttl=1) as etcd, \
            trio.fail_after(30):
        security = _without_common_name(etcd, private_ca)
        async with EtcdCoordinator.connect(etcd.url, "gwsec", security=security,
                                           call_timeout=3.0) as coordinator:
            await coordinator.put_config(ClusterConfig(lease_ttl=2.5))
            assert coordinator.authentications == 1
            await trio.sleep(2.5)  # > TTL + etcd's 1 s sweep: the token is gone
            async with coordinator.watch(1) as stream:
                batch = await stream.__anext__()
                assert batch.events
            assert coordinator.authentications == 2
            assert "invalid auth token" in etcd.member.log_tail(50)
            assert coordinator.gateway.watches and coordinator.gateway.keepalives
        async with EtcdCoordinator.connect(etcd.url, "elsewhere", security=security,
                                           probe=False, call_timeout=3.0) as outsider:
            with pytest.raises(AccessDenied, match="denied user 'memring' access to "
                               "/memring/elsewhere/ \\(etcdserver: permission denied\\)"):
                async with outsider.watch(1):
                    pass
            assert outsider.gateway.watches


async def test_a_certificate_with_a_common_name_watches_over_grpc(
        secure_etcd: SecureEtcd) -> None:
    """etcd 3.4.10+ refuses gateway calls made with such a certificate: the watch is made
    over gRPC at once, and so are the later ones."""
    with trio.fail_after(20):
        async with EtcdCoordinator.connect(secure_etcd.url, "sec-gw-watch",
                                           security=secure_etcd.security) as coordinator:
            for lease_ttl in (2.5, 3.0):
                await coordinator.put_config(ClusterConfig(lease_ttl=lease_ttl))
                async with coordinator.watch(1) as stream:
                    assert (await stream.__anext__()).events
                assert not coordinator.gateway.watches


async def test_idle_grpc_channels_close_and_reopen(etcd: EtcdProcess,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With keepalives and watches on the gateway, an idle process makes no gRPC call: its
    channels close after GRPC_IDLE_CLOSE (grpcio's threads then stop), checked at each
    keepalive, and the next call opens one again."""
    monkeypatch.setattr(etcd_coordinator, "GRPC_IDLE_CLOSE", 0.5)
    with trio.fail_after(20):
        async with EtcdCoordinator.connect(etcd.url, "gw-idle") as coordinator, \
                coordinator.open_session(2) as session, coordinator.watch(1):
            assert coordinator._channels[0] is not None  # the probe's and the grant's
            await trio.sleep(1.5)  # two keepalives past the idle time
            assert coordinator._channels == [None]
            await coordinator.register_node(session, NodeRecord("n1", "127.0.0.1:1", "s1"))
            assert "n1" in (await coordinator.snapshot()).nodes
            assert coordinator._channels[0] is not None
            assert not session.lost.is_set()
