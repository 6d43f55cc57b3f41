"""The compose cluster users start, started here under a real Docker engine (`make compose-test`).

The repository's own compose/docker-compose.yml, unmodified, with image variables only (images
built here without a registry: tests/helpers/docker_engine.py): 3 etcd members with TLS and
authentication, 3 shards x 2 replicas, 2 proxies, every channel secured. Clients connect as
README says: TLS with the cluster CA, then memcached's ASCII auth as `memring`. Faults are
real: `docker kill`, `stop` and `pause` of a shard leader under steady writes through a
proxy, an etcd member killed, the whole project taken down and up, a rolling restart. Each
step prints its figures and how long it took (`pytest -s`). Marked `compose`: `make test`
runs it through `make compose-test`, never in its main pytest run (--ignore=tests/compose).
"""

from __future__ import annotations

import itertools
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import compose_project, docker_engine
from tests.helpers.compose_project import ClientFailure, ComposeProject, SecureClient

pytestmark = pytest.mark.compose

PROJECT = "memring-compose-test"
PROXY_PORTS = (11211, 11212)
USER = "memring"
FAULT_SHARD = "s1"
WRITE_BEFORE = 1.5  # seconds of writes before a fault
WRITE_AFTER = 4.0  # and after it (twice the lease TTL of 2 s)
PAUSE_FOR = 4.0  # seconds a paused leader stays frozen


@dataclass
class Cluster:
    project: ComposeProject
    ca: Path
    password: str

    def client(self, port: int = PROXY_PORTS[0], password: str | None = None) -> SecureClient:
        return SecureClient(port, self.ca, USER, password or self.password)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with docker_engine.docker_engine():
        docker_engine.base_images()
        docker_engine.memring_image()
        project = ComposeProject(PROJECT, docker_engine.compose_command())
        print(f"[compose-test] compose: {' '.join(project.compose)} "
              f"({project.run('version').stdout.splitlines()[0]})", flush=True)
        project.down(volumes=True)  # what an interrupted run left
        try:
            started = time.monotonic()
            project.up()
            healthy = project.wait_healthy()
            docker_engine.step(f"up, {len(project.long_running())} services healthy "
                               f"(health wait {healthy:.1f}s)", started)
            ca = tmp_path_factory.mktemp("compose") / "ca.crt"
            ca.write_text(project.secret("ca.crt"))
            user, _, password = project.secret("auth").strip().partition(":")
            assert user == USER
            yield Cluster(project, ca, password)
        finally:
            started = time.monotonic()
            project.down(volumes=True)
            docker_engine.step("down -v", started)


@pytest.fixture(autouse=True)
def each_step_timed(request: pytest.FixtureRequest) -> Iterator[None]:
    started = time.monotonic()
    yield
    docker_engine.step(f"test {request.node.name}", started)


def timed(name: str) -> float:
    print(f"[compose-test] {name} ...", flush=True)
    return time.monotonic()


# --- data through both proxies ---------------------------------------------------------------


def round_trip(cluster: Cluster, count: int, prefix: str) -> None:
    writer, reader = cluster.client(PROXY_PORTS[0]), cluster.client(PROXY_PORTS[1])
    try:
        values = {f"{prefix}-{i}": f"value-{i}-{prefix}".encode() * 3 for i in range(count)}
        for key, value in values.items():
            assert writer.set(key, value), key
        wrong = [key for key, value in values.items() if reader.get(key) != value]
    finally:
        writer.close()
        reader.close()
    assert wrong == [], f"{len(wrong)} of {count} keys read back wrong: {wrong[:5]}"


def test_2000_keys_written_through_one_proxy_read_through_the_other(cluster: Cluster) -> None:
    started = timed("round trip")
    round_trip(cluster, 2000, "rt")
    docker_engine.step("2,000 keys set via proxy-1 (11211), read via proxy-2 (11212)", started)


# --- security -------------------------------------------------------------------------------


def test_a_client_must_authenticate_and_use_tls(cluster: Cluster) -> None:
    context = ssl.create_default_context(cafile=str(cluster.ca))
    with socket.create_connection(("127.0.0.1", PROXY_PORTS[0]), timeout=5) as plain, \
            context.wrap_socket(plain, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"get k\r\n")
        reply = tls.recv(4096)
    assert reply == b"CLIENT_ERROR unauthenticated\r\n", reply
    wrong = cluster.client(password="not-the-password")
    with pytest.raises(ClientFailure, match="authentication refused"):
        wrong.request(b"version\r\n")
    # plain TCP on the TLS port: the proxy answers nothing a memcached client understands
    with socket.create_connection(("127.0.0.1", PROXY_PORTS[0]), timeout=5) as plain:
        plain.sendall(b"version\r\n")
        try:
            reply = plain.recv(4096)
        except OSError:
            reply = b""
    assert not reply.startswith(b"VERSION"), reply
    good = cluster.client()
    try:
        assert good.set("secured", b"yes")
        assert good.get("secured") == b"yes"
    finally:
        good.close()


