"""A backend's settings: command-line flags, a TOML file, and MEMRING_* variables.

Precedence: a flag on the command line, then the environment (`MEMRING_<FLAG>`, e.g.
MEMRING_LISTEN), then the `[backend]` table of `--config FILE`, then the default.
With `--etcd URLS` the backend is a cluster member (backend.cluster_member); without it, a
standalone server.
"""

from __future__ import annotations

import argparse
import math
import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from memring.backend.replication.peer_tls import PeerTlsFiles
from memring.cluster import etcd_security
from memring.cluster.etcd_security import EtcdSecurity
from memring.netio import logs
from memring.netio.settings import (
    Listening,
    SettingsError,
    TlsListening,
    add_tls_flags,
    check_tls,
    split_address,
)

DEFAULT_VERSION = "1.6.18"
REPLICATION_MODES = ("off", "async", "sync", "auto")


@dataclass(frozen=True)
class BackendSettings(Listening, TlsListening):
    listen: str = "127.0.0.1:11211"
    memory: int = 64                 # MB, as memcached's -m
    max_item_size: int = 1 << 20     # bytes, as memcached's -I
    max_connections: int = 1024      # as memcached's -c
    max_line: int = 1 << 20          # longest get/gets line accepted
    # seconds a client connection may wait without completing a request (0 = never
    # closed, as memcached's -o idle_timeout): off, because the proxy's pooled connections
    # idle legitimately (and a closed one counts as a node failure there)
    idle_timeout: float = 0.0
    version: str = DEFAULT_VERSION   # what `version` answers; clients gate features on it
    reap_interval: float = 1.0       # seconds between expiry sweeps
    metrics_listen: str = ""         # HOST:PORT for Prometheus GET /metrics; "" = off
    log_level: str = "info"          # debug | info | warning | error
    log_format: str = "logfmt"       # logfmt | json (netio.logs)
    # cluster mode (all unused without `etcd`)
    etcd: str = ""                   # comma-separated http(s)://HOST:PORT
    cluster: str = "memring"
    shard: str = ""
    node_id: str = ""                # default: derived from the advertised address
    advertise: str = ""              # HOST:PORT clients reach us on (default: listen)
    peer_listen: str = ""            # HOST:PORT for replication (bound with replication on)
    peer_advertise: str = ""         # default: peer_listen
    lease_ttl: float = 2.0           # seconds; kept alive every ttl/3
    replication: str = ""            # off | async | sync | auto ("": auto with --peer-listen)
    replication_backlog: int = 64 << 20  # bytes of recent mutations a leader keeps
    max_lag_ms: int = 500            # a follower further behind leaves the ISR
    max_lag_bytes: int = 8 << 20     # ... or with more than this many bytes unacknowledged
    # etcd security (cluster.etcd_security): TLS files and an etcd user
    etcd_ca: str = ""
    etcd_cert: str = ""
    etcd_key: str = ""
    etcd_user: str = ""
    etcd_password_file: str = ""
    # authentication
    auth_file: str = ""              # memcached's -Y: `user:password` lines ("" = off)
    # peer authentication (issue 13): the cluster's shared secret for the replication link
    peer_secret_file: str = ""       # "" = plain mode (one machine only)
    peer_secret_optional: bool = False  # also accept peers that send no proof (migration)
    # peer TLS (backend.replication.peer_tls): mutual TLS on the replication link
    peer_tls: bool = False           # the peer port serves TLS, followers dial with TLS
    peer_tls_cert: str = ""          # default: tls_cert (one node certificate for both)
    peer_tls_key: str = ""           # default: tls_key
    peer_tls_ca: str = ""            # default: tls_ca

    @property
    def clustered(self) -> bool:
        return bool(self.etcd)

    @property
    def etcd_security(self) -> EtcdSecurity:
        return EtcdSecurity.of(self)

    @property
    def peer_tls_files(self) -> PeerTlsFiles:
        """The peer link's files: its own flags, else the client listener's."""
        cert = self.peer_tls_cert or self.tls_cert
        # a key beside its own certificate: --tls-key only goes with --tls-cert
        key = self.peer_tls_key or (self.tls_key if not self.peer_tls_cert else "")
        return PeerTlsFiles(cert, key, self.peer_tls_ca or self.tls_ca)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memring-backend",
        description="A memring storage node: an in-memory, memcached-compatible server.")
    parser.add_argument("--config", help="TOML file with a [backend] table")
    parser.add_argument("--listen", help="HOST:PORT to serve clients on (default 127.0.0.1:11211)")
    parser.add_argument("--memory", type=int, help="memory limit for items in MB (default 64)")
    parser.add_argument("--max-item-size", type=int, help="largest item in bytes (default 1 MiB)")
    parser.add_argument("--max-connections", type=int, help="client connections (default 1024)")
    parser.add_argument("--max-line", type=int, help="longest get line in bytes (default 1 MiB)")
    parser.add_argument("--idle-timeout", type=float, metavar="SECONDS",
                        help="close a client connection that completes no request for this "
                        "long while the server waits for its input, half-sent requests "
                        "included (memcached's -o idle_timeout; default 0: never)")
    parser.add_argument("--version-string", dest="version",
                        help=f"version reported to clients (default {DEFAULT_VERSION})")
    parser.add_argument("--metrics-listen", help="HOST:PORT to serve Prometheus metrics on "
                        "(GET /metrics; default: off)")
    parser.add_argument("--log-level", help="debug, info (default), warning or error")
    parser.add_argument("--log-format", help="logfmt (default) or json: one line per event")
    cluster = parser.add_argument_group("cluster mode (with --etcd)")
    cluster.add_argument("--etcd", help="etcd URLs, comma-separated http://HOST:PORT (or all "
                         "https://: see etcd security); without it the backend runs "
                         "standalone")
    cluster.add_argument("--cluster", help="cluster name: the etcd prefix (default memring)")
    cluster.add_argument("--shard", help="id of the shard this node serves (required)")
    cluster.add_argument("--node-id", help="this node's id (default: from --advertise)")
    cluster.add_argument("--advertise", help="HOST:PORT clients reach this node on "
                         "(default: the listen address)")
    cluster.add_argument("--peer-listen", help="HOST:PORT for replication between replicas")
    cluster.add_argument("--peer-advertise", help="HOST:PORT replicas reach this node on "
                         "(default: --peer-listen)")
    cluster.add_argument("--lease-ttl", type=float,
                         help="seconds a lost node keeps its etcd lease (default 2)")
    cluster.add_argument("--replication", choices=REPLICATION_MODES,
                         help="leader -> follower replication on the peer port: sync "
                         "(replies wait for the in-sync followers), async (replies at once), "
                         "auto (the cluster config's mode, sync unless `memring config set "
                         "replication async`; the default with --peer-listen) or off")
    cluster.add_argument("--replication-backlog", type=int,
                         help="bytes of recent mutations a leader keeps for followers that "
                         "reconnect (default 64 MiB; beyond it they take a snapshot)")
    cluster.add_argument("--max-lag-ms", type=int,
                         help="a follower whose oldest unacknowledged write is older than "
                         "this leaves the in-sync set, and writes stop waiting for it "
                         "(default 500)")
    cluster.add_argument("--max-lag-bytes", type=int,
                         help="... or that has more than this many bytes unacknowledged "
                         "(default 8 MiB)")
    authentication = parser.add_argument_group("authentication")
    authentication.add_argument("--auth-file", metavar="FILE",
                                help="memcached's -Y: clients must first send a `set` whose "
                                "data is `user password` for a `user:password` line of FILE "
                                "(at most 8 users; reloaded on SIGHUP; default: off)")
    peer_auth = parser.add_argument_group("peer authentication")
    peer_auth.add_argument("--peer-secret-file", metavar="FILE",
                           help="the cluster's replication secret (at least 32 random bytes, "
                           "the same file on every member, e.g. `openssl rand -hex 32`): "
                           "leader and follower prove it to each other before any data "
                           "moves; without it the peer link is unauthenticated (one machine "
                           "only)")
    peer_auth.add_argument("--peer-secret-optional", action="store_true", default=None,
                           help="with --peer-secret-file, also accept peers that send no proof "
                           "(they have no secret yet): only while moving a running cluster to "
                           "a secret, one rolling restart; a wrong proof is still refused")
    add_tls_flags(parser)
    peer_tls = parser.add_argument_group(
        "peer TLS", "mutual TLS on the replication peer link: every member presents a "
        "certificate from the cluster's CA naming its node id (common name or DNS name)")
    peer_tls.add_argument("--peer-tls", action="store_true", default=None,
                          help="the peer port serves TLS only and this node follows its "
                          "leader over TLS; a follower must show a certificate, and each "
                          "side's certificate must name the node id it claims")
    peer_tls.add_argument("--peer-tls-cert", metavar="FILE",
                          help="PEM certificate chain naming this node id (default: "
                          "--tls-cert)")
    peer_tls.add_argument("--peer-tls-key", metavar="FILE",
                          help="its PEM private key (default: in the certificate file, or "
                          "--tls-key when the certificate is --tls-cert's)")
    peer_tls.add_argument("--peer-tls-ca", metavar="FILE",
                          help="PEM CA certificates the other members' certificates are "
                          "checked against (default: --tls-ca)")
    etcd_security.add_arguments(parser)
    return parser


