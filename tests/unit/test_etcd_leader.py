"""cluster.etcd_leader's choice of the member to send an unanswered call to, and
EtcdCoordinator's move after an unanswered call, over scripted Status answers (the real members' answers are covered by tests/integration/test_etcd_members:
a SIGSTOPped member, a lost answer). Member ids 10, 20, 30 sit at indexes 0, 1, 2; a frozen
member never answers within the round's timeout."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from memring.cluster.coordinator import CoordinatorUnavailable
from memring.cluster.etcd_coordinator import EtcdCoordinator
from memring.cluster.etcd_grpc import grpc
from memring.cluster.etcd_leader import (
    POLL,
    ROUND_TIMEOUT,
    Status,
    answering_leader,
    first_answering,
)

pytestmark = pytest.mark.unit

IDS = (10, 20, 30)


class Members:
    """Each round's answers: `named[i]` is (leader named, term) by member i, None: frozen."""

    def __init__(self, *rounds: tuple[tuple[int, int] | None, ...]) -> None:
        self.rounds = list(rounds)
        self.asks = [0] * len(rounds[0])  # per member: its k-th ask is in round k

    @property
    def asked(self) -> int:
        return sum(self.asks)

    async def ask(self, index: int, timeout: float) -> Status | None:
        now = min(self.asks[index], len(self.rounds) - 1)
        self.asks[index] += 1
        named = self.rounds[now][index]
        if named is None:
            await trio.sleep(timeout)
            return None
        await trio.sleep(0.001)
        return IDS[index], named[0], named[1]


async def test_a_majority_decides_without_waiting_for_a_frozen_member(
        autojump_clock: trio.testing.MockClock) -> None:
    members = Members(((20, 2), (20, 2), None))
    assert await answering_leader(members.ask, 3, give_up_at=5.0) == 1
    assert trio.current_time() < ROUND_TIMEOUT / 2


async def test_waits_for_the_election_while_the_frozen_leader_is_still_named(
        autojump_clock: trio.testing.MockClock) -> None:
    before = ((20, 2), None, (20, 2))  # 10 and 30 still name 20, which is frozen
    members = Members(before, before, ((30, 3), None, (30, 3)))  # then 30 is elected
    assert await answering_leader(members.ask, 3, give_up_at=5.0) == 2
    # the frozen member costs the first round its timeout, and is not asked again
    assert ROUND_TIMEOUT + 2 * POLL <= trio.current_time() < 2 * (ROUND_TIMEOUT + POLL)
    assert members.asks == [3, 1, 3]


async def test_the_highest_term_wins_when_no_majority_answers(
        autojump_clock: trio.testing.MockClock) -> None:
    # of 3 members only 2 answer, one still in the old term naming a member that is gone
    members = Members(((10, 4), None, (20, 3)))
    assert await answering_leader(members.ask, 3, give_up_at=5.0) == 0


async def test_gives_up_when_no_answering_member_is_named(
        autojump_clock: trio.testing.MockClock) -> None:
    members = Members(((30, 2), (30, 2), None))  # its answers are lost: never usable
    assert await answering_leader(members.ask, 3, give_up_at=1.0) is None
    assert 1.0 <= trio.current_time() < 1.0 + ROUND_TIMEOUT
    assert members.asked <= 3 * (1.0 / (POLL + 0.001) + 1)  # bounded rounds


async def test_one_member_is_its_own_majority(autojump_clock: trio.testing.MockClock) -> None:
    members = Members(((10, 1),))
    assert await answering_leader(members.ask, 1, give_up_at=1.0) == 0


async def test_the_search_reports_the_silent_members(
        autojump_clock: trio.testing.MockClock) -> None:
    members = Members(((20, 2), None, (20, 2)))  # 20 frozen, still named by the others
    silent: set[int] = set()
    assert await answering_leader(members.ask, 3, give_up_at=0.2, silent=silent) is None
    assert silent == {1}


async def test_the_first_answer_decides_without_waiting_for_a_frozen_member(
        autojump_clock: trio.testing.MockClock) -> None:
    members = Members(((20, 2), None, (20, 2)))
    assert await first_answering(members.ask, [1, 2], ROUND_TIMEOUT) == 2
    assert trio.current_time() < ROUND_TIMEOUT / 2
    assert await first_answering(members.ask, [1], ROUND_TIMEOUT) is None


# EtcdCoordinator's move after a call its member left unanswered, over the same scripted
# members (its `_status`) and a call that always goes unanswered: where does it go next?

class Unanswered(grpc.RpcError):  # type: ignore[misc]
    """What gRPC raises for a call past its deadline (a follower forwarding to a frozen etcd
    leader, or the frozen member itself)."""

    def code(self) -> object:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return "Deadline Exceeded"


class UnansweredCalls:
    """A stub `kind` for `_unary`: every call goes unanswered; `sent_to` lists the endpoint
    index of each."""

    def __init__(self, coordinator: EtcdCoordinator) -> None:
        self.coordinator = coordinator
        self.sent_to: list[int] = []

    def __call__(self, channel: object) -> UnansweredCalls:
        self.sent_to.append(self.coordinator._channels.index(channel))
        return self

    def Put(self, request: object, *, timeout: float, metadata: object) -> None:
        raise Unanswered()


FROZEN_LEADER = ((20, 2), None, (20, 2))  # member 20 (index 1) leads etcd and is frozen


@pytest.mark.parametrize("resend", [False, True], ids=["a write", "a resendable call"])
async def test_an_unanswered_call_never_moves_to_the_frozen_etcd_leader(
        autojump_clock: trio.testing.MockClock, resend: bool) -> None:
    """Before the election, the followers still name the frozen leader, which answers
    nothing. The old blind move went to the member that had failed longest ago: the frozen
    leader, to which nothing had been sent yet (docs/scaling.md, "Round four")."""
    urls = ",".join(f"http://127.0.0.1:{port}" for port in (1, 2, 3))
    async with EtcdCoordinator.connect(urls, probe=False, call_timeout=0.25) as coordinator:
        members = Members(FROZEN_LEADER)
        coordinator._status = members.ask  # type: ignore[method-assign]
        calls = UnansweredCalls(coordinator)
        with pytest.raises(CoordinatorUnavailable):
            await coordinator._unary(calls, "Put", None, resend=resend)
        assert 1 not in calls.sent_to
        assert coordinator._current != 1
        assert calls.sent_to == ([0, 2] if resend else [0])


async def test_an_unanswered_call_moves_to_the_new_etcd_leader(
        autojump_clock: trio.testing.MockClock) -> None:
    urls = ",".join(f"http://127.0.0.1:{port}" for port in (1, 2, 3))
    async with EtcdCoordinator.connect(urls, probe=False) as coordinator:
        coordinator._status = Members(((30, 3), None, (30, 3))).ask  # type: ignore[method-assign]
        with pytest.raises(CoordinatorUnavailable):
            await coordinator._unary(UnansweredCalls(coordinator), "Put", None)
        assert coordinator._current == 2
