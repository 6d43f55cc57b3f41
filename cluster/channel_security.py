"""Which of a cluster's channels are protected, from what each node and proxy reports.

`memring status` shows it. Each process speaks for its own ends, in its `stats` (and a
backend's `stats settings`), read by cluster.node_stats:

- a client port serves TLS when status reached it over TLS (node_stats.TRANSPORT) and it
  prints memcached -Z's `ssl_handshake_errors` (only printed with TLS on: backend/stats.py
  `_tls_stats`, proxy/stats.py); a backend asks for a client certificate when its `stats
  settings` say `ssl_verify_mode 2` (memcached's require);
- ASCII auth: a backend's `stats settings` `auth_enabled_ascii` is the file's path, not
  `no` (a backend prints `auth_cmds` either way); a proxy prints `auth_cmds` only with an
  auth file; either refusing status until it authenticated says so too;
- the proxy's links to its backends: its `memring_backend_tls` (off, or the verify mode)
  and `memring_backend_auth`;
- the replication peer links: a backend's `memring_repl_peer_auth` (secret, optional or
  plain) and, where the node has it, `memring_repl_peer_tls`;
- etcd: from the settings status itself used (https, a client certificate, a user).

Each channel is listed with the protections it has and those it lacks; a process that did
not answer is `unknown`, neither protected nor not.
"""

from __future__ import annotations

from typing import Any

from memring.cluster.etcd_security import EtcdSecurity, url_scheme
from memring.cluster.node_stats import AUTHENTICATED, TRANSPORT

Stats = dict[str, str]
KINDS = ("clients", "proxy links", "backend ports", "peer links", "etcd")  # the table's order
_OFF = ("", "no", "off", "plain", "0", "false")


def _client_tls(stats: Stats) -> bool:
    return stats.get(TRANSPORT) == "tls" and "ssl_handshake_errors" in stats


def etcd_channel(url: str, security: EtcdSecurity) -> dict[str, Any]:
    """etcd's channel as this process reaches it."""
    try:
        https = url_scheme(url) == "https"
    except ValueError:
        https = False
    return _channel("etcd", "etcd", [("https", https), ("client cert", bool(security.cert)),
                                     ("user", bool(security.user))])


def _channel(kind: str, name: str, checks: list[tuple[str, bool]]) -> dict[str, Any]:
    return {"kind": kind, "channel": name, "has": [what for what, ok in checks if ok],
            "missing": [what for what, ok in checks if not ok],
            "protected": all(ok for _, ok in checks)}


def _unknown(kind: str, name: str) -> dict[str, Any]:
    return {"kind": kind, "channel": name, "has": [], "missing": [], "protected": None}


def node_channels(node_id: str, stats: Stats | None) -> list[dict[str, Any]]:
    """A backend's client port and its peer links."""
    port, peers = f"{node_id} client port", f"{node_id} peer links"
    if not stats:
        return [_unknown("backend ports", port), _unknown("peer links", peers)]
    tls = _client_tls(stats)
    auth = stats.get("settings:auth_enabled_ascii", "no") != "no" or AUTHENTICATED in stats
    channels = [_channel("backend ports", port, [
        ("TLS", tls), ("client cert", tls and stats.get("settings:ssl_verify_mode") == "2"),
        ("auth", auth)])]
    peer_checks = [("secret", stats.get("memring_repl_peer_auth") == "secret")]
    if "memring_repl_peer_tls" in stats:
        peer_checks.append(("TLS", stats["memring_repl_peer_tls"].lower() not in _OFF))
    if "memring_repl_peer_auth" in stats or "memring_repl_peer_tls" in stats:
        channels.append(_channel("peer links", peers, peer_checks))
    return channels  # replication off: no peer links


def proxy_channels(proxy_id: str, stats: Stats | None) -> list[dict[str, Any]]:
    """A proxy's client port and its links to the backends."""
    clients, backends = f"clients -> {proxy_id}", f"{proxy_id} -> backends"
    if not stats:
        return [_unknown("clients", clients), _unknown("proxy links", backends)]
    return [
        _channel("clients", clients, [("TLS", _client_tls(stats)),
                                      ("auth", "auth_cmds" in stats or AUTHENTICATED in stats)]),
        _channel("proxy links", backends, [
            ("TLS", stats.get("memring_backend_tls", "off") != "off"),
            ("verified", stats.get("memring_backend_tls") == "require"),
            ("auth", stats.get("memring_backend_auth") == "yes")])]


def summary(channels: list[dict[str, Any]]) -> dict[str, Any]:
    """The doc's `security`: every channel, which are not protected, which did not answer."""
    return {"channels": channels,
            "protected": all(c["protected"] for c in channels),
            "unprotected": [c["channel"] for c in channels if c["protected"] is False],
            "unknown": [c["channel"] for c in channels if c["protected"] is None]}


def render(security: dict[str, Any]) -> list[str]:
    """The table's lines: per kind of channel what all of them have; a warning for the rest."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for channel in security["channels"]:
        if channel["protected"] is not None:
            kinds.setdefault(channel["kind"], []).append(channel)
    parts = []
    for kind, channels in sorted(kinds.items(), key=lambda item: KINDS.index(item[0])):
        common = [what for what in channels[0]["has"]
                  if all(what in c["has"] for c in channels)]
        parts.append(f"{kind} {'+'.join(common) or 'none'}")
    lines = ["security: " + ", ".join(parts)]
    unprotected = [c for c in security["channels"] if c["protected"] is False]
    if unprotected:
        lines.append("WARNING: unprotected channels: " + "; ".join(
            f"{c['channel']} (lacks {', '.join(c['missing'])})" for c in unprotected))
    if security["unknown"]:
        lines.append("security unknown (no answer): " + ", ".join(security["unknown"]))
    return lines
