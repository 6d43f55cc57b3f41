"""`memring-backend` / `python -m memring.backend`: run one storage node in the foreground."""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import sys
from contextlib import AsyncExitStack
from dataclasses import replace

import trio

from memring.backend.cluster_member import ClusterMember, MemberIdentity
from memring.backend.replication.replicator import PEER_MAX_CONNECTIONS, Replicator
from memring.backend.server import BackendServer
from memring.backend.settings import BackendSettings, load_settings
from memring.backend.stats import MEMRING_VERSION
from memring.cluster.auth_file import load_credentials, reload_credentials
from memring.cluster.coordinator import AccessDenied
from memring.netio import logs, nonblocking
from memring.netio.server_process import run_server
from memring.netio.settings import SettingsError, split_address
from memring.netio.tls import TlsSettings, client_context
from memring.protocol.ascii_auth import Authenticator, AuthFileError

log = logging.getLogger("memring.backend")


def stats_client_context(tls: TlsSettings) -> ssl.SSLContext:
    """How this node asks its shard's members for `stats` (before an unclean election): its
    own certificate (issued for both ends) and CA; without a CA it cannot check them."""
    return client_context(replace(tls, verify="require" if tls.ca else "none",
                                  min_version="tlsv1.2", ciphers=""))


def identity(settings: BackendSettings, port: int) -> MemberIdentity:
    """The node's published identity; addresses default to what it listens on."""
    if settings.advertise:
        host, advertise_port = split_address(settings.advertise)
    else:
        host, advertise_port = split_address(settings.listen, listen=True)[0], port
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    address = f"[{host}]:{advertise_port}" if ":" in host else f"{host}:{advertise_port}"
    return MemberIdentity(
        node_id=settings.node_id or address.replace("[", "").replace("]", ""),
        shard=settings.shard, address=address,
        peer_address=settings.peer_advertise or settings.peer_listen,
        version=MEMRING_VERSION)


async def run(settings: BackendSettings, auth: Authenticator | None = None) -> None:
    # the peer port's connections come on top of the client port's (their own limit)
    nonblocking.raise_fd_limit(settings.max_connections + PEER_MAX_CONNECTIONS + 64)
    async with AsyncExitStack() as stack:
        member: ClusterMember | None = None
        if settings.clustered:
            # grpc only in cluster mode
            from memring.cluster.etcd_coordinator import EtcdCoordinator

            coordinator = EtcdCoordinator(settings.etcd, settings.cluster,
                                          security=settings.etcd_security)
            stack.push_async_callback(coordinator.aclose)
            await coordinator.check_access()  # AccessDenied: exit 1 (main)
            # the identity needs the bound port; the member is built once the server listens
            member = ClusterMember(coordinator, MemberIdentity("", settings.shard, ""),
                                   lease_ttl=settings.lease_ttl)
        server = BackendServer(settings, member, auth)
        replicator = None
        if member is not None and settings.replication != "off":
            replicator = Replicator(server.store, member, settings)
            member.listener = replicator
            server.handler.record_writes(replicator)
            server.gate = replicator  # replies wait only while it replicates in sync mode
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve)
            log.info("serving memcached protocol on %s:%d%s (memory %d MB, max item %d bytes)",
                     settings.host, port, " over TLS" if settings.tls else "", settings.memory,
                     settings.max_item_size)
            if server.tls_connections is not None:
                log.info("serving TLS on %s:%d beside it", split_address(
                    settings.tls_listen, listen=True)[0], server.tls_port)
            metrics = None
            if settings.metrics_listen:
                # prometheus_client only when asked
                from memring.backend.metrics import endpoint_for

                metrics = endpoint_for(settings, server.handler)
                await nursery.start(metrics.serve)
            if replicator is not None:
                await nursery.start(replicator.run)
            if member is not None:
                member.identity = identity(settings, port)
                if auth is not None:
                    users = auth  # its first user asks the shard's members for `stats`
                    member.stats_login = lambda: users.credentials.first()  # (reloaded too)
                if settings.tls:  # the members' client ports serve TLS as this one does
                    member.stats_tls = stats_client_context(settings.tls_settings)
                log.info("cluster mode: etcd %s, cluster %s, shard %s, node %s",
                         settings.etcd, settings.cluster, settings.shard,
                         member.identity.node_id)
                await nursery.start(member.run)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT,
                                           signal.SIGHUP) as signals:
                async for signum in signals:
                    if signum == signal.SIGHUP:  # the one SIGHUP handler: files reload
                        server.reload_files()
                        if replicator is not None:
                            replicator.reload_files()
                        if auth is not None:
                            reload_credentials(auth, settings.auth_file)
                        continue
                    log.info("%s received: shutting down", signal.Signals(signum).name)
                    if member is not None:
                        await member.leave()
                    server.shutdown()
                    if metrics is not None:
                        metrics.shutdown()
                    if replicator is not None:
                        replicator.shutdown()
                    break


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"memring-backend: error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    auth = None
    if settings.auth_file:
        try:
            auth = Authenticator(load_credentials(settings.auth_file))
        except AuthFileError as exc:  # memcached will not start either
            print(f"memring-backend: error: {exc}", file=sys.stderr)
            return 2
    try:
        return run_server("memring-backend", run, settings, auth)
    except AccessDenied as exc:  # raised before any nursery: not in a group
        print(f"memring-backend: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
