"""Metrics and logs of real processes: a backend and a proxy started with `--metrics-listen`
are scraped over HTTP (urllib), parsed with prometheus_client's parser, driven with pymemcache,
and scraped again; every figure must have moved by exactly what the test did. Then the
proxy's per-backend figures after a backend dies, the HTTP edge cases of the endpoint, a
cluster-mode backend's role and epoch, and the one-line-per-event log formats.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymemcache.client.base import Client

from tests.helpers import servers

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def fetch(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    """(status, content type, body) of GET `path`."""
    try:
        with urllib.request.urlopen(f"http://{servers.HOST}:{port}{path}", timeout=5) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(port: int, timeout: float = 10.0) -> Samples:
    """Every sample of /metrics, keyed by (name, sorted labels); waits for the endpoint."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, content_type, body = fetch(port)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def client(server: servers.RunningServer) -> Client:
    return Client(server.address, connect_timeout=5, timeout=5, default_noreply=False)


# -- backend -----------------------------------------------------------------------------


def test_backend_figures_move_by_what_was_done() -> None:
    metrics = servers.free_port()
    with servers.backend("--metrics-listen", f"{servers.HOST}:{metrics}") as node:
        before = scrape(metrics)
        mc = client(node)
        try:
            for i in range(5):
                assert mc.set(f"k{i}", b"x" * 100)
            for i in range(3):
                assert mc.get(f"k{i}") == b"x" * 100
            assert mc.get("absent-1") is None
            assert mc.get_many(["k3", "absent-2"]) == {"k3": b"x" * 100}
            assert mc.set("n", b"1")
            assert mc.incr("n", 2) == 3
            assert mc.incr("absent-3", 1) is None
            assert mc.decr("n", 1) == 2
            assert mc.touch("k4", 100) is True
            assert mc.touch("absent-4", 100) is False
            _, token = mc.gets("k4")
            assert mc.cas("k4", b"y", token) is True
            assert mc.cas("k4", b"z", token) is False           # EXISTS: bad value
            assert mc.cas("absent-5", b"z", b"1") is None       # NOT_FOUND
            assert mc.delete("k0") is True
            assert mc.delete("absent-6") is False
            during = scrape(metrics)
        finally:
            mc.close()
        deadline = time.monotonic() + 5
        while value(after := scrape(metrics), "memring_backend_current_connections") != 0:
            assert time.monotonic() < deadline, "the closed connection is still counted"
            time.sleep(0.02)

    commands = "memring_backend_commands_total"
    assert delta(before, during, commands, command="get", result="hit") == 3 + 1 + 1  # + gets
    assert delta(before, during, commands, command="get", result="miss") == 2
    assert delta(before, during, commands, command="set", result="processed") == 5 + 1 + 3
    assert delta(before, during, commands, command="incr", result="hit") == 1
    assert delta(before, during, commands, command="incr", result="miss") == 1
    assert delta(before, during, commands, command="decr", result="hit") == 1
    assert delta(before, during, commands, command="touch", result="hit") == 1
    assert delta(before, during, commands, command="touch", result="miss") == 1
    assert delta(before, during, commands, command="cas", result="hit") == 1
    assert delta(before, during, commands, command="cas", result="badval") == 1
    assert delta(before, during, commands, command="cas", result="miss") == 1
    assert delta(before, during, commands, command="delete", result="hit") == 1
    assert delta(before, during, commands, command="delete", result="miss") == 1
    assert value(before, "memring_backend_items") == 0
    assert value(during, "memring_backend_items") == 5 + 1 - 1  # k0..k4, n; k0 deleted
    assert delta(before, during, "memring_backend_items_stored_total") == 5 + 1 + 1  # + cas
    assert value(during, "memring_backend_memory_used_bytes") > 5 * 100
    assert value(during, "memring_backend_memory_limit_bytes") == 64 << 20
    assert value(during, "memring_backend_current_connections") == 1  # the pymemcache client
    assert delta(before, during, "memring_backend_connections_total") == 1
    assert delta(during, after, "memring_backend_connections_total") == 0
    assert delta(before, during, "memring_backend_read_bytes_total") > 0
    assert delta(before, during, "memring_backend_written_bytes_total") > 0
    assert value(during, "memring_backend_evictions_total") == 0
    assert value(during, "memring_backend_role", role="standalone") == 1
    assert value(during, "memring_backend_role", role="leader") == 0
    assert value(during, "memring_backend_epoch") == 0
    assert value(during, "process_resident_memory_bytes") > 0


