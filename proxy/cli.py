"""`memring-proxy` / `python -m memring.proxy`: the proxy in the foreground.

With `--workers N` (N > 1) this process supervises N worker processes that share the
port through SO_REUSEPORT; it forwards SIGTERM/SIGINT/SIGHUP to them and exits when they
have all stopped.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import trio

from memring.cluster.auth_file import load_credentials
from memring.cluster.coordinator import AccessDenied
from memring.netio import logs, nonblocking
from memring.netio.server_process import run_server
from memring.netio.settings import SettingsError, split_address
from memring.protocol.ascii_auth import AuthFileError
from memring.proxy.server import ProxyServer
from memring.proxy.settings import ProxySettings, load_settings, load_topology

log = logging.getLogger("memring.proxy")
WORKER_ENV = "MEMRING_PROXY_WORKER"


async def run(settings: ProxySettings, reuse_port: bool) -> None:
    # Each client connection may come with a few backend connections of its own pool.
    nonblocking.raise_fd_limit(settings.max_connections + 64 + 8 * len(settings.shards))
    server = ProxyServer(settings, reuse_port=reuse_port)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        log.info("proxy listening on %s:%d (pid %d), %d shard(s) from %s", settings.host, port,
                 os.getpid(), len(settings.shards), settings.config)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: reloading %s", server.state.settings.config)
                    try:
                        server.apply_topology(load_topology(server.state.settings))
                    except SettingsError as exc:
                        log.error("SIGHUP: keeping the current topology: %s", exc)
                    server.reload_auth()
                    continue
                log.info("%s received: shutting down", signal.Signals(signum).name)
                server.shutdown()
                break


def supervise(settings: ProxySettings, argv: list[str]) -> int:
    """Start `settings.workers` copies of this proxy on one port and wait for them."""
    env = dict(os.environ, **{WORKER_ENV: "1"})
    workers = [subprocess.Popen([sys.executable, "-m", "memring.proxy", *argv, "--workers", "1",
                                 *_worker_metrics(settings, index)], env=env)
               for index in range(settings.workers)]

    def forward(signum: int, _frame: object) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    codes = [worker.wait() for worker in workers]
    return max(codes, default=0)


def _worker_metrics(settings: ProxySettings, index: int) -> list[str]:
    """Worker `index` serves its own metrics on PORT+index (port 0: any free port)."""
    if not settings.metrics_listen:
        return []
    host, port = split_address(settings.metrics_listen, listen=True)
    host = f"[{host}]" if ":" in host else host
    return ["--metrics-listen", f"{host}:{port + index if port else 0}"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"memring-proxy: error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    for path in (settings.auth_file, settings.backend_auth_file):
        try:
            if path:
                load_credentials(path)  # the server loads it again; here: fail before starting
        except AuthFileError as exc:
            print(f"memring-proxy: error: {exc}", file=sys.stderr)
            return 2
    worker = os.environ.get(WORKER_ENV) == "1"
    if settings.workers > 1 and not worker:
        return supervise(settings, argv)
    if settings.etcd:
        from memring.proxy.cluster_topology import run_cluster
        try:
            return run_server("memring-proxy", run_cluster, settings, worker)
        except AccessDenied as exc:  # raised before any nursery: not in a group
            print(f"memring-proxy: error: {exc}", file=sys.stderr)
            return 1
    return run_server("memring-proxy", run, settings, worker)


if __name__ == "__main__":
    sys.exit(main())
