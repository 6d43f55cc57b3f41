"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from memring.cluster.etcd_process import EtcdProcess, running_etcd


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdProcess]:
    """A real etcd on free ports for one test module (a test that takes it is marked
    requires_etcd by tests/conftest.py, which skips it where etcd is not installed)."""
    with running_etcd() as member:
        yield member
