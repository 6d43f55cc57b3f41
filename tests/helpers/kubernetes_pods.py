"""A rehearsal of deploy/kubernetes/'s pods as local processes, for a machine without
Kubernetes: run inside a network namespace of its own whose /etc/hosts gives every pod its
DNS names (tests/integration/test_kubernetes_pods.py makes both and runs this module there:
`python -m tests.helpers.kubernetes_pods DIR`). It prints one JSON document of figures.

Theory of operation: each pod of the manifests (3 etcd members, every shard's replicas, 2
proxies) is its container's command as the kubelet would run it (tests/helpers/
kubernetes_manifests.prepare: the Secrets make_secrets.py makes, the ConfigMaps, the downward
API), with two changes: an address of its own on the namespace's loopback stands for the
pod's IP (`0.0.0.0` in a listen address becomes it, and the hosts file maps the pod's names
to it), and etcd is Debian's 3.4 binary where the manifest names the image's 3.5. Then, as
docs/kubernetes.md deploys: etcd, its authentication (the calls of etcd-auth.sh, through
etcd's JSON gateway: etcdctl is not installed here), the init job, the backends (ready when
their readiness probe command exits 0), the proxies; a client over TLS with the client auth
file through both proxies; `memring status` as the docs run it in a proxy pod; and a rolling
restart of one shard as a StatefulSet does it (preStop command, SIGTERM, start again, wait
for the probe) under steady writes through a proxy. Every wait is bounded.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memring.cluster.etcd_process import find_etcd
from memring.cluster.keyspace import prefix_end
from tests.helpers.kubernetes_manifests import (
    NAMESPACE,
    ROOT,
    Object,
    Pod,
    config_map,
    load_make_secrets,
    named,
    prepare,
    shard_sets,
)

BIN = Path(sys.executable).parent
PROXY_SERVICE = "memring-proxy"
PROXY_PODS = ("memring-proxy-a", "memring-proxy-b")
ETCD_SET = "memring-etcd"
STARTUP = 60.0     # seconds for a group of pods to come up


@dataclass
class RunningPod:
    name: str
    workload: Object
    ip: str
    root: Path
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def container(self) -> Object:
        container: Object = self.workload["spec"]["template"]["spec"]["containers"][0]
        return container


def pod_addresses() -> dict[str, str]:
    """{pod name: its address on the namespace's loopback}."""
    etcd = named("StatefulSet", ETCD_SET)
    addresses = {f"{ETCD_SET}-{i}": f"127.0.2.{i + 1}" for i in range(etcd["spec"]["replicas"])}
    count = 0
    for shard in shard_sets():
        for ordinal in range(shard["spec"]["replicas"]):
            count += 1
            addresses[f"{shard['metadata']['name']}-{ordinal}"] = f"127.0.1.{count}"
    addresses.update({pod: f"127.0.3.{i + 1}" for i, pod in enumerate(PROXY_PODS)})
    return addresses


def hosts_file() -> str:
    """What /etc/hosts says inside the namespace: the names a pod's DNS gives each pod (its
    headless Service's) and the proxies' Service (its first pod)."""
    lines = ["127.0.0.1 localhost"]
    for pod, address in pod_addresses().items():
        service = ETCD_SET if pod.startswith(ETCD_SET) else \
            "memring-backend" if pod not in PROXY_PODS else ""
        if service:
            base = f"{pod}.{service}"
            lines.append(f"{address} {base} {base}.{NAMESPACE} {base}.{NAMESPACE}.svc "
                         f"{base}.{NAMESPACE}.svc.cluster.local")
    first = pod_addresses()[PROXY_PODS[0]]
    lines.append(f"{first} {PROXY_SERVICE} {PROXY_SERVICE}.{NAMESPACE} "
                 f"{PROXY_SERVICE}.{NAMESPACE}.svc {PROXY_SERVICE}.{NAMESPACE}.svc.cluster.local")
    return "\n".join(lines) + "\n"


class Rehearsal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        made = load_make_secrets().make(directory / "secrets", NAMESPACE, "cluster.local")
        self.secrets = {obj["metadata"]["name"]: obj for obj in made}
        self.pods: dict[str, RunningPod] = {}
        self.figures: dict[str, Any] = {}
        self.started = time.monotonic()

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr,
              flush=True)

    # -- pods ------------------------------------------------------------------------------

    def pod(self, name: str, workload: Object) -> RunningPod:
        ip = pod_addresses().get(name, "127.0.4.1")  # a job's pod: an address of its own
        running = RunningPod(name, workload, ip, self.directory / "pods" / name)
        prepared = prepare(workload, running.container(), Pod(name, NAMESPACE, ip),
                           running.root, self.secrets)
        argv = [a.replace("0.0.0.0", ip) for a in prepared.argv]
        if argv[0] == "/usr/local/bin/etcd":
            argv[0] = find_etcd()
        elif argv[0].startswith("memring"):
            argv[0] = str(BIN / argv[0])
        running.argv = argv
        running.env = self.environment(prepared.env, running.root)
        self.pods[name] = running
        return running

    @staticmethod
    def environment(env: dict[str, str], root: Path) -> dict[str, str]:
        base = {"PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(root),
                "XDG_RUNTIME_DIR": str(root), "LANG": "C.UTF-8"}
        return {**base, **env}

    def start(self, pod: RunningPod) -> None:
        pod.starts += 1
        logfile = open(pod.root / f"log-{pod.starts}.txt", "wb")  # noqa: SIM115 (the child's)
        pod.process = subprocess.Popen(pod.argv, env=pod.env, cwd=pod.root, stdout=logfile,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        logfile.close()

    def stop(self, pod: RunningPod, timeout: float = 30.0) -> float:
        """SIGTERM, as the kubelet sends after the preStop hook; seconds until it exited."""
        assert pod.process is not None
        began = time.monotonic()
        pod.process.send_signal(signal.SIGTERM)
        try:
            code = pod.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pod.process.kill()
            pod.process.wait(10)
            raise AssertionError(f"{pod.name} did not stop within {timeout}s") from None
        assert code == 0, f"{pod.name} exited {code} after SIGTERM"
        return time.monotonic() - began

    def run(self, pod: RunningPod, argv: list[str], timeout: float = 30.0
            ) -> subprocess.CompletedProcess[str]:
        """A command in the pod's container (a probe, a hook), as the kubelet execs it."""
        if argv[:2] == ["sh", "-c"] or argv[:2] == ["sh", "-ec"]:
            argv = ["/bin/sh", *argv[1:]]
        return subprocess.run(argv, env=pod.env, cwd=pod.root, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def ready(self, pod: RunningPod) -> bool:
        probe = pod.container()["readinessProbe"]["exec"]["command"]
        return self.run(pod, probe).returncode == 0

    def wait_ready(self, pods: list[RunningPod], timeout: float = STARTUP) -> float:
        """Seconds until every pod's readiness probe passed, each probed as the kubelet
        does: first after initialDelaySeconds, then every periodSeconds (the probes are
        processes that talk to etcd: probing faster would load this machine's etcd more
        than a cluster's kubelets would)."""
        began = time.monotonic()
        due = {pod.name: began + pod.container()["readinessProbe"].get(
            "initialDelaySeconds", 0) for pod in pods}
        waiting = list(pods)
        while waiting:
            assert time.monotonic() - began < timeout, \
                f"not ready within {timeout}s: {[p.name for p in waiting]}"
            for pod in list(waiting):
                assert pod.process is not None and pod.process.poll() is None, \
                    f"{pod.name} exited: {(pod.root / f'log-{pod.starts}.txt').read_text()}"
                if time.monotonic() < due[pod.name]:
                    continue
                if self.ready(pod):
                    waiting.remove(pod)
                due[pod.name] = time.monotonic() + pod.container()["readinessProbe"].get(
                    "periodSeconds", 10)
            time.sleep(0.1)
        return time.monotonic() - began

    def close(self) -> None:
        for pod in self.pods.values():
            if pod.process is not None and pod.process.poll() is None:
                pod.process.kill()
                pod.process.wait(10)

    # -- the steps of docs/kubernetes.md ----------------------------------------------------

    def start_etcd(self) -> None:
        etcd = named("StatefulSet", ETCD_SET)
        members = [self.pod(f"{ETCD_SET}-{i}", etcd) for i in range(etcd["spec"]["replicas"])]
        began = time.monotonic()
        for member in members:
            self.start(member)
        self.wait_etcd_healthy(members, began)
        self.figures["etcd_ready_s"] = round(time.monotonic() - began, 2)
        self.log(f"etcd: {len(members)} members healthy")

    @staticmethod
    def wait_etcd_healthy(members: list[RunningPod], began: float) -> None:
        """Until every member's readiness probe (GET /health on the metrics port) passes."""
        for member in members:
            url = f"http://{member.ip}:2381/health"
            while True:
                assert time.monotonic() - began < STARTUP, f"{member.name} not healthy"
                with contextlib.suppress(OSError, ValueError), \
                        urllib.request.urlopen(url, timeout=2) as reply:
                    if json.loads(reply.read()).get("health") == "true":
                        break
                time.sleep(0.2)

    def enable_etcd_auth(self) -> None:
        """etcd-auth.sh's calls, through the JSON gateway with the etcd-admin certificate."""
        files = self.pods[f"{ETCD_SET}-0"].root / "etc" / "etcd" / "tls"
        context = ssl.create_default_context(cafile=str(files / "ca.crt"))
        context.load_cert_chain(str(files / "etcd-admin.crt"), str(files / "etcd-admin.key"))
        secrets_dir = self.directory / "secrets"
        user = config_map("memring-env")["MEMRING_ETCD_USER"]
        prefix = f"/memring/{config_map('memring-env')['MEMRING_CLUSTER']}/"

        def call(path: str, body: dict[str, Any]) -> None:
            request = urllib.request.Request(
                f"https://{ETCD_SET}-0.{ETCD_SET}:2379/v3/auth/{path}", method="POST",
                data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10, context=context) as reply:
                reply.read()

        def password(name: str) -> str:
            return (secrets_dir / name).read_text().split()[0]

        def b64(text: str) -> str:
            return base64.b64encode(text.encode()).decode()

        call("role/add", {"name": "root"})
        call("user/add", {"name": "root", "password": password("etcd-root.password")})
        call("user/grant", {"user": "root", "role": "root"})
        call("role/add", {"name": user})
        call("role/grant", {"name": user, "perm": {
            "permType": "READWRITE", "key": b64(prefix),
            "range_end": b64(prefix_end(prefix.encode()).decode())}})
        call("user/add", {"name": user, "password": password("etcd-memring.password")})
        call("user/grant", {"user": user, "role": user})
        call("enable", {})
        # the members stay ready with authentication on (their probe asks no credentials)
        self.wait_etcd_healthy([p for n, p in self.pods.items() if n.startswith(ETCD_SET)],
                               time.monotonic())
        self.log(f"etcd: authentication on, user {user} on {prefix}; members still healthy")

    def cluster_init(self) -> None:
        job = named("Job", "memring-cluster-init")
        pod = self.pod("memring-cluster-init-x7k2p", job)
        began = time.monotonic()
        result = self.run(pod, pod.argv, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        self.figures["init_s"] = round(time.monotonic() - began, 2)
        self.log(f"cluster-init: done in {self.figures['init_s']}s")

    def start_backends(self) -> list[RunningPod]:
        backends = [self.pod(f"{shard['metadata']['name']}-{ordinal}", shard)
                    for shard in shard_sets() for ordinal in range(shard["spec"]["replicas"])]
        for backend in backends:
            self.start(backend)
        self.figures["backends"] = len(backends)
        # bounded loosely: on this shared machine at a load average of 40 one run needed
        # more than 120 s (each backend's first etcd calls timed out at 1 s, and it retried)
        self.figures["backends_ready_s"] = round(self.wait_ready(backends, 4 * STARTUP), 2)
        self.log(f"backends: {len(backends)} ready (probe exit 0) after "
                 f"{self.figures['backends_ready_s']}s")
        return backends

    def start_proxies(self) -> None:
        deployment = named("Deployment", PROXY_SERVICE)
        proxies = [self.pod(name, deployment) for name in PROXY_PODS]
        began = time.monotonic()
        for proxy in proxies:
            self.start(proxy)
        for proxy in proxies:
            while True:  # the readiness probe: a TCP connection to the client port
                assert time.monotonic() - began < STARTUP, f"{proxy.name} not listening"
                with contextlib.suppress(OSError), socket.create_connection((proxy.ip, 11211), 1):
                    break
                time.sleep(0.2)
        self.figures["proxies_ready_s"] = round(time.monotonic() - began, 2)
        self.log(f"proxies: {len(proxies)} listening")

    # -- clients ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def client(self, proxy: str) -> Iterator[socket.socket]:
        """A memcached client of the proxy pod `proxy` over TLS, logged in as the client
        auth file's first user, connecting by the Service's name as an application does."""
        files = self.directory / "secrets"
        context = ssl.create_default_context(cafile=str(files / "memring-ca" / "ca.crt"))
        user, password = (files / "client-users").read_text().split()[0].split(":", 1)
        with socket.create_connection((pod_addresses()[proxy], 11211), 10) as raw, \
                context.wrap_socket(raw, server_hostname=f"{PROXY_SERVICE}.{NAMESPACE}.svc"
                                    ) as sock:
            sock.settimeout(10)
            login = f"{user} {password}".encode()
            assert ask(sock, b"set auth 0 0 %d\r\n%s\r\n" % (len(login), login)) == \
                b"STORED\r\n"
            yield sock

    def round_trip(self, keys: int = 500) -> None:
        with self.client(PROXY_PODS[0]) as first:
            for i in range(keys):
                assert ask(first, b"set rt%d 0 0 6\r\nvalue%d\r\n" % (i, i % 10)) == \
                    b"STORED\r\n"
        wrong = 0
        with self.client(PROXY_PODS[1]) as second:
            for i in range(keys):
                reply = ask(second, b"get rt%d\r\n" % i, end=b"END\r\n")
                wrong += reply != b"VALUE rt%d 0 6\r\nvalue%d\r\nEND\r\n" % (i, i % 10)
        self.figures["round_trip"] = {"keys": keys, "wrong": wrong}
        self.log(f"round trip: {keys} keys set through {PROXY_PODS[0]}, {wrong} wrong "
                 f"through {PROXY_PODS[1]}")

    def status(self) -> None:
        """`memring status` in a proxy pod, as docs/kubernetes.md runs it."""
        proxy = self.pods[PROXY_PODS[0]]
        tls = proxy.root / "etc" / "memring" / "tls"
        auth = proxy.root / "etc" / "memring" / "backend-auth" / "users"
        result = self.run(proxy, ["memring", "status", "--json", "--tls-ca", str(tls / "ca.crt"),
                                  "--tls-cert", str(tls / "tls.crt"),
                                  "--tls-key", str(tls / "tls.key"), "--auth-file", str(auth)])
        assert result.returncode == 0, result.stdout + result.stderr
        doc = json.loads(result.stdout)
        nodes = [n for s in doc["shards"] for n in s["nodes"]]
        self.figures["status"] = {
            "shards": len(doc["shards"]), "nodes": len(nodes),
            "in_sync": sum(n["in_sync"] for n in nodes),
            "proxies": len(doc["proxies"]),
            "unprotected": doc["security"]["unprotected"],
            "unknown": doc["security"]["unknown"]}
        self.log(f"memring status: {self.figures['status']}")

    def rolling_restart(self, shard: Object) -> None:
        """The StatefulSet's rolling update of one shard (highest ordinal first) under writes
        through a proxy: every acknowledged write must be there at the end."""
        name = shard["metadata"]["name"]
        acknowledged: list[int] = []
        failed: list[bytes] = []
        done = threading.Event()

        def write() -> None:
            try:
                with self.client(PROXY_PODS[0]) as sock:
                    i = 0
                    while not done.is_set() and i < 100_000:
                        reply = ask(sock, b"set roll%d 0 0 1\r\nx\r\n" % i)
                        if reply == b"STORED\r\n":
                            acknowledged.append(i)
                        else:
                            failed.append(reply or b"connection closed")
                        i += 1
                        time.sleep(0.005)
            except OSError as exc:  # the writer's connection broke: a failure, and the end
                failed.append(f"{exc}".encode())

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        steps = []
        for ordinal in reversed(range(shard["spec"]["replicas"])):
            pod = self.pods[f"{name}-{ordinal}"]
            hook = pod.container()["lifecycle"]["preStop"]["exec"]["command"]
            began = time.monotonic()
            stepped = self.run(pod, hook)
            hook_s = time.monotonic() - began
            stop_s = self.stop(pod)
            self.start(pod)
            ready_s = self.wait_ready([pod])
            steps.append({"pod": pod.name, "hook": stepped.stdout.strip() or
                          stepped.stderr.strip(), "hook_exit": stepped.returncode,
                          "hook_s": round(hook_s, 2), "stop_s": round(stop_s, 2),
                          "ready_s": round(ready_s, 2)})
            self.log(f"rolled {pod.name}: {steps[-1]}")
        time.sleep(0.5)
        done.set()
        writer.join(30)
        lost = 0
        with self.client(PROXY_PODS[1]) as reader:
            for i in acknowledged:
                lost += ask(reader, b"get roll%d\r\n" % i, end=b"END\r\n") != \
                    b"VALUE roll%d 0 1\r\nx\r\nEND\r\n" % i
        self.figures["rolling_restart"] = {
            "shard": name, "steps": steps, "acknowledged": len(acknowledged),
            "failed": len(failed), "failures": sorted({f.decode(errors="replace").strip()
                                                       for f in failed})[:5],
            "lost": lost}
        self.log(f"rolling restart of {name}: {len(acknowledged)} writes acknowledged, "
                 f"{len(failed)} failed, {lost} lost")


def ask(sock: socket.socket, request: bytes, end: bytes = b"\r\n") -> bytes:
    """Send one request, read until its reply ends with `end` (bounded)."""
    sock.sendall(request)
    reply = b""
    while not reply.endswith(end) and len(reply) < 1 << 16:
        chunk = sock.recv(65536)
        if not chunk:
            break
        reply += chunk
    return reply


def main(directory: Path) -> int:
    os.chdir(ROOT)
    rehearsal = Rehearsal(directory)
    try:
        rehearsal.start_etcd()
        rehearsal.enable_etcd_auth()
        rehearsal.cluster_init()
        rehearsal.start_backends()
        rehearsal.start_proxies()
        rehearsal.round_trip()
        rehearsal.status()
        rehearsal.rolling_restart(shard_sets()[0])
    finally:
        rehearsal.close()
    print(json.dumps(rehearsal.figures))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
