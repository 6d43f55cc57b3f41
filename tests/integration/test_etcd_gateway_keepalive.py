"""Lease keepalives through etcd's JSON gateway (cluster.etcd_gateway) on a real etcd: over TLS
with a client certificate and a user, past the token's expiry; back over gRPC when etcd's
gateway refuses a certificate with a common name; across a frozen member, without losing the
session; etcd's refusals and unreachable or non-HTTP peers mapped."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator

import pytest
import trio

from memring.cluster.certificates import CertificateAuthority
from memring.cluster.etcd_coordinator import EtcdCoordinator
from memring.cluster.etcd_gateway import EtcdGateway, GatewayRefused, GatewayUnreachable
from memring.cluster.etcd_leases import KEEPALIVE_PATH
from memring.cluster.etcd_process import EtcdCluster, EtcdProcess, free_port, running_etcd_cluster
from memring.cluster.etcd_security import EtcdSecurity
from tests.helpers.secure_etcd import SecureEtcd, secure_etcd

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]


@pytest.fixture(scope="module")
def etcd3() -> Iterator[EtcdCluster]:
    with running_etcd_cluster(3) as etcd:
        yield etcd


def _without_common_name(etcd: SecureEtcd, ca: CertificateAuthority) -> EtcdSecurity:
    client = ca.issue(f"memring-gateway-client-{etcd.member.client_port}", common_name=False)
    return EtcdSecurity(str(client.ca), str(client.cert), str(client.key), etcd.users.user,
                        str(etcd.users.password_file))


async def test_keepalives_over_tls_and_auth_take_the_gateway_past_the_tokens_expiry(
        private_ca: CertificateAuthority) -> None:
    """TLS, --client-cert-auth and a user: the keepalives go to the gateway with no thread
    and carry the token; etcd 3.4 does not check a keepalive's token, so an expired one
    keeps the lease too (a refusal for it would renew it, as for every other call)."""
    with secure_etcd(private_ca, "/memring/gw", auth_token_ttl=1) as etcd, \
            trio.fail_after(30):
        security = _without_common_name(etcd, private_ca)
        async with EtcdCoordinator.connect(etcd.url, "gw", security=security) as coordinator:
            async with coordinator.open_session(2) as session:
                threads = threading.active_count()
                await trio.sleep(2.5)  # ~4 keepalives; the token died after 1 s unused
                assert not session.lost.is_set()
                assert await coordinator._keepalive(session.lease_id, timeout=1.0) > 0
                assert coordinator.gateway.keepalives
                assert coordinator.leases._gateway is not None and coordinator.leases._gateway[1].connected
                assert threading.active_count() <= threads  # (idle workers may end)
                assert coordinator.authentications == 1
            assert await coordinator._keepalive(session.lease_id, timeout=1.0) == 0  # revoked


async def test_a_certificate_with_a_common_name_keeps_alive_over_grpc(
        secure_etcd: SecureEtcd) -> None:
    """etcd 3.4.10+ refuses gateway calls made with such a certificate: the first keepalive
    is answered over gRPC at once, and so are the later ones."""
    with trio.fail_after(20):
        async with (EtcdCoordinator.connect(secure_etcd.url, "sec-gw-cn",
                                            security=secure_etcd.security) as coordinator,
                    coordinator.open_session(2) as session):
            assert await coordinator._keepalive(session.lease_id, timeout=1.0) > 0
            assert not coordinator.gateway.keepalives
            await trio.sleep(1.5)
            assert not session.lost.is_set()
            assert coordinator.leases._keepalives is not None


@pytest.mark.parametrize("frozen", ["follower", "leader"])
async def test_a_session_outlives_a_frozen_member(etcd3: EtcdCluster, frozen: str) -> None:
    """The member the keepalives go to is SIGSTOPped longer than the 2 s TTL (etcd's leader,
    or a follower): each keepalive is sent again through another member after one attempt,
    and the session is never lost."""
    leader = etcd3.leader()
    member = leader if frozen == "leader" else next(m for m in etcd3.members if m is not leader)
    urls = [member.url, *(m.url for m in etcd3.members if m is not member)]
    with trio.fail_after(30):
        async with (EtcdCoordinator.connect(",".join(urls),
                                            f"gw-frozen-{frozen}") as coordinator,
                    coordinator.open_session(2) as session):
            assert await coordinator._keepalive(session.lease_id, timeout=1.0) > 0
            assert coordinator.leases._gateway is not None and coordinator.leases._gateway[0] == 0
            member.pause()
            try:
                await trio.sleep(3.0)
            finally:
                member.resume()
            assert not session.lost.is_set(), session.lost_reason
            assert coordinator.leases._gateway is not None and coordinator.leases._gateway[0] != 0
            assert coordinator.url != member.url


async def test_the_gateway_maps_refusals_and_unreachable_members(etcd: EtcdProcess) -> None:
    """etcd's error answer (HTTP 500 with gRPC code 2 for a malformed lease id) is
    GatewayRefused and keeps the connection; a closed port, and a peer that speaks no HTTP,
    are GatewayUnreachable and leave no connection behind."""
    with trio.fail_after(10):
        gateway = EtcdGateway(etcd.url.split("://", 1)[1])
        with pytest.raises(GatewayRefused) as refused:
            await gateway.call(KEEPALIVE_PATH, {"ID": "not a number"})
        assert refused.value.code == 2 and gateway.connected
        assert await gateway.call(KEEPALIVE_PATH, {"ID": "1"}) != {}  # no such lease: no TTL
        await gateway.aclose()
        closed = EtcdGateway(f"127.0.0.1:{free_port()}")
        with pytest.raises(GatewayUnreachable):
            await closed.call(KEEPALIVE_PATH, {"ID": "1"})
        assert not closed.connected

        async def not_http(stream: trio.SocketStream) -> None:
            await stream.send_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")

        async with trio.open_nursery() as nursery:
            [listener] = await nursery.start(
                functools.partial(trio.serve_tcp, not_http, 0, host="127.0.0.1"))
            port = listener.socket.getsockname()[1]
            stranger = EtcdGateway(f"127.0.0.1:{port}")
            with pytest.raises(GatewayUnreachable, match="client port"):
                await stranger.call(KEEPALIVE_PATH, {"ID": "1"})
            assert not stranger.connected
            nursery.cancel_scope.cancel()
