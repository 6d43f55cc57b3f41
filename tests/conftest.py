from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import servers


@pytest.fixture
def memcached_server() -> Iterator[servers.RunningServer]:
    with servers.memcached() as server:
        yield server


@pytest.fixture
def backend_server() -> Iterator[servers.RunningServer]:
    with servers.backend() as server:
        yield server
