"""Which requests a backend connection cut for its abandoned replies sends again.

Theory of operation: a pipelined connection answers in order, so one client's big replies
delay every request behind them. When such replies are owed to clients that have gone (the
buffer budget closed them, or they hung up), reading them only delays the live requests
behind: `BackendConnection` cuts the connection instead (proxy/backend_connection.py, the
deadline paragraph), and its pool sends the live requests again on a fresh connection
(proxy/pool.py `QueuedRequest`). Only a read without side effects is sent twice, once, and
only while nothing of its reply has arrived: a write may have been applied, so it is never
sent again; a live client's write is answered by the cut connection, which drains for it
(`answered_on_drain`). Interpreted: it runs only when a connection is cut.
"""

from __future__ import annotations

from collections.abc import Iterable

from memring.proxy.pending_reply import PendingReply

# mg flags that only ask for something back (memcached's proto_text.c: b c f h k l O q s t
# v); any other (N vivify, R recache, T touch, E, ...) may change the item
_READ_ONLY_MG_FLAGS = frozenset(b"bcfhklOqstv")
MAX_LINE = 64 * 1024  # a get line longer than this is not parsed here: not resent


def side_effect_free(request: bytes) -> bool:
    """`request` (as forwarded: one text command) only reads: get/gets, or mg with read-only
    flags. (Binary clients' gets reach the backends as text `gets`.)"""
    if len(request) > MAX_LINE or not request.endswith(b"\r\n") or \
            request.count(b"\n") != 1:
        return False
    words = request[:-2].split()
    if not words:
        return False
    command = words[0]
    if command in (b"get", b"gets"):
        return len(words) > 1
    if command == b"mg":
        return len(words) > 1 and all(
            flag and flag[0] in _READ_ONLY_MG_FLAGS for flag in words[2:])
    return False


def owner(pending: PendingReply) -> object:
    """The client a forwarded reply is for (its reply stream), seen through a request
    relayed by the pool (proxy/pool.py `QueuedRequest`)."""
    listener: object = pending.listener
    relayed = getattr(listener, "reply", None)
    if isinstance(relayed, PendingReply):
        listener = relayed.listener
    return listener


def abandoned(pending: PendingReply) -> bool:
    """Its client is gone: nobody will read the reply."""
    return bool(getattr(owner(pending), "closed", False))


def behind(pending: PendingReply) -> bool:
    """Its client does not take its replies as they come (proxy/reply_stream.py)."""
    return bool(getattr(owner(pending), "behind", False))


def worth_cutting(pending: Iterable[PendingReply]) -> bool:
    """Whether an overdue connection, bytes still arriving, is better cut than read on:
    replies owed to gone clients are among those still owed, or a reply of a client that
    takes its replies waits behind one of a client that does not (sent again, it goes
    first)."""
    seen_behind = False
    for reply in pending:
        if abandoned(reply):
            return True
        if behind(reply):
            seen_behind = True
        elif seen_behind and resendable(reply):
            return True
    return False


def answered_on_drain(pending: PendingReply) -> bool:
    """A live client's request that a cut connection drains for rather than fail: one that
    may change something (never sent twice), nothing failed or settled yet."""
    if pending.done or abandoned(pending):
        return False
    request = getattr(pending, "forwarded", None)
    return isinstance(request, bytes) and not side_effect_free(request)


def resendable(pending: PendingReply) -> bool:
    """Safe to send again on a fresh connection: a live client's read, nothing of whose
    reply has arrived (so nothing of it reached the client), not sent again already."""
    if pending.events or pending.done or pending.listener is None:
        return False
    if getattr(pending.listener, "resent", False):
        return False  # once
    if abandoned(pending):
        return False
    request = getattr(pending, "forwarded", None)
    return isinstance(request, bytes) and side_effect_free(request)
