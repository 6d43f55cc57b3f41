"""The compat tests compare bytes on the wire; they start hundreds of backends and proxies
(test_differential.py alone ~800: a fresh one per case, so CAS counters coincide). They are
forked from one helper that has imported them (tests.helpers.forked_servers): the same
servers and argv, without ~0.3 s of CPU for each one's imports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import servers


@pytest.fixture(scope="package", autouse=True)
def _forked_python_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with servers.forking_python_servers(tmp_path_factory.mktemp("fork-server")):
        yield
