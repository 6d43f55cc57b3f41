"""The channel an EtcdCoordinator replaces after a call it failed without sending
(`_reconnect`: gRPC's reconnect backoff after an outage): the next call opens a new one, and
the old one is closed at once only if no other call or stream could be on it, else with the
next keepalive's idle check, or at `aclose`. No etcd: the channels are stand-ins.
"""

from __future__ import annotations

from typing import Any, cast

import pytest

from memring.cluster.etcd_coordinator import EtcdCoordinator

pytestmark = pytest.mark.unit


class _Channel:
    closed = False

    def close(self) -> None:
        self.closed = True


def _coordinator(old: _Channel) -> EtcdCoordinator:
    coordinator = EtcdCoordinator("http://127.0.0.1:1,http://127.0.0.1:2")
    coordinator._channels[0] = cast(Any, old)
    return coordinator


async def test_an_idle_channel_is_replaced_and_closed_at_once() -> None:
    old = _Channel()
    coordinator = _coordinator(old)
    coordinator._reconnect(0)
    assert old.closed and coordinator._channels == [None, None]  # the next call opens one
    await coordinator.aclose()


async def test_a_channel_another_call_may_use_is_closed_once_none_is_open() -> None:
    old = _Channel()
    coordinator = _coordinator(old)
    with coordinator.grpc_call():  # another task's call in flight
        coordinator._reconnect(0)
        assert not old.closed and coordinator._channels[0] is None
    coordinator._release_idle_channels()  # with the next keepalive
    assert old.closed
    again = _Channel()
    coordinator._channels[0] = cast(Any, again)
    with coordinator.grpc_call():
        coordinator._reconnect(0)
    await coordinator.aclose()
    assert again.closed
