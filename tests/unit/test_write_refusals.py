"""The refusal contract: what a backend writes is what the proxy recognises, and no more."""

import pytest

from memring.protocol import ResponseParser
from memring.protocol.responses import ErrorReply
from memring.protocol.write_refusals import (
    LEASE_EXPIRED,
    TOO_FEW_IN_SYNC,
    not_leader_line,
    refusal_line,
    retry_at_leader,
)

pytestmark = pytest.mark.unit


def server_error(line: bytes) -> bytes:
    parser = ResponseParser()
    parser.receive_data(line)
    event = parser.next_event()
    assert isinstance(event, ErrorReply) and event.kind == b"SERVER_ERROR"
    return event.message


def test_not_leader_and_lease_expired_are_retried_at_the_next_leader() -> None:
    assert not_leader_line("s1") == b"SERVER_ERROR not the leader of shard s1\r\n"
    assert retry_at_leader(server_error(not_leader_line("s1")))
    assert retry_at_leader(server_error(refusal_line(LEASE_EXPIRED)))


@pytest.mark.parametrize("line", [
    refusal_line(TOO_FEW_IN_SYNC),  # refused, but lasts until a follower catches up
    b"SERVER_ERROR out of memory storing object\r\n",  # may follow a partial apply
    b"SERVER_ERROR not the leader of shards\r\n",
    b"SERVER_ERROR lease expired\r\n",
])
def test_other_server_errors_are_not_retried(line: bytes) -> None:
    assert not retry_at_leader(server_error(line))