def test_evictions_show_under_the_memory_limit() -> None:
    metrics = servers.free_port()
    with servers.backend("--memory", "1", "--metrics-listen",
                         f"{servers.HOST}:{metrics}") as node:
        mc = client(node)
        try:
            for i in range(40):  # 40 x 100 KB through a 1 MB store
                assert mc.set(f"big{i}", b"v" * 100_000)
        finally:
            mc.close()
        samples = scrape(metrics)
    evictions = value(samples, "memring_backend_evictions_total")
    assert evictions >= 40 - 10
    assert value(samples, "memring_backend_items") == 40 - evictions
    assert value(samples, "memring_backend_memory_used_bytes") <= 1 << 20


def test_endpoint_answers_only_get_metrics_and_bounds_requests() -> None:
    metrics = servers.free_port()
    with servers.backend("--metrics-listen", f"{servers.HOST}:{metrics}"):
        scrape(metrics)
        status, _, body = fetch(metrics, "/")
        assert status == 404 and "GET /metrics" in body
        assert fetch(metrics, "/metrics?x=1")[0] == 200
        with socket.create_connection((servers.HOST, metrics), timeout=5) as silent:
            # a client that never finishes its request does not hold up a scrape
            silent.sendall(b"GET /metr")
            assert fetch(metrics)[0] == 200
        for request, status_line in ((b"POST /metrics HTTP/1.0\r\n\r\n", b"HTTP/1.1 405 "),
                                     (b"GET /other HTTP/1.0\r\n\r\n", b"HTTP/1.1 404 "),
                                     (b"garbage\r\n\r\n", b"HTTP/1.1 400 "),
                                     (b"GET /metrics HTTP/1.0\r\nX: " + b"a" * 10000,
                                      b"HTTP/1.1 431 ")):
            with socket.create_connection((servers.HOST, metrics), timeout=5) as sock:
                sock.sendall(request)
                assert _read_all(sock).startswith(status_line)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


HEADER_TIMEOUT = 2.0  # netio.metrics_http.HEADER_TIMEOUT, as a client sees it


def test_slow_headers_never_hold_up_a_scrape() -> None:
    """16 connections that never finish their request head, two rounds (the second after
    the first's were cut): each scrape is answered at once (the endpoint cuts the slowest
    off to make room), every slow client hears HTTP 408, never memcached's text, and a lone
    slow one is cut after the timeout."""
    metrics = servers.free_port()
    with servers.backend("--metrics-listen", f"{servers.HOST}:{metrics}"):
        scrape(metrics)
        for _ in range(2):
            slow = [socket.create_connection((servers.HOST, metrics), timeout=5)
                    for _ in range(16)]
            try:
                for sock in slow:
                    sock.sendall(b"GET /metr")
                began = time.monotonic()
                scrape(metrics)
                assert time.monotonic() - began < HEADER_TIMEOUT / 2
                for sock in slow:
                    sock.settimeout(HEADER_TIMEOUT + 3)
                    assert _read_all(sock).startswith(b"HTTP/1.1 408 Request Timeout\r\n")
            finally:
                for sock in slow:
                    sock.close()
        with socket.create_connection((servers.HOST, metrics), timeout=5) as lone:
            began = time.monotonic()
            lone.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            lone.settimeout(HEADER_TIMEOUT + 3)
            assert _read_all(lone).startswith(b"HTTP/1.1 408 ")
            assert HEADER_TIMEOUT * 0.8 <= time.monotonic() - began <= HEADER_TIMEOUT + 2


