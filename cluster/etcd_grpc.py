"""gRPC and etcd3's generated stubs, imported once, with the process-wide settings they need.

Theory of operation. gRPC's fork support is turned off before grpc is imported. A process
holding an etcd client also spawns processes (`memring up`, the benchmarks), and
`subprocess.Popen` with a `preexec_fn` forks rather than vforks, which runs gRPC's fork
handlers: in the child they restart the event engine's poller before exec, `close_fds` then
closes its epoll fd, and the child aborts (SIGABRT, "Epoll1Poller ... epoll_wait error: Bad
file descriptor"; grpc/grpc#43055); in the parent the prefork handler sometimes never
returns. Measured on 2 busy cores, 600 spawns a run: with a coordinator open, 8 and 6
children aborted; with one opened and closed before each spawn (as the benchmarks do), the
parent hung in 3 runs of 3; with fork support off, 0 of 2,400 aborted and none hung. Every
child memring forks execs at once: nothing needs gRPC across it. So this is the one module
that imports grpc or etcd3 (tests/unit/test_grpc_fork.py); cluster.etcd_coordinator,
cluster.etcd_leases and cluster.etcd_watches take them from here.
"""

from __future__ import annotations

import os
from typing import Any

from memring.cluster.keyspace import Entry

# before grpc is imported (see above); a setting in the environment wins
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # type: ignore[import-untyped]
from etcd3 import etcdrpc  # type: ignore[import-untyped]
from etcd3.etcdrpc import kv_pb2  # type: ignore[import-untyped]

__all__ = ["AUTH_FAILED", "AUTH_NOT_ENABLED", "INVALID_TOKEN", "OLD_AUTH_REVISION",
           "PERMISSION_DENIED", "STATUS_CODES", "USER_EMPTY", "details", "entry", "etcdrpc",
           "grpc", "kv_pb2"]

# gRPC's blocking calls wait in slices of 0.1 s, for a main thread to see signals between
# them; ours wait in worker threads, which gRPC wakes when their call moves: the slices only
# woke an idle watch's thread 10 times a second (docs/scaling.md, "Idle cost")
grpc._common.MAXIMUM_WAIT_TIMEOUT = 3600.0

STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}  # the gateway's numbers


def details(exc: grpc.RpcError) -> tuple[Any, str]:
    """A failed call's (status code, details)."""
    code = exc.code() if hasattr(exc, "code") else None
    text = exc.details() if hasattr(exc, "details") else str(exc)
    return code, text or ""


def entry(kv: Any) -> Entry:
    """A KeyValue message as the coordinator's Entry."""
    return Entry(kv.key.decode(), bytes(kv.value), int(kv.create_revision),
                 int(kv.mod_revision), int(kv.version), int(kv.lease))


# etcd's rpctypes errors this client acts on (etcd 3.4 api/v3rpc/rpctypes/error.go)
INVALID_TOKEN = "invalid auth token"
OLD_AUTH_REVISION = "revision of auth store is old"
AUTH_FAILED = "authentication failed"
PERMISSION_DENIED = "permission denied"
USER_EMPTY = "user name is empty"
AUTH_NOT_ENABLED = "authentication is not enabled"
