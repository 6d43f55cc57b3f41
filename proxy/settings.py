"""The proxy's settings and its static topology, from flags, MEMRING_* variables and TOML.

The topology file (etc/memring.toml shows it, with comments) is shaped so that a twemproxy
user can translate a nutcracker.yml in a minute: a `[proxy]` table and `[[shards]]`, each shard a list of nodes
(`"host:port"` or `{address = "host:port", weight = 2}`), a ring weight and an optional
ring point name. The first node of a shard is its leader.

In cluster mode (`--etcd URLS --cluster NAME`) the shards come from etcd instead
(proxy.cluster_topology); `--config` is then optional and only its [proxy] table is used.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any

from memring.cluster import etcd_security
from memring.cluster.etcd_security import EtcdSecurity
from memring.cluster.records import SHARD_ERROR_POLICIES

# The file's pure parsing lives in cluster.static_topology (shared with StaticCoordinator);
# re-exported here so `proxy.settings.ShardSpec` etc. keep working.
from memring.cluster.static_topology import NodeSpec as NodeSpec
from memring.cluster.static_topology import ShardSpec as ShardSpec
from memring.cluster.static_topology import default_point_name as default_point_name
from memring.cluster.static_topology import parse_shards as parse_shards
from memring.cluster.static_topology import read_toml
from memring.netio import logs
from memring.netio.settings import (
    TLS_FIELDS,
    Listening,
    SettingsError,
    TlsListening,
    add_tls_flags,
    check_tls,
    split_address,
)
from memring.netio.tls import TlsConfigError, TlsSettings, client_context

HASHES = ("md5", "fnv1a_64")
READ_POLICIES = ("leader", "round_robin", "weighted")


@dataclass(frozen=True)
class ProxySettings(Listening, TlsListening):
    listen: str = "127.0.0.1:11211"
    config: str = ""
    hash: str = "md5"
    read_policy: str = "leader"
    on_shard_error: str = "miss"     # a read whose shard cannot answer: miss | error
    timeout_ms: int = 1000
    failure_limit: int = 3
    retry_ms: int = 1000
    pool_size: int = 2               # connections per backend node
    # a node's connections open on its first request and close after this long without
    # one, so a big topology costs sockets only for the nodes in use (proxy.pool)
    backend_idle_ms: int = 60000
    max_connections: int = 4096      # client connections per worker
    max_line: int = 1 << 20
    max_item_size: int = 1 << 20
    # seconds a client connection may wait without completing a request before it is
    # closed (0 = never; memcached's -o idle_timeout). 300: below the idle cuts clients
    # behind cloud load balancers already live with (AWS NLB 350 s, GCP 600 s), so no
    # working client meets a new failure, while dead peers and slowloris connections
    # holding half-sent requests are reclaimed within minutes instead of never.
    idle_timeout: float = 300.0
    workers: int = 1
    version: str = "1.6.18"
    etcd: str = ""                   # cluster mode: etcd URLs; "" = static topology file
    cluster: str = "memring"
    advertise: str = ""              # HOST:PORT published in proxies/<id> (default: listen)
    proxy_id: str = ""               # default: <hostname>-<port>
    leader_wait_ms: int = 1500       # how long a write waits for its shard to elect a leader
    client_buffer_bytes: int = 4 << 20   # replies one client may have buffered here
    client_write_timeout_ms: int = 30000  # a client whose waiting replies do not leave is closed
    max_buffered_bytes: int = 256 << 20  # all clients' buffered input and replies (per worker)
    metrics_listen: str = ""         # HOST:PORT for Prometheus GET /metrics; "" = off
    log_level: str = "info"          # debug | info | warning | error
    log_format: str = "logfmt"       # logfmt | json (netio.logs)
    shards: tuple[ShardSpec, ...] = field(default_factory=tuple)
    # etcd security (cluster.etcd_security): TLS files and an etcd user
    etcd_ca: str = ""
    etcd_cert: str = ""
    etcd_key: str = ""
    etcd_user: str = ""
    etcd_password_file: str = ""
    # authentication
    auth_file: str = ""              # memcached's -Y for the proxy's clients ("" = off)
    backend_auth_file: str = ""      # the proxy's own user for the backends: the file's first
    # backend TLS: the proxy's links to its backends (every node, static or from etcd)
    backend_tls: bool = False
    backend_tls_ca: str = ""         # CA the backends' certificates must chain to
    backend_tls_cert: str = ""       # the proxy's client certificate (backends with mutual TLS)
    backend_tls_key: str = ""        # its key ("" = in the certificate file)
    backend_tls_verify: str = "require"  # require | none: check the backend's certificate

    @property
    def etcd_security(self) -> EtcdSecurity:
        return EtcdSecurity.of(self)

    @property
    def backend_tls_settings(self) -> TlsSettings | None:
        """What the links to the backends use; None for plain TCP."""
        if not self.backend_tls:
            return None
        return TlsSettings(cert=self.backend_tls_cert, key=self.backend_tls_key,
                           ca=self.backend_tls_ca, verify=self.backend_tls_verify)


_INT_KEYS = ("timeout_ms", "failure_limit", "retry_ms", "pool_size", "backend_idle_ms",
             "max_connections",
             "max_line", "max_item_size", "workers", "leader_wait_ms", "client_buffer_bytes",
             "client_write_timeout_ms", "max_buffered_bytes")
_FLOAT_KEYS = ("idle_timeout",)
_BOOL_KEYS = ("tls", "backend_tls")
_BACKEND_TLS_FILES = ("backend_tls_ca", "backend_tls_cert", "backend_tls_key")
BACKEND_TLS_VERIFY = ("require", "none")


def _validate(settings: ProxySettings) -> ProxySettings:
    split_address(settings.listen, listen=True)
    if settings.hash not in HASHES:
        raise SettingsError(f"hash must be one of {', '.join(HASHES)}, got {settings.hash!r}")
    if settings.read_policy not in READ_POLICIES:
        raise SettingsError(f"read_policy must be one of {', '.join(READ_POLICIES)}, "
                            f"got {settings.read_policy!r}")
    if settings.on_shard_error not in SHARD_ERROR_POLICIES:
        raise SettingsError(f"on_shard_error must be miss or error, "
                            f"got {settings.on_shard_error!r}")
    for key in _INT_KEYS:
        if getattr(settings, key) < 1:
            raise SettingsError(f"{key} must be at least 1")
    if not 0 <= settings.idle_timeout < math.inf:
        raise SettingsError("idle_timeout must be a number of seconds, 0 (off) or more")
    if settings.advertise:
        split_address(settings.advertise)
    if settings.metrics_listen:
        split_address(settings.metrics_listen, listen=True)
    problem = logs.check(settings.log_level, settings.log_format)
    if problem:
        raise SettingsError(problem)
    if settings.etcd:
        # imported here: the static proxy never loads the etcd client
        from memring.cluster.etcd_coordinator import parse_endpoints
        from memring.cluster.keyspace import check_id
        try:
            parse_endpoints(settings.etcd)
            settings.etcd_security.check(settings.etcd)
            check_id("cluster", settings.cluster)
            if settings.proxy_id:
                check_id("proxy", settings.proxy_id)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
    _validate_backend_tls(settings)
    return settings


def _validate_backend_tls(settings: ProxySettings) -> None:
    if settings.backend_tls_verify not in BACKEND_TLS_VERIFY:
        raise SettingsError(f"backend_tls_verify must be require or none, "
                            f"got {settings.backend_tls_verify!r}")
    tls = settings.backend_tls_settings
    if tls is None:
        given = [key for key in _BACKEND_TLS_FILES if getattr(settings, key)]
        if given:
            raise SettingsError(f"{', '.join(given)} without backend_tls (--backend-tls)")
        return
    if tls.verify == "require" and not tls.ca:
        raise SettingsError("backend TLS verifies the backends' certificates: give "
                            "--backend-tls-ca (or --backend-tls-verify none)")
    if tls.key and not tls.cert:
        raise SettingsError("backend_tls_key without backend_tls_cert")
    try:
        client_context(tls)  # the files load now, not at the first connection
    except TlsConfigError as exc:
        raise SettingsError(f"backend TLS: {exc}") from None


def load_topology(settings: ProxySettings) -> ProxySettings:
    """Re-read the config file's [proxy] table and shards (SIGHUP calls this)."""
    data = read_toml(settings.config)
    table = data.get("proxy", {})
    known = {f for f in ProxySettings.__dataclass_fields__ if f not in ("config", "shards")}
    unknown = set(table) - known
    if unknown:
        raise SettingsError(f"unknown [proxy] setting(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in _FLOAT_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        expected = (float if key in _FLOAT_KEYS else int if key in _INT_KEYS else
                    bool if key in _BOOL_KEYS else str)
        if not isinstance(value, expected):
            kind = {float: " number", int: "n integer", str: " string",
                    bool: " boolean"}[expected]
            raise SettingsError(f"[proxy] {key} must be a{kind}")
        values[key] = value
    if settings.etcd and "shards" not in data:
        return _validate(replace(settings, **values))  # cluster mode: shards come from etcd
    return _validate(replace(settings, **values, shards=parse_shards(data.get("shards"))))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memring-proxy",
        description="The memring proxy: one memcached endpoint in front of ketama-placed shards.")
    parser.add_argument("--config", help="TOML topology file (see etc/memring.toml); required "
                        "without --etcd")
    parser.add_argument("--listen", help="HOST:PORT for clients (default 127.0.0.1:11211)")
    parser.add_argument("--workers", type=int, help="processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--max-connections", type=int, help="client connections per worker")
    parser.add_argument("--idle-timeout", type=float, metavar="SECONDS",
                        help="close a client connection that completes no request for this "
                        "long while the proxy waits for its input, half-sent requests "
                        "included (0: never; default 300)")
    parser.add_argument("--etcd", help="cluster mode: etcd URLs, http://HOST:PORT[,...] (or "
                        "all https://: see etcd security)")
    parser.add_argument("--cluster", help="cluster name in etcd (default memring)")
    parser.add_argument("--advertise", help="HOST:PORT published in etcd (default: --listen)")
    parser.add_argument("--proxy-id", help="this proxy's id in etcd (default HOSTNAME-PORT)")
    parser.add_argument("--leader-wait-ms", type=int,
                        help="how long a write waits for a leader during an election "
                             "(default 1500)")
    parser.add_argument("--on-shard-error", metavar="POLICY",
                        help="a get/gets/gat/gats/mg whose shard cannot answer (no live node, "
                        "ejected, timed out): miss (default: the key is answered as not "
                        "found) or error (SERVER_ERROR); writes always answer the error. In "
                        "cluster mode the cluster's config (memring config set "
                        "on_shard_error) overrides it")
    parser.add_argument("--client-buffer-bytes", type=int,
                        help="replies one client may have waiting in the proxy before it stops "
                             "reading that client (default 4 MiB)")
    parser.add_argument("--client-write-timeout-ms", type=int,
                        help="a client that does not take its waiting replies for this long is "
                             "closed (default 30000)")
    parser.add_argument("--max-buffered-bytes", type=int,
                        help="all clients' buffered input and replies, per worker; the client "
                             "that would pass it gets 'SERVER_ERROR out of memory ...' and is "
                             "closed (default 256 MiB)")
    parser.add_argument("--metrics-listen", help="HOST:PORT to serve Prometheus metrics on "
                        "(GET /metrics; default: off); with --workers N, worker i uses PORT+i")
    parser.add_argument("--log-level", help="debug, info (default), warning or error")
    parser.add_argument("--log-format", help="logfmt (default) or json: one line per event")
    authentication = parser.add_argument_group("authentication")
    authentication.add_argument("--auth-file", metavar="FILE",
                                help="memcached's -Y for the proxy's clients: they must first "
                                "send a `set` whose data is `user password` for a "
                                "`user:password` line of FILE (reloaded on SIGHUP; default: off)")
    authentication.add_argument("--backend-auth-file", metavar="FILE",
                                help="the proxy's own credentials for backends started with "
                                "--auth-file (or memcached -Y): the first `user:password` line "
                                "of FILE, sent on every new backend connection (reloaded on "
                                "SIGHUP; default: none)")
    add_tls_flags(parser)
    tls = parser.add_argument_group("backend TLS", "the proxy's connections to its backends "
                                    "(every node, from --config or etcd)")
    tls.add_argument("--backend-tls", action=argparse.BooleanOptionalAction,
                     help="connect to the backends over TLS (default: plain TCP)")
    tls.add_argument("--backend-tls-ca", metavar="FILE",
                     help="PEM CA certificates the backends' certificates must chain to; each "
                          "must also name the host the proxy connects to")
    tls.add_argument("--backend-tls-cert", metavar="FILE",
                     help="the proxy's client certificate chain (PEM), for backends that "
                          "require one (mutual TLS)")
    tls.add_argument("--backend-tls-key", metavar="FILE",
                     help="its private key (default: in the certificate file)")
    tls.add_argument("--backend-tls-verify", metavar="MODE",
                     help="require (default): verify the backends' certificates; none: "
                          "encrypt only (no protection from an impostor)")
    etcd_security.add_arguments(parser)  # last: test_etcd_security_settings holds it there
    return parser


