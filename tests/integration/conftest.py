"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from memring.cluster.certificates import CertificateAuthority
from memring.cluster.etcd_process import EtcdProcess, running_etcd
from tests.helpers import servers
from tests.helpers.secure_etcd import SecureEtcd
from tests.helpers.secure_etcd import secure_etcd as secure_etcd_member


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdProcess]:
    """A real etcd on free ports for one test module (a test that takes it is marked
    requires_etcd by tests/conftest.py, which skips it where etcd is not installed)."""
    with running_etcd() as member:
        yield member


@pytest.fixture(scope="module")
def secure_etcd(private_ca: CertificateAuthority) -> Iterator[SecureEtcd]:
    """A real etcd with TLS (client certificates required) and auth on, for one test module;
    the `memring` user may use clusters named contract* (the contract suite) and sec*. Mark
    the module requires_etcd."""
    with secure_etcd_member(private_ca, "/memring/contract", "/memring/sec") as etcd:
        yield etcd


@pytest.fixture(scope="module")
def module_memcached() -> Iterator[servers.RunningServer]:
    """One real memcached for a module of differential cases (each case uses its own keys)."""
    with servers.memcached() as server:
        yield server


@pytest.fixture(scope="module")
def module_backend() -> Iterator[servers.RunningServer]:
    """One memring backend for a module of differential cases (each case uses its own keys)."""
    with servers.backend() as server:
        yield server