def test_only_the_proxies_are_published_and_backends_refuse_the_host(cluster: Cluster) -> None:
    project = cluster.project
    for service in project.long_running():
        ports = project.docker("port", project.container(service)).split()
        if service.startswith("proxy-"):
            assert ports and all("127.0.0.1:" in p for p in ports if ":" in p), (service, ports)
        else:
            assert ports == [], f"{service} publishes {ports}"
    context = ssl.create_default_context(cafile=str(cluster.ca))
    context.check_hostname = False  # the address is the container's: what is tested is the cert
    address = (project.ip("backend-s1-r1"), 11211)
    # over TLS without a cluster certificate: the handshake (or the first read) fails
    with pytest.raises(OSError), socket.create_connection(address, timeout=5) as plain, \
            context.wrap_socket(plain) as tls:  # ssl.SSLError and ConnectionError are OSErrors
        tls.sendall(b"version\r\n")
        if not tls.recv(4096):
            raise ConnectionError("closed")
    with socket.create_connection(address, timeout=5) as plain:
        plain.sendall(b"version\r\n")
        try:
            reply = plain.recv(4096)
        except OSError:
            reply = b""
    assert not reply.startswith(b"VERSION"), reply


def test_etcd_refuses_a_client_without_credentials(cluster: Cluster) -> None:
    secrets = compose_project.SECRETS
    base = ["etcdctl", "--endpoints=https://etcd-1:2379", f"--cacert={secrets}/etcd-ca.crt",
            "--command-timeout=3s"]
    no_cert = cluster.project.exec("etcd-2", *base, "get", "--prefix", "/memring/",
                                   check=False)
    assert no_cert.returncode != 0
    no_user = cluster.project.exec("etcd-2", *base, f"--cert={secrets}/etcd-client.crt",
                                   f"--key={secrets}/etcd-client.key",
                                   "get", "--prefix", "/memring/", check=False)
    assert no_user.returncode != 0 and "permission denied" in no_user.stderr, no_user.stderr


# --- the image ------------------------------------------------------------------------------


def test_healthcheck_speaks_tls_and_every_service_is_healthy(cluster: Cluster) -> None:
    project = cluster.project
    assert project.healths(project.long_running()) == \
        dict.fromkeys(project.long_running(), "healthy")
    assert project.exec("backend-s2-r1", "memring-healthcheck", "127.0.0.1:11211").returncode == 0
    plain = project.exec("backend-s2-r1", "memring-healthcheck", "127.0.0.1:11211",
                         env={"MEMRING_HEALTH_TLS_CA": ""}, check=False)
    assert plain.returncode == 1, plain


def test_memring_runs_as_a_non_root_user(cluster: Cluster) -> None:
    project = cluster.project
    for service in project.long_running():
        if service.startswith("etcd-"):
            continue
        assert project.exec(service, "id", "-u").stdout.strip() == "10001", service
    user = project.docker("image", "inspect", "--format", "{{.Config.User}}",
                          docker_engine.MEMRING_IMAGE).strip()
    assert user == "10001:10001"


def test_metrics_are_scraped_on_the_compose_network(cluster: Cluster) -> None:
    script = ("import sys, urllib.request as u\n"
              "print(u.urlopen(sys.argv[1], timeout=5).read().decode())")
    found = {}
    for url, metric in (("http://backend-s1-r1:9100/metrics", "memring_backend_commands_total"),
                        ("http://proxy-2:9101/metrics", "memring_proxy_commands_total")):
        text = cluster.project.exec("proxy-1", "python3", "-c", script, url).stdout
        assert metric in text, url
        found[url] = sum(1 for line in text.splitlines() if line.startswith("memring_"))
    print(f"[compose-test] metrics scraped: {found}", flush=True)


# --- faults under steady writes ------------------------------------------------------------


@dataclass
class SteadyWriter:
    """Sets new keys one after another through a proxy until stopped."""

    client: SecureClient
    prefix: str
    acked: dict[str, bytes] = field(default_factory=dict)
    failed: int = 0
    acked_at: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        index = 0
        deadline = time.monotonic() + 300  # bounded whatever happens
        while not self.stop.is_set() and time.monotonic() < deadline:
            key, value = f"{self.prefix}-{index}", f"{index}".encode() * 4
            index += 1
            if self.client.set(key, value):
                self.acked[key] = value
                self.acked_at.append(time.monotonic())
            else:
                self.failed += 1
                time.sleep(0.01)

    def longest_gap_after(self, moment: float) -> float:
        """The longest time without an acknowledged write, counted from `moment`."""
        times = [moment, *[t for t in self.acked_at if t > moment]]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def lost(cluster: Cluster, acked: dict[str, bytes]) -> list[str]:
    reader = cluster.client(PROXY_PORTS[1])
    try:
        return [key for key, value in acked.items() if reader.get(key) != value]
    finally:
        reader.close()


