"""Which etcd member leads and answers, from every member's maintenance Status.

Theory of operation. A call that went unanswered (`EtcdCoordinator.unary` with `resend`) is
sent again, once; where to matters. While etcd's leader is frozen (SIGSTOP, a stalled disk)
the other members keep naming it leader until their election timeout, and a write or a
linearizable read sent to one of them is forwarded to the frozen leader and lost: it waits out
the caller's deadline even after a new leader was elected (measured on 3 members with 250 ms
elections: sent at once, it hung 500 ms; sent after the election, it was answered in 3 ms).
Status is answered by each member from its own state, without a leader, in about a
millisecond, and says whom the member takes for leader and in which raft term. So every
member is asked at once, in rounds `POLL` seconds apart, until a member that answers is named
leader: by a majority of the members in one term (decided as soon as their answers are in,
without waiting for a frozen member's), else, once the round is over, by those answering in
the highest term. The resend then goes straight to it, right after the election. A member
silent in a round is not asked again: a frozen one handles every request queued for it when
it resumes. A member that only lost our connection (its answers held) is no leader we can
use: the search gives up and the caller falls back to its next endpoint. `leader_change` asks
the same rounds while a late call still waits, and names etcd's leader as soon as the call
cannot be answered where it waits (a newer term, or its member silent). gRPC stays in
cluster.etcd_coordinator (it must import grpc first): this module gets a function that asks
one member.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

import trio

POLL = 0.05  # seconds between rounds; a round lasts at most ROUND_TIMEOUT
ROUND_TIMEOUT = 0.1  # a member's Status (local, ~1 ms) not answered by then: frozen or gone

Status = tuple[int, int, int]  # (member id, the leader it names, raft term)
AskStatus = Callable[[int, float], Awaitable[Status | None]]  # (member index, timeout)


def _named_by_majority(answers: dict[int, Status], count: int) -> int | None:
    """The index of an answering member that a majority of all `count` members name leader
    in one term."""
    votes = Counter((leader, term) for _, leader, term in answers.values())
    for index, (member, _, _) in answers.items():
        if any(leader == member and n > count // 2 for (leader, _), n in votes.items()):
            return index
    return None


def _named_in_highest_term(answers: dict[int, Status]) -> int | None:
    if not answers:
        return None
    term = max(t for _, _, t in answers.values())
    named = {leader for _, leader, t in answers.values() if t == term}
    return next((index for index, (member, _, _) in answers.items() if member in named), None)


async def _round(ask: AskStatus, indexes: list[int], count: int, timeout: float
                 ) -> tuple[int | None, dict[int, Status]]:
    """The members at `indexes` asked at once; ends early once a majority of all `count`
    names an answering leader. (That leader's index or None, the answers.)"""
    answers: dict[int, Status] = {}
    found: list[int] = []

    async def ask_one(index: int, done: trio.CancelScope) -> None:
        answer = await ask(index, timeout)
        if answer is None:
            return
        answers[index] = answer
        leader = _named_by_majority(answers, count)
        if leader is not None:
            found.append(leader)
            done.cancel()

    async with trio.open_nursery() as nursery:
        for index in indexes:
            nursery.start_soon(ask_one, index, nursery.cancel_scope)
    return (found[0] if found else _named_in_highest_term(answers)), answers


async def answering_leader(ask: AskStatus, count: int, give_up_at: float) -> int | None:
    """The index of the member that leads etcd and answers, or None by `give_up_at`. A member
    silent in one round is not asked again (a frozen one would only pile up requests to
    handle when it resumes), unless every member was."""
    silent: set[int] = set()
    while True:
        now = trio.current_time()
        if now >= give_up_at:
            return None
        indexes = [i for i in range(count) if i not in silent] or list(range(count))
        leader, answers = await _round(ask, indexes, count,
                                       min(ROUND_TIMEOUT, give_up_at - now))
        if leader is not None:
            return leader
        silent.update(i for i in indexes if i not in answers)
        await trio.sleep(min(POLL, max(0.0, give_up_at - trio.current_time())))


async def _full_round(ask: AskStatus, indexes: list[int], timeout: float
                      ) -> dict[int, Status]:
    """The members at `indexes` asked at once, every answer awaited (up to `timeout`): a
    member missing from the answers was silent, not cut short."""
    answers: dict[int, Status] = {}

    async def ask_one(index: int) -> None:
        answer = await ask(index, timeout)
        if answer is not None:
            answers[index] = answer

    async with trio.open_nursery() as nursery:
        for index in indexes:
            nursery.start_soon(ask_one, index)
    return answers


async def leader_change(ask: AskStatus, count: int, waiting_on: int) -> int:
    """The index of a member that leads etcd and answers, returned once a call waiting on
    member `waiting_on` can no longer be answered: a majority names that leader in a higher
    term than the first round's highest (etcd elected a leader while we waited: a proposal a
    follower forwarded to the old one is lost, even when that follower is the new leader, and
    a frozen leader answers nothing), or `waiting_on` was silent in a round and a majority
    names another member that answers.
    Runs in rounds until one of these holds; the caller bounds it (its attempt's timeout).
    A member silent in one round is not asked again (as `answering_leader`)."""
    first_term: int | None = None
    silent: set[int] = set()
    while True:
        indexes = [i for i in range(count) if i not in silent] or list(range(count))
        answers = await _full_round(ask, indexes, ROUND_TIMEOUT)
        silent.update(i for i in indexes if i not in answers)
        leader = _named_by_majority(answers, count)
        if first_term is None and answers:
            first_term = max(t for _, _, t in answers.values())
        if leader is not None and (
                (first_term is not None and answers[leader][2] > first_term)
                or (waiting_on in silent and leader != waiting_on)):
            return leader
        await trio.sleep(POLL)
