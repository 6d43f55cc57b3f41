"""deploy/kubernetes/'s pods run as local processes, since no Kubernetes runs here: a network
namespace of their own stands for the cluster network, its /etc/hosts for the cluster DNS
(tests/helpers/kubernetes_pods.py says what it runs and the two things it changes). With
`pytest -s` the figures are printed.

Checked: etcd comes up with the manifest's TLS flags and its authentication turns on as
etcd-auth.sh does it; the init job and every backend and proxy start from their containers'
argv, environment and mounted Secrets; every backend's readiness probe passes; a client over
TLS with the client auth file writes through one proxy and reads all back through the other;
`memring status` finds every node in sync and no unprotected channel; a rolling restart of
one shard by its preStop hook and readiness probe loses no acknowledged write.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import netns
from tests.helpers.kubernetes_manifests import ROOT, shard_sets
from tests.helpers.kubernetes_pods import hosts_file

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]

_reason = netns.unavailable()
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)

TIMEOUT = 840  # seconds for the whole rehearsal (it takes 30-140 s)


def test_the_manifests_pods_run_and_roll_without_losing_a_write(tmp_path: Path) -> None:
    with netns.namespace("mk") as namespace:
        # `ip netns exec` mounts /etc/netns/NAME/hosts over /etc/hosts for what it runs
        config = Path("/etc/netns") / namespace.name
        config.mkdir(parents=True)
        try:
            (config / "hosts").write_text(hosts_file())
            result = subprocess.run(
                namespace.exec_argv([sys.executable, "-m", "tests.helpers.kubernetes_pods",
                                     str(tmp_path)]),
                cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
        finally:
            shutil.rmtree(config)
    print("\n" + result.stderr)
    assert result.returncode == 0, result.stderr[-4000:]
    figures = json.loads(result.stdout.splitlines()[-1])
    print(json.dumps(figures, indent=2))

    replicas = sum(s["spec"]["replicas"] for s in shard_sets())
    assert figures["backends"] == replicas
    assert figures["round_trip"]["wrong"] == 0
    status = figures["status"]
    assert status["shards"] == len(shard_sets())
    assert status["nodes"] == status["in_sync"] == replicas
    assert status["proxies"] == 2
    assert status["unprotected"] == []
    # the proxies are reached by their pod IPs, which their certificate (named for the
    # Service) cannot hold: status sees only what their channels to the backends show
    assert {channel.split(" ")[0] for channel in status["unknown"]} <= {"clients"} | {
        f"memring-proxy-{x}" for x in "ab"}
    roll = figures["rolling_restart"]
    assert len(roll["steps"]) == shard_sets()[0]["spec"]["replicas"]
    assert all(step["hook_exit"] == 0 for step in roll["steps"]), roll["steps"]
    assert roll["acknowledged"] > 100
    assert roll["lost"] == 0
    assert roll["failed"] == 0, roll["failures"]
