"""EtcdCoordinator's choice of member after one left a call unanswered, and its probes of a
silent member, over scripted Status answers (no etcd: the members are never dialled). The
real members: tests/integration/test_etcd_members.py. Member ids 10, 20, 30 sit at
indexes 0, 1, 2."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from memring.cluster.etcd_coordinator import EtcdCoordinator
from memring.cluster.etcd_leader import Status

pytestmark = pytest.mark.unit

IDS = (10, 20, 30)


def coordinator() -> EtcdCoordinator:
    return EtcdCoordinator("http://127.0.0.1:1,http://127.0.0.1:2,http://127.0.0.1:3", "c")


async def test_a_fail_over_leaves_out_a_member_a_search_found_silent(
        autojump_clock: trio.testing.MockClock) -> None:
    """etcd's leader (index 1, never asked before) is frozen and the others still name it:
    the search finds no answering leader, and the blind fail-over off the current member
    goes to index 2, not to the frozen one. Before: to index 1, the member that had never
    failed (21 of 114 moves in a bench run went to the frozen member)."""
    etcd = coordinator()

    async def status(index: int, timeout: float) -> Status | None:
        if index == 1:
            await trio.sleep(timeout)
            return None
        await trio.sleep(0.001)
        return IDS[index], IDS[1], 1

    etcd._status = status  # type: ignore[method-assign]
    await etcd._to_answering_leader(0, trio.current_time() + 0.5)
    assert etcd._current == 2
    etcd._fail_over(2)  # then 2 fails too: 0 answered the search, 1 did not
    assert etcd._current == 0
    await etcd.aclose()


async def test_a_silent_member_gets_one_probe_at_a_time(
        autojump_clock: trio.testing.MockClock) -> None:
    """Status calls to a member found silent: while one is out (its thread waits on a frozen
    member), the next answer None at once without a call; a member heard from is asked
    again as any. Before: each search sent the frozen member another request, which it
    handles all at once on resuming."""
    etcd = coordinator()
    calls: list[int] = []

    async def frozen(call: Any) -> Any:
        calls.append(1)
        await trio.sleep_forever()

    etcd._in_thread = frozen  # type: ignore[method-assign]
    with trio.fail_after(5):  # (before: a Status waited on its call, for ever here)
        assert await etcd._status(1, 0.1) is None  # not yet silent: an ordinary Status
        etcd._fail_over(1)
        assert await etcd._status(1, 0.1) is None  # the probe: its "thread" stays blocked
        assert await etcd._status(1, 0.1) is None
        assert await etcd._status(1, 0.1) is None
        assert len(calls) == 2
        etcd._probing.clear()  # the probe's thread ended (it clears this itself)
        assert await etcd._status(1, 0.1) is None
        assert len(calls) == 3
    await etcd.aclose()


class _Answer:
    """A Status response as etcd sends it (only the fields read)."""

    def __init__(self, member: int, leader: int, term: int) -> None:
        self.header = type("Header", (), {"member_id": member})()
        self.leader = leader
        self.raftTerm = term


class _Member:
    """A channel whose every call answers a Status naming member 20 (index 1) leader."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __getattr__(self, kind: str) -> Any:  # unary_unary, unary_stream, ...: the stub's
        return lambda *args, **kwargs: (
            lambda request, timeout=None, metadata=None: _Answer(IDS[self.index], IDS[1], 3))


async def test_a_blind_fail_over_goes_to_the_named_leader_last(
        autojump_clock: trio.testing.MockClock) -> None:
    """A keepalive left unanswered by a follower (its forward to a frozen etcd leader lost)
    leaves no time for a search: the blind move then goes last to the member that the
    Status answers seen earlier named leader. Before: to the member that had never failed,
    which while etcd's leader was frozen was that leader in many moves of a bench run (25 of
    121 in one run went to the frozen member)."""
    etcd = coordinator()

    async def in_place(call: Any) -> Any:
        return call()

    etcd._channel_at = _Member  # type: ignore[assignment]
    etcd._in_thread = in_place  # type: ignore[method-assign]
    etcd._make_current(1)
    await etcd._to_answering_leader(1, trio.current_time() + 0.5)  # an earlier search
    assert etcd._current == 1
    etcd._make_current(0)
    etcd._fail_over(0)  # no time left for a search
    assert etcd._current == 2  # not 1, etcd's leader
    await etcd.aclose()
