"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from memring.cluster.etcd_process import EtcdProcess, find_etcd, running_etcd


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdProcess]:
    """A real etcd on free ports for one test module (skipped where etcd is not installed)."""
    try:
        find_etcd()
    except RuntimeError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(str(exc))
    with running_etcd() as member:
        yield member
