"""cluster.etcd_leader's choice of the member to send an unanswered call to, over scripted
Status answers (the real members' answers are covered by tests/integration/test_etcd_members:
a SIGSTOPped member, a lost answer). Member ids 10, 20, 30 sit at indexes 0, 1, 2; a frozen
member never answers within the round's timeout."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from memring.cluster.etcd_leader import POLL, ROUND_TIMEOUT, Status, answering_leader

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