def test_metrics_port_in_use_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind((servers.HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        for module in ("backend", "proxy"):
            argv = [sys.executable, "-m", f"memring.{module}", "--listen",
                    f"{servers.HOST}:{servers.free_port()}",
                    "--metrics-listen", f"{servers.HOST}:{port}"]
            if module == "proxy":
                argv += ["--config", str(REPO / "etc" / "memring.toml")]
            done = subprocess.run(argv, capture_output=True, timeout=30, text=True)
            assert done.returncode == 1, done.stderr
            errors = [line for line in done.stderr.splitlines() if "error" in line]
            assert errors == [f"memring-{module}: error: port {port} on {servers.HOST} is "
                              "already in use; choose another port"], done.stderr


# -- proxy -------------------------------------------------------------------------------


def test_proxy_figures_move_by_what_was_done() -> None:
    metrics = servers.free_port()
    with servers.backend() as b1, servers.backend() as b2, \
            servers.proxy([[b1], [b2]], "--metrics-listen",
                          f"{servers.HOST}:{metrics}") as proxy:
        before = scrape(metrics)
        mc = client(proxy)
        try:
            for i in range(20):
                assert mc.set(f"p{i}", b"v")
            for i in range(20):
                assert mc.get(f"p{i}") == b"v"
            for i in range(10):
                assert mc.get(f"missing{i}") is None
            assert mc.delete("p0") is True
            assert len(mc.get_many([f"p{i}" for i in range(1, 20)])) == 19
            during = scrape(metrics)
        finally:
            mc.close()

    commands = "memring_proxy_commands_total"
    assert delta(before, during, commands, command="store") == 20
    assert delta(before, during, commands, command="get") == 20 + 10 + 1
    assert delta(before, during, commands, command="delete") == 1
    requests = 20 + 30 + 1 + 1
    histogram = "memring_proxy_request_duration_seconds"
    assert delta(before, during, f"{histogram}_count") == requests
    assert delta(before, during, f"{histogram}_bucket", le="+Inf") == requests
    assert 0 < delta(before, during, f"{histogram}_sum") < requests * 1.0
    buckets = sorted((float(labels[0][1]), count) for (name, labels), count in during.items()
                     if name == f"{histogram}_bucket")
    assert [count for _, count in buckets] == sorted(count for _, count in buckets)  # cumulative
    # single-key requests go to one node each; the multi-get to both shards
    sent = sum(delta(before, during, "memring_proxy_backend_requests_total",
                     shard=shard, backend=f"{servers.HOST}:{node.port}")
               for shard, node in (("s1", b1), ("s2", b2)))
    assert sent == 20 + 30 + 1 + 2
    assert value(during, "memring_proxy_current_connections") == 1
    assert delta(before, during, "memring_proxy_connections_total") == 1
    assert value(during, "memring_proxy_shards") == 2
    for shard, node in (("s1", b1), ("s2", b2)):
        labels = {"shard": shard, "backend": f"{servers.HOST}:{node.port}"}
        assert value(during, "memring_proxy_backend_up", **labels) == 1
        assert value(during, "memring_proxy_backend_errors_total", **labels) == 0
        assert value(during, "memring_proxy_shard_available_nodes", shard=shard) == 1


def test_proxy_counts_a_dead_backend_errors_and_ejection() -> None:
    metrics = servers.free_port()
    with servers.backend() as b1, servers.backend() as b2, \
            servers.proxy([[b1], [b2]], "--metrics-listen", f"{servers.HOST}:{metrics}",
                          failure_limit=2, retry_ms=60000) as proxy:
        dead = {"shard": "s2", "backend": f"{servers.HOST}:{b2.port}"}
        live = {"shard": "s1", "backend": f"{servers.HOST}:{b1.port}"}
        mc = client(proxy)
        try:  # the pools open on demand: both in use, so the dead one is seen going
            mc.get_many([f"warm{i}" for i in range(20)])
        finally:
            mc.close()
        before = scrape(metrics)
        servers.stop(b2.process)
        deadline = time.monotonic() + 10
        while value(samples := scrape(metrics), "memring_proxy_backend_ejected", **dead) == 0:
            assert time.monotonic() < deadline, "the dead backend was never ejected"
            time.sleep(0.05)
        mc = client(proxy)
        try:
            for i in range(20):
                mc.get(f"e{i}")  # on_shard_error = miss: the dead shard's keys miss
        finally:
            mc.close()
        after = scrape(metrics)
    failed = delta(before, after, "memring_proxy_shard_error_misses_total")
    assert failed > 0  # some keys live on the dead shard
    assert value(samples, "memring_proxy_backend_ejections_total", **dead) == 1
    assert value(after, "memring_proxy_backend_ejections_total", **dead) == 1  # still out
    assert value(after, "memring_proxy_backend_up", **dead) == 0
    assert value(after, "memring_proxy_shard_available_nodes", shard="s2") == 0
    assert delta(before, after, "memring_proxy_backend_errors_total", **dead) >= 2 + failed
    assert value(after, "memring_proxy_backend_errors_total", **live) == 0
    assert value(after, "memring_proxy_backend_ejected", **live) == 0


# -- cluster mode ------------------------------------------------------------------------


@pytest.mark.requires_etcd
def test_cluster_backend_reports_role_epoch_and_replication() -> None:
    from memring.cluster.etcd_process import running_etcd

    metrics = servers.free_port()
    with running_etcd() as etcd, servers.running("memring-backend", servers.backend_argv(
            "--etcd", etcd.url, "--cluster", "metrics1", "--shard", "s1", "--node-id", "n1",
            "--replication", "async", "--peer-listen", f"{servers.HOST}:{servers.free_port()}",
            "--metrics-listen", f"{servers.HOST}:{metrics}")):
        deadline = time.monotonic() + 10
        while value(samples := scrape(metrics), "memring_backend_role", role="leader") != 1:
            assert time.monotonic() < deadline, "the only node never led its shard"
            time.sleep(0.05)
    assert value(samples, "memring_backend_epoch") > 0
    info = [labels for (name, labels) in samples if name == "memring_backend_info"]
    assert len(info) == 1 and ("shard", "s1") in info[0] and ("node_id", "n1") in info[0]
    assert any(name.startswith("memring_backend_repl_") for name, _ in samples)


# -- logs --------------------------------------------------------------------------------

LOGFMT = re.compile(r'^ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=(DEBUG|INFO|WARNING|ERROR) '
                    r'logger=memring\.[a-z.]+ msg=("([^"\\]|\\.)*"|\S+)( exc=.*)?$')


@contextlib.contextmanager
def stderr_lines(*extra: str) -> Iterator[list[str]]:
    """A backend's stderr lines, read after it stopped (the list is filled on exit)."""
    lines: list[str] = []
    with servers.running("memring-backend", servers.backend_argv(*extra)) as node:
        yield lines
    lines += node.log_text().splitlines()


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_logs_are_one_line_per_event(fmt: str) -> None:
    with stderr_lines("--log-format", fmt) as lines:
        pass
    assert any("serving memcached protocol" in line for line in lines), lines
    assert any("SIGTERM received" in line for line in lines)
    for line in lines:
        if fmt == "logfmt":
            assert LOGFMT.match(line), line
        else:
            record = json.loads(line)
            assert set(record) >= {"ts", "level", "logger", "msg"}
            assert record["level"] in ("INFO", "WARNING", "ERROR")


def test_log_level_warning_hides_info() -> None:
    with stderr_lines("--log-level", "warning") as lines:
        pass
    assert not any("level=INFO" in line for line in lines), lines
