"""Fixtures shared by the proxy test modules, which re-run the backend's tests through a
proxy: `server` is what those tests take, here a proxy over 3 single-node shards."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest

from tests.helpers import servers

KINDS = ("memcached", "backend")


@pytest.fixture(scope="module")
def running() -> Iterator[dict[str, servers.RunningServer]]:
    """kind -> a proxy over 3 single-node shards of that kind."""
    with servers.proxy_over("memcached", shards=3) as memcached, \
            servers.proxy_over("backend", shards=3) as backend:
        yield {"memcached": memcached, "backend": backend}


@pytest.fixture(params=KINDS)
def server(request: pytest.FixtureRequest,
           running: dict[str, servers.RunningServer]) -> servers.RunningServer:
    return running[request.param]


@pytest.fixture
def many_files() -> Iterator[None]:
    """Room for a few thousand sockets in this process and in servers started from it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