def under_writes(cluster: Cluster, name: str, fault: object, recover: object) -> None:
    """Write, inject `fault()`, keep writing, `recover()`, then every acknowledged key must read
    back; print the counts and the longest wait for the next acknowledged write."""
    assert callable(fault) and callable(recover)
    writer = SteadyWriter(cluster.client(PROXY_PORTS[0]), name.replace(" ", "-"))
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    try:
        time.sleep(WRITE_BEFORE)
        moment = time.monotonic()
        fault()
        time.sleep(WRITE_AFTER)
    finally:
        writer.stop.set()
        thread.join(30)
        writer.client.close()
    assert not thread.is_alive()
    started = time.monotonic()
    recover()
    in_sync = cluster.project.wait_all_in_sync()
    missing = lost(cluster, writer.acked)
    print(f"[compose-test] {name}: {len(writer.acked)} writes acknowledged, {writer.failed} "
          f"failed, {len(missing)} acknowledged lost; longest wait for the next acknowledged "
          f"write {writer.longest_gap_after(moment) * 1000:.0f} ms; back in sync "
          f"{in_sync:.1f}s after recovery began ({time.monotonic() - started:.1f}s with the "
          f"read-back)", flush=True)
    assert writer.acked, "no write was acknowledged"
    assert missing == [], f"{len(missing)} acknowledged writes lost: {missing[:5]}"


@pytest.mark.parametrize("fault", ["kill", "stop", "pause"])
def test_a_shard_leader_fails_under_steady_writes(cluster: Cluster, fault: str) -> None:
    project = cluster.project
    project.wait_all_in_sync()
    leader = project.leader(FAULT_SHARD)
    container = project.container(f"backend-{leader}")
    started = timed(f"docker {fault} of {FAULT_SHARD}'s leader {leader}")

    def inject() -> None:
        project.docker(fault, container)
        if fault == "pause":
            time.sleep(PAUSE_FOR)
            project.docker("unpause", container)

    def recover() -> None:
        if fault != "pause":
            project.docker("start", container)

    under_writes(cluster, f"docker {fault} {leader}", inject, recover)
    assert project.leader(FAULT_SHARD) is not None
    docker_engine.step(f"docker {fault} of a leader", started)


def test_an_etcd_member_dies_under_steady_writes(cluster: Cluster) -> None:
    project = cluster.project
    container = project.container("etcd-2")
    started = timed("docker kill etcd-2")
    under_writes(cluster, "docker kill etcd-2", lambda: project.docker("kill", container),
                 lambda: project.docker("start", container))
    project.wait_healthy(["etcd-2"])
    docker_engine.step("etcd member killed and started", started)


def test_rolling_restart_keeps_the_data(cluster: Cluster) -> None:
    project = cluster.project
    started = timed(f"rolling restart of shard {FAULT_SHARD} (compose/rolling_restart.py)")
    round_trip(cluster, 300, "before-rolling")
    command = " ".join([*project.compose, "-f", str(compose_project.COMPOSE_FILE),
                        "-p", project.name])
    script = docker_engine.ROOT / "compose" / "rolling_restart.py"
    output: list[str] = []

    def restart() -> None:
        # one shard is the procedure the script repeats for each (all six: ~1 minute more)
        done = docker_engine.run(["python3", str(script), "--compose", command,
                                  "--backends-only", "--shard", FAULT_SHARD],
                                 timeout=300, env=project.env)
        output.append(done.stdout)

    under_writes(cluster, f"rolling restart of {FAULT_SHARD}", restart, lambda: None)
    print("".join(output), end="", flush=True)
    assert output and output[0].count("restarted, in sync") == 2, output
    reader = cluster.client(PROXY_PORTS[1])
    try:
        kept = sum(reader.get(f"before-rolling-{i}") is not None for i in range(300))
    finally:
        reader.close()
    assert kept == 300, f"{300 - kept} of 300 keys lost by the rolling restart"
    docker_engine.step(f"rolling restart of {FAULT_SHARD}'s 2 backends, 300 of 300 keys kept",
                       started)


def test_down_and_up_again(cluster: Cluster) -> None:
    project = cluster.project
    ca_before = project.secret("ca.crt")
    started = timed("down and up")
    project.down(volumes=False)
    project.up()
    healthy = project.wait_healthy()
    docker_engine.step(f"down, up, healthy (health wait {healthy:.1f}s)", started)
    # the second run of the init services keeps the secrets and etcd's users, cleanly
    logs = project.run("logs", "--no-color", "secrets-init", "cluster-init").stdout
    assert "Traceback" not in logs, logs[-3000:]
    assert "etcd authentication was on already" in logs
    assert project.secret("ca.crt") == ca_before
    round_trip(cluster, 500, "after-up")
