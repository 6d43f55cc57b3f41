"""cluster.etcd_leader.leader_change: when a late call waiting on one etcd member is to be
sent again elsewhere, over scripted Status answers (a real frozen leader:
tests/integration/test_etcd_late_attempt.py). Member ids 10, 20, 30 sit at indexes 0, 1, 2;
`named[i]` is (leader named, term) by member i in a round, None: silent."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from memring.cluster.etcd_leader import POLL, ROUND_TIMEOUT, Status, leader_change

pytestmark = pytest.mark.unit

IDS = (10, 20, 30)


class Members:
    """Round k of the script answers every member's k-th ask (the last round repeats)."""

    def __init__(self, *rounds: tuple[tuple[int, int] | None, ...]) -> None:
        self.rounds = list(rounds)
        self.asks = [0] * len(rounds[0])

    async def ask(self, index: int, timeout: float) -> Status | None:
        named = self.rounds[min(self.asks[index], len(self.rounds) - 1)][index]
        self.asks[index] += 1
        if named is None:
            await trio.sleep(timeout)
            return None
        await trio.sleep(0.001)
        return IDS[index], named[0], named[1]


async def test_an_election_while_waiting_on_a_follower_sends_the_call_to_the_new_leader(
        autojump_clock: trio.testing.MockClock) -> None:
    # waiting on member 0, a follower whose request went to 20, which froze; 30 is elected
    before = ((20, 2), None, (20, 2))
    members = Members(before, before, ((30, 3), None, (30, 3)))
    with trio.fail_after(5.0):
        assert await leader_change(members.ask, 3, waiting_on=0) == 2
    assert trio.current_time() < 2 * (ROUND_TIMEOUT + POLL) + POLL


async def test_a_silent_member_waited_on_is_left_for_the_leader_the_others_name(
        autojump_clock: trio.testing.MockClock) -> None:
    # waiting on member 1, frozen after the election that made 30 leader: no new term
    members = Members(((30, 3), None, (30, 3)))
    with trio.fail_after(5.0):
        assert await leader_change(members.ask, 3, waiting_on=1) == 2
    assert trio.current_time() <= ROUND_TIMEOUT + 0.01  # at the end of the first round


async def test_a_slow_call_on_a_follower_of_a_live_leader_is_left_waiting(
        autojump_clock: trio.testing.MockClock) -> None:
    # one leader all along, every member answering: the call is only slow, let it be
    members = Members(((20, 2), (20, 2), (20, 2)))
    with trio.move_on_after(5.0) as waited:
        await leader_change(members.ask, 3, waiting_on=0)
    assert waited.cancelled_caught


async def test_a_call_waiting_on_a_follower_elected_meanwhile_is_sent_to_it_again(
        autojump_clock: trio.testing.MockClock) -> None:
    # waiting on 30, a follower when the call was sent (its proposal forwarded to 20, lost),
    # elected meanwhile: sent again, to 30 itself
    members = Members(((20, 2), None, (20, 2)), ((30, 3), None, (30, 3)))
    with trio.fail_after(5.0):
        assert await leader_change(members.ask, 3, waiting_on=2) == 2
    assert members.asks[1] == 1  # the frozen member was asked once only


async def test_a_slow_leader_waited_on_is_left_waiting(
        autojump_clock: trio.testing.MockClock) -> None:
    # waiting on 20, the leader all along: its answer may just be late
    members = Members(((20, 2), (20, 2), (20, 2)))
    with trio.move_on_after(5.0) as waited:
        await leader_change(members.ask, 3, waiting_on=1)
    assert waited.cancelled_caught