def _coerce(name: str, value: object, kind: type) -> object:
    if kind is bool and isinstance(value, str):  # MEMRING_PEER_SECRET_OPTIONAL=1
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(f"{name} must be true or false, got {value!r}")
    if kind is int and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {value!r}") from None
    if kind is float and isinstance(value, (str, int)):
        try:
            return float(value)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {value!r}") from None
    if not isinstance(value, kind):
        raise SettingsError(f"{name} must be a {kind.__name__}, got {value!r}")
    return value


def load_settings(argv: list[str] | None = None) -> BackendSettings:
    args = _parser().parse_args(argv)
    values: dict[str, object] = {}
    if args.config:
        try:
            table = tomllib.loads(Path(args.config).read_text()).get("backend", {})
        except OSError as exc:
            raise SettingsError(f"cannot read config {args.config}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"bad TOML in {args.config}: {exc}") from None
        values.update({k.replace("-", "_"): v for k, v in table.items()})
    kinds = {f.name: type(f.default) for f in fields(BackendSettings)}
    for name in kinds:
        env = os.environ.get("MEMRING_" + name.upper())
        if env is not None:
            values[name] = env
        flag = getattr(args, name, None)
        if flag is not None:
            values[name] = flag
    unknown = set(values) - set(kinds)
    if unknown:
        raise SettingsError(f"unknown backend setting(s): {', '.join(sorted(unknown))}")
    coerced: dict[str, Any] = {k: _coerce(k, v, kinds[k]) for k, v in values.items()}
    settings = BackendSettings(**coerced)
    if not settings.replication:
        settings = replace(settings, replication="auto" if settings.clustered and
                           settings.peer_listen else "off")
    split_address(settings.listen, listen=True)
    if settings.memory <= 0:
        raise SettingsError("--memory must be a positive number of MB")
    if settings.max_item_size < 1024:
        raise SettingsError("--max-item-size must be at least 1024 bytes")
    if settings.max_connections <= 0:
        raise SettingsError("--max-connections must be positive")
    if not 0 <= settings.idle_timeout < math.inf:
        raise SettingsError("--idle-timeout must be a number of seconds, 0 (off) or more")
    if settings.metrics_listen:
        split_address(settings.metrics_listen, listen=True)
    problem = logs.check(settings.log_level, settings.log_format)
    if problem:
        raise SettingsError(problem)
    if settings.replication not in REPLICATION_MODES:
        raise SettingsError(f"replication must be one of {', '.join(REPLICATION_MODES)}, "
                            f"got {settings.replication!r}")
    if settings.replication != "off":
        if not settings.clustered:
            raise SettingsError(f"--replication {settings.replication} needs --etcd")
        if not settings.peer_listen:
            raise SettingsError(f"--replication {settings.replication} needs --peer-listen")
        if settings.replication_backlog < 4096:
            raise SettingsError("--replication-backlog must be at least 4096 bytes")
        if settings.max_lag_ms <= 0 or settings.max_lag_bytes <= 0:
            raise SettingsError("--max-lag-ms and --max-lag-bytes must be positive")
    if settings.clustered:
        _check_cluster(settings)
    if settings.peer_secret_file:
        _check_peer_secret(settings)
    elif settings.peer_secret_optional:
        raise SettingsError("--peer-secret-optional needs --peer-secret-file")
    check_tls(settings)
    if settings.peer_tls:
        _check_peer_tls(settings)
    elif settings.peer_tls_cert or settings.peer_tls_key or settings.peer_tls_ca:
        raise SettingsError("--peer-tls-cert, --peer-tls-key and --peer-tls-ca need --peer-tls")
    return settings


def _check_peer_tls(settings: BackendSettings) -> None:
    from memring.backend.replication.peer_tls import PeerTls
    from memring.netio.tls import TlsConfigError

    if not settings.peer_listen:
        raise SettingsError("--peer-tls needs --peer-listen (and --etcd)")
    try:
        PeerTls(settings.peer_tls_files)  # loads the files: a bad one stops the start
    except TlsConfigError as exc:
        raise SettingsError(f"peer TLS: {exc}") from None


def _check_peer_secret(settings: BackendSettings) -> None:
    from memring.backend.replication.peer_auth import read_secret

    read_secret(settings.peer_secret_file)  # SettingsError if missing or short


def _check_cluster(settings: BackendSettings) -> None:
    from memring.cluster.etcd_coordinator import parse_endpoints
    from memring.cluster.keyspace import check_id

    try:
        parse_endpoints(settings.etcd)
    except ValueError as exc:
        raise SettingsError(f"--etcd: {exc}") from None
    try:
        settings.etcd_security.check(settings.etcd)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    if not settings.shard:
        raise SettingsError("--shard ID is required with --etcd")
    for address, listen in ((settings.advertise, False), (settings.peer_listen, True),
                            (settings.peer_advertise, False)):
        if address:
            split_address(address, listen=listen)
    if not settings.lease_ttl > 0:
        raise SettingsError("--lease-ttl must be a positive number of seconds")
    try:
        check_id("cluster", settings.cluster)
        check_id("shard", settings.shard)
        if settings.node_id:
            check_id("node", settings.node_id)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
