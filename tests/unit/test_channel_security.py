"""Which channels `memring status` calls protected, from the stats lines each process sends."""

from __future__ import annotations

import pytest

from memring.cluster import channel_security
from memring.cluster.channel_security import (
    etcd_channel,
    node_channels,
    proxy_channels,
    render,
    summary,
)
from memring.cluster.cli import main
from memring.cluster.etcd_security import EtcdSecurity
from memring.cluster.node_stats import AUTHENTICATED, TRANSPORT

pytestmark = pytest.mark.unit

SECURE_NODE = {TRANSPORT: "tls", "ssl_handshake_errors": "0", "auth_cmds": "1",
               AUTHENTICATED: "yes", "settings:auth_enabled_ascii": "/run/auth",
               "settings:ssl_verify_mode": "2", "memring_repl_peer_auth": "secret"}
PLAIN_NODE = {TRANSPORT: "plain", "auth_cmds": "0", "settings:auth_enabled_ascii": "no",
              "settings:ssl_verify_mode": "0", "memring_repl_peer_auth": "plain"}
SECURE_PROXY = {TRANSPORT: "tls", "ssl_handshake_errors": "0", "auth_cmds": "3",
                "memring_backend_tls": "require", "memring_backend_auth": "yes"}
PLAIN_PROXY = {TRANSPORT: "plain", "memring_backend_tls": "off", "memring_backend_auth": "no"}


def test_a_secure_node_and_proxy() -> None:
    channels = node_channels("s1-r1", SECURE_NODE) + proxy_channels("proxy-1", SECURE_PROXY)
    assert all(c["protected"] for c in channels) and all(not c["missing"] for c in channels)
    assert [c["channel"] for c in channels] == ["s1-r1 client port", "s1-r1 peer links",
                                                "clients -> proxy-1", "proxy-1 -> backends"]


def test_a_plain_node_and_proxy() -> None:
    port, peers = node_channels("s1-r1", PLAIN_NODE)
    assert port["missing"] == ["TLS", "client cert", "auth"]  # auth_cmds 0 is not auth
    assert peers["missing"] == ["secret"]
    clients, links = proxy_channels("proxy-1", PLAIN_PROXY)
    assert clients["missing"] == ["TLS", "auth"]
    assert links["missing"] == ["TLS", "verified", "auth"]


def test_what_each_line_is_needed_for() -> None:
    # reached over TLS but no ssl_handshake_errors: not taken for TLS (and the reverse)
    port = node_channels("n", {**SECURE_NODE, TRANSPORT: "plain"})[0]
    assert port["missing"] == ["TLS", "client cert"]
    port = node_channels("n", {k: v for k, v in SECURE_NODE.items()
                               if k != "ssl_handshake_errors"})[0]
    assert "TLS" in port["missing"]
    port = node_channels("n", {**SECURE_NODE, "settings:ssl_verify_mode": "1"})[0]
    assert port["missing"] == ["client cert"]
    # a proxy prints auth_cmds only with an auth file; without TLS verification: "verified"
    clients, links = proxy_channels("p", {**SECURE_PROXY, "memring_backend_tls": "none"})
    assert clients["protected"] and links["missing"] == ["verified"]
    # peer TLS counts once a node reports it; optional is not secret
    peers = node_channels("n", {**SECURE_NODE, "memring_repl_peer_tls": "off"})[1]
    assert peers["missing"] == ["TLS"]
    peers = node_channels("n", {**SECURE_NODE, "memring_repl_peer_tls": "on"})[1]
    assert peers["has"] == ["secret", "TLS"] and peers["protected"]
    peers = node_channels("n", {**SECURE_NODE, "memring_repl_peer_auth": "optional"})[1]
    assert peers["missing"] == ["secret"]
    # replication off: no peer links
    no_peers = {k: v for k, v in SECURE_NODE.items() if k != "memring_repl_peer_auth"}
    assert len(node_channels("n", no_peers)) == 1


def test_etcd_and_no_answer() -> None:
    full = EtcdSecurity("ca.crt", "c.crt", "c.key", "memring", "pw")
    assert etcd_channel("https://127.0.0.1:2379", full)["protected"]
    assert etcd_channel("http://127.0.0.1:2379", EtcdSecurity())["missing"] == \
        ["https", "client cert", "user"]
    assert etcd_channel("https://a:1,http://b:2", full)["missing"] == ["https"]
    unknown = node_channels("n", None) + proxy_channels("p", None)
    assert all(c["protected"] is None for c in unknown)
    doc = summary(unknown)
    assert doc["protected"] is False and doc["unprotected"] == [] and len(doc["unknown"]) == 4


def test_render() -> None:
    doc = summary([etcd_channel("https://e:1", EtcdSecurity("ca", "c", "k", "u", "p")),
                   *node_channels("a", SECURE_NODE), *node_channels("b", PLAIN_NODE),
                   *proxy_channels("p", SECURE_PROXY), *proxy_channels("q", None)])
    lines = render(doc)
    assert lines[0] == ("security: clients TLS+auth, proxy links TLS+verified+auth, backend "
                        "ports none, peer links none, etcd https+client cert+user")
    assert lines[1] == ("WARNING: unprotected channels: b client port (lacks TLS, client "
                        "cert, auth); b peer links (lacks secret)")
    assert lines[2] == "security unknown (no answer): clients -> q, q -> backends"
    assert render(summary(proxy_channels("p", SECURE_PROXY)))[1:] == []
    assert channel_security.KINDS[0] == "clients"


def test_secure_wants_its_own_etcd(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "--secure", "--etcd", "http://127.0.0.1:2379"]) == 2
    assert "--secure starts and secures an etcd of its own" in capsys.readouterr().err
    assert main(["up", "--secure", "--no-peer-secret"]) == 2


def test_status_tls_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--etcd", "http://127.0.0.1:1", "--tls-key", "k.key"]) == 2
    assert "--tls-key without --tls-cert" in capsys.readouterr().err
    assert main(["status", "--etcd", "http://127.0.0.1:1", "--tls-ca", "/nonexistent"]) == 2
    assert "TLS files:" in capsys.readouterr().err
