from __future__ import annotations

from collections.abc import Iterator

import pytest

# Test cases shared by several modules live in tests/helpers/: rewrite their asserts too
# (pytest rewrites only test modules and conftests unless told), before anything imports them.
pytest.register_assert_rewrite("tests.helpers")

from tests.helpers import servers  # noqa: E402


@pytest.fixture
def memcached_server() -> Iterator[servers.RunningServer]:
    with servers.memcached() as server:
        yield server


@pytest.fixture
def backend_server() -> Iterator[servers.RunningServer]:
    with servers.backend() as server:
        yield server
