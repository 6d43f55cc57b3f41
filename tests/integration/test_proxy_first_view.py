"""A cluster-mode proxy's first view of the cluster (proxy/cluster_topology.py `first_view`),
against a real etcd with TLS and auth (tests/helpers/secure_etcd.py).

An etcd not answering at the start is waited for, but a refusal ends the proxy: started with
a wrong password while etcd was down (its start-up check, `check_access`, could not tell), it
exits 1 within seconds of etcd's return, naming the setting to fix. Before, it retried the
refusal for good and said so only in its log.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from memring.cluster.certificates import CertificateAuthority
from memring.cluster.etcd_coordinator import AUTHENTICATE_TIMEOUT
from memring.proxy.cluster_topology import FIRST_VIEW_BACKOFF_MAX
from tests.helpers import servers
from tests.helpers.secure_etcd import secure_etcd

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]

RETRYING = "cannot read the cluster from etcd"  # first_view's log line while etcd is away
# after etcd's return: the proxy's next attempt (its backoff), then a refused Authenticate
EXIT_BOUND = FIRST_VIEW_BACKOFF_MAX + AUTHENTICATE_TIMEOUT


def _log_until(log: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert process.poll() is None, f"the proxy exited: {log.read_text(errors='replace')}"
        assert time.monotonic() < deadline, f"no {text!r} within {timeout}s: " \
            f"{log.read_text(errors='replace')}"
        time.sleep(0.05)


def test_a_proxy_refused_once_etcd_is_back_exits_naming_what_to_fix(
        private_ca: CertificateAuthority, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("guess\n")
    log = tmp_path / "proxy.log"
    with secure_etcd(private_ca, "/memring/first-view") as etcd:
        security = etcd.security
        etcd.member.kill()  # down at the proxy's start: its start-up check only logs
        with log.open("wb") as out:
            proxy = subprocess.Popen(
                [sys.executable, "-m", "memring.proxy",
                 "--listen", f"{servers.HOST}:{servers.free_port()}",
                 "--etcd", etcd.url, "--cluster", "first-view", "--etcd-ca", security.ca,
                 "--etcd-cert", security.cert, "--etcd-key", security.key,
                 "--etcd-user", security.user, "--etcd-password-file", str(wrong)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out)
        try:
            _log_until(log, RETRYING, proxy, timeout=15)
            etcd.member.restart()
            back = time.monotonic()
            try:
                code = proxy.wait(EXIT_BOUND + 5)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the proxy still runs {EXIT_BOUND + 5:g}s after etcd's return: "
                            f"{log.read_text(errors='replace')[-2000:]}")
            took = time.monotonic() - back
        finally:
            servers.stop(proxy)
    stderr = log.read_text(errors="replace")
    print(f"\nthe proxy exited {took:.1f}s after etcd's return")
    assert code == 1, stderr
    assert f"memring-proxy: error: etcd at {etcd.url} refused user 'memring': wrong user " \
        f"name or password; check --etcd-user and the first line of " \
        f"--etcd-password-file {wrong}" in stderr, stderr
    assert took < EXIT_BOUND, stderr