def _from_env(name: str, value: str) -> Any:
    if name in _BOOL_KEYS:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(f"MEMRING_{name.upper()} must be true or false")
    try:
        return (int(value) if name in _INT_KEYS else
                float(value) if name in _FLOAT_KEYS else value)
    except ValueError:
        kind = "a number" if name in _FLOAT_KEYS else "an integer"
        raise SettingsError(f"MEMRING_{name.upper()} must be {kind}") from None


def load_settings(argv: list[str] | None = None) -> ProxySettings:
    args = _parser().parse_args(argv)
    config = args.config or os.environ.get("MEMRING_CONFIG")
    etcd = args.etcd or os.environ.get("MEMRING_ETCD", "")
    if not config and not etcd:
        raise SettingsError("--config FILE (a TOML topology, see etc/memring.toml) or "
                            "--etcd URLS (cluster mode) is required")
    settings = ProxySettings(config=config or "", etcd=etcd)
    if config:
        settings = load_topology(settings)
    overrides: dict[str, Any] = {}
    for name in ("listen", "workers", "max_connections", "idle_timeout", "etcd", "cluster",
                 "advertise", "proxy_id", "leader_wait_ms", "on_shard_error",
                 "client_buffer_bytes",
                 "client_write_timeout_ms", "max_buffered_bytes", "metrics_listen",
                 "log_level", "log_format", *etcd_security.FIELDS, "auth_file",
                 "backend_auth_file", "backend_tls", "backend_tls_ca", "backend_tls_cert",
                 "backend_tls_key", "backend_tls_verify", *TLS_FIELDS):
        env = os.environ.get("MEMRING_" + name.upper())
        if env is not None:
            overrides[name] = _from_env(name, env)
        flag = getattr(args, name)
        if flag is not None:
            overrides[name] = flag
    settings = _validate(replace(settings, **overrides))
    check_tls(settings)  # at start only: SIGHUP reloads the same files (ServerTls.reload)
    return settings
