"""A process that uses the etcd client and then spawns a child through fork (`preexec_fn`, as
`memring up` and the benchmarks do) must not run gRPC threads in the child before exec.

With gRPC's fork support on (grpcio's default) its fork handlers restart the event engine in
the child; `close_fds` then closes the poller's epoll fd under it, and now and then the child
aborts before exec ("Epoll1Poller ... epoll_wait error: Bad file descriptor", status -6).
The abort is a race; the threads it needs are not: counting them is the deterministic check.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

# A fresh interpreter, so that this process's grpc (imported or not) does not matter. The
# coordinator's channel points at a port nobody listens on and stays open (gRPC keeps
# reconnecting: its event engine runs) while children are forked; each child counts its
# threads in `preexec_fn`, between fork and exec.
CHILD_THREADS = textwrap.dedent("""
    import os, subprocess, sys, tempfile
    import trio
    from memring.cluster.coordinator import CoordinatorError
    from memring.cluster.etcd_coordinator import EtcdCoordinator
    from memring.cluster.etcd_process import free_port

    async def main():
        coordinator = EtcdCoordinator(f"http://127.0.0.1:{free_port()}", call_timeout=0.3)
        try:
            try:
                await coordinator.snapshot()
            except CoordinatorError:
                pass  # refused: the channel is open and reconnecting, as wanted
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "threads")
                def count_threads():
                    with open(path, "w") as f:
                        f.write(str(len(os.listdir("/proc/self/task"))))
                for _ in range(5):
                    code = subprocess.Popen([sys.executable, "-c", ""],
                                            preexec_fn=count_threads).wait()
                    with open(path) as f:
                        print(code, f.read(), flush=True)
        finally:
            await coordinator.aclose()

    trio.run(main)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts /proc/self/task")
def test_a_child_forked_after_using_etcd_runs_no_grpc_thread_before_exec() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD_THREADS], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    children = [tuple(map(int, line.split())) for line in done.stdout.splitlines()]
    assert len(children) == 5, done.stdout
    # (exit status, threads in the child before exec): one thread, the one that forked
    assert children == [(0, 1)] * 5, done.stderr[-2000:]


def test_only_the_etcd_coordinator_imports_grpc() -> None:
    """It turns gRPC's fork support off before importing grpc (etcd3 imports grpc too): any
    other importer could come first."""
    importers = []
    for path in sorted(REPO.glob("*/**/*.py")):
        if path.parts[len(REPO.parts)] in (".venv", "build"):
            continue  # the environment, and `pip install .`'s copies of the source
        text = path.read_text()
        if "grpc" not in text and "etcd3" not in text:
            continue  # an import of either names it; parsing only these saves ~1 s
        for node in ast.walk(ast.parse(text, str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name.split(".")[0] in ("grpc", "etcd3") for name in names):
                importers.append(str(path.relative_to(REPO)))
    assert sorted(set(importers)) == ["cluster/etcd_grpc.py"]
