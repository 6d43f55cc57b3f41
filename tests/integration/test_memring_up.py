"""`memring up` end to end: 3 shards x 2 replicas, Ctrl-C (SIGINT) stops everything.

test_cluster_proxy.py::test_memring_up_smoke covers 2 x 2, one key and SIGTERM; this adds
the Ctrl-C path the issue asks for (SIGINT to `memring up` alone, as a terminal delivers it to
the foreground process group, which the launcher keeps its children out of; and SIGINT to
the whole group, as `kill -INT -PGID` or a terminal with the children in it would), 3 shards,
100 keys through pymemcache, and a scan of every /proc/*/cmdline for the addresses that
`memring up` printed: no etcd, backend or proxy may survive.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import servers

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]

HOST = servers.HOST
SHARDS, REPLICAS = 3, 2
READY_WITHIN = 45.0
STOP_WITHIN = 20.0
ADDRESS = re.compile(r"127\.0\.0\.1:(\d+)")


def cmdlines() -> dict[int, str]:
    """Every live (non-zombie) process's command line, NULs as spaces."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                out[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
    return out


def holders(ports: set[int], exclude: int) -> dict[int, str]:
    """Processes (other than `exclude` and this one) whose command line names one of the ports."""
    found = {}
    for pid, line in cmdlines().items():
        if pid in (exclude, os.getpid()):
            continue
        if any(f"{HOST}:{port}" in line for port in ports):
            found[pid] = line
    return found


@pytest.mark.parametrize("target", ["process", "group"])
def test_memring_up_3x2_ctrl_c_leaves_nothing(tmp_path: Path, target: str) -> None:
    pymemcache = pytest.importorskip("pymemcache.client.base")
    port = servers.free_port()
    name = f"up{target}"
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    started = time.monotonic()
    up = subprocess.Popen([sys.executable, "-m", "memring.cluster", "up", "--shards", str(SHARDS),
                           "--replicas", str(REPLICAS), "--port", str(port), "--cluster", name,
                           *(["--metrics"] if target == "group" else [])],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                          stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    lines: list[str] = []
    ports: set[int] = {port}
    try:
        assert up.stdout is not None
        reader = threading.Thread(target=lambda: lines.extend(up.stdout or ()), daemon=True)
        reader.start()  # collects stdout lines until memring up closes it
        deadline = time.monotonic() + READY_WITHIN
        while not any(line.startswith("memring up: ready") for line in list(lines)):
            assert up.poll() is None, f"memring up exited {up.returncode}:\n" + "".join(lines)
            assert time.monotonic() < deadline, \
                f"memring up not ready in {READY_WITHIN}s:\n" + "".join(lines)
            time.sleep(0.05)
        text = "".join(lines)
        ready = time.monotonic() - started
        for match in ADDRESS.finditer(text):
            ports.add(int(match.group(1)))
        # etcd's client port, 6 backends, the proxy (etcd's peer port is not printed)
        assert len(ports) >= 1 + SHARDS * REPLICAS + 1, text
        assert len(holders(ports, up.pid)) >= 1 + SHARDS * REPLICAS + 1, (text, cmdlines())

        client = pymemcache.Client((HOST, port), connect_timeout=5, timeout=5)
        try:
            values = {f"key{i}": f"value-{i}".encode() for i in range(100)}
            assert client.set_many(values) == []  # no key failed
            assert client.get_many(list(values)) == values
        finally:
            client.close()

        deadline = time.monotonic() + 10
        while True:  # until every follower is in sync (sync replication: at once, or nearly)
            status = subprocess.run([sys.executable, "-m", "memring.cluster", "status", "--json",
                                     "--cluster", name], capture_output=True, text=True,
                                    env=env, timeout=30)
            assert status.returncode == 0, status.stdout + status.stderr
            doc = json.loads(status.stdout)
            nodes = [n for shard in doc["shards"] for n in shard["nodes"]]
            if all(n["in_sync"] and n["lag_seq"] == 0 for n in nodes) or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert doc["cluster"] == name
        assert len(doc["shards"]) == SHARDS, doc
        for shard in doc["shards"]:
            assert shard["leader"], shard
            assert len(shard["nodes"]) == REPLICAS, shard
            roles = sorted(n["role"] for n in shard["nodes"])
            assert roles == ["follower"] * (REPLICAS - 1) + ["leader"], shard
            assert all(n["in_sync"] and n["lag_seq"] == 0 and n["answers"]
                       for n in shard["nodes"]), shard
            assert shard["hit_ratio"] in (None, 1.0), shard  # every get above was a hit
        # each key: one set and one get on its leader (followers apply, they count nothing)
        assert sum(shard["ops"] for shard in doc["shards"]) == 200, doc
        assert [p["address"] for p in doc["proxies"]] == [f"{HOST}:{port}"]
        assert doc["proxies"][0]["answers"], doc
        if target == "process":  # `status --watch --json`: one doc a second, ops/s moving
            watch = subprocess.Popen([sys.executable, "-m", "memring.cluster", "status", "--watch",
                                      "--json", "--cluster", name], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env)
            try:
                writer = pymemcache.Client((HOST, port), connect_timeout=5, timeout=5)
                deadline = time.monotonic() + 2.6
                while time.monotonic() < deadline:  # ~1,000 sets a second, bounded
                    writer.set_many({f"w{i}": b"x" for i in range(50)})
                    time.sleep(0.05)
                writer.close()
            finally:
                watch.send_signal(signal.SIGINT)
                out, _ = watch.communicate(timeout=10)
            docs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            assert len(docs) >= 2, out
            rates = [s["ops_per_s"] for s in docs[-1]["shards"]]
            assert all(r is not None for r in rates) and sum(rates) > 100, docs[-1]
        urls = re.findall(r"metrics (http://\S+/metrics)", text)
        assert len(urls) == (SHARDS * REPLICAS + 1 if target == "group" else 0), text
        for url in urls:  # every backend and the proxy: Prometheus text with memring figures
            with urllib.request.urlopen(url, timeout=5) as reply:
                body = reply.read().decode()
            assert reply.status == 200 and ("memring_backend_role{" in body or
                                            "memring_proxy_" in body), body[:500]
    finally:
        stop_sent = time.monotonic()
        if up.poll() is None:
            if target == "group":
                os.killpg(up.pid, signal.SIGINT)
            else:
                up.send_signal(signal.SIGINT)
        try:
            up.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait(5)
        stopped_in = time.monotonic() - stop_sent
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and holders(ports, up.pid):
            time.sleep(0.05)
        survivors = holders(ports, up.pid)
        for pid in survivors:  # never leave them behind, even when the test fails
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    print(f"\nmemring up {SHARDS}x{REPLICAS}: ready after {ready:.1f} s; SIGINT to the "
          f"{target} -> exited {up.returncode} after {stopped_in:.1f} s")
    assert stopped_in < STOP_WITHIN, "memring up did not stop on SIGINT"
    assert up.returncode == 0, up.returncode
    assert not survivors, f"processes left behind: {survivors}"
    assert not Path(tmp_path, "memring", f"{name}.json").exists(), "state file left behind"
