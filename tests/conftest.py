from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest

# Test cases shared by several modules live in tests/helpers/: rewrite their asserts too
# (pytest rewrites only test modules and conftests unless told), before anything imports them.
pytest.register_assert_rewrite("tests.helpers")

from memring.cluster.certificates import CertificateAuthority  # noqa: E402
from memring.cluster.etcd_process import find_etcd  # noqa: E402
from tests.helpers import servers  # noqa: E402


@functools.cache
def etcd_missing() -> str | None:
    """Why tests that need etcd cannot run here, or None when they can."""
    try:
        find_etcd()
    except RuntimeError:
        return ("needs etcd, which is not installed: `make debian-deps` (as root) installs "
                "Debian's etcd-server without starting its service")
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The one place that skips tests needing etcd: those marked `requires_etcd` and those
    that take the `etcd` fixture (tests/integration/conftest.py)."""
    for item in items:
        needs_etcd = item.get_closest_marker("requires_etcd") is not None or \
            "etcd" in getattr(item, "fixturenames", ())
        if needs_etcd:
            item.add_marker(pytest.mark.requires_etcd)
            reason = etcd_missing()
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def memcached_server() -> Iterator[servers.RunningServer]:
    with servers.memcached() as server:
        yield server


@pytest.fixture
def backend_server() -> Iterator[servers.RunningServer]:
    with servers.backend() as server:
        yield server


@pytest.fixture(scope="session")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    """One private CA for the session's TLS tests; `private_ca.issue(name)` for a certificate."""
    return CertificateAuthority.create(tmp_path_factory.mktemp("ca"))
