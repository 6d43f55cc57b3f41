"""A plain backend connection served in the client ReadyLoop's pass (proxy/backend_connection.py,
netio/ready_loop.py `LoopedSocket`): a request issued in a pass leaves in one send at its end
and its reply is read, settled and told to its client in a later pass, with neither of the
connection's tasks woken; a backend that closes mid-reply fails every reply still pending; a
send the kernel does not take whole falls back to the writer task; once the loop ends, the
reader task finishes a reply the loop had begun.

Real sockets: the backend is scripted on a loopback port (tests/helpers/scripted_backend.py),
the client is one end of a socket pair in a real `ReadyLoop` whose handler forwards each of
its lines.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from memring.netio import nonblocking
from memring.netio.connection import Connection, Handoff, HangUp, Parked, Receiver
from memring.netio.ready_loop import ReadyLoop
from memring.proxy.backend_connection import BackendConnection
from memring.proxy.pending_reply import PendingReply
from memring.proxy.slots import render
from tests.helpers.scripted_backend import ScriptedBackend
from tests.helpers.socket_pairs import nonblocking_socketpair

pytestmark = pytest.mark.unit

HIT = b"VALUE k 0 5\r\nhello\r\nEND\r\n"
BIG = b"x" * (16 << 20)  # more than loopback's socket buffers take at once
BIG_SET = b"set big 0 0 %d\r\n%s\r\n" % (len(BIG), BIG)


def answers(line: bytes) -> bytes:
    if line.startswith(b"set "):
        return b"STORED\r\n"
    return HIT


class Told:
    """A client's reply stream as the connection sees it: which task told it, and when."""

    affinity = 0

    def __init__(self) -> None:
        self.tasks: list[trio.lowlevel.Task] = []
        self.arrived = trio.Event()

    def reply_arrived(self) -> None:
        self.tasks.append(trio.lowlevel.current_task())
        self.arrived.set()


@dataclass
class Forwarder:
    """A ReadyHandler: each line a client sends is issued to the backend from the loop's pass
    (`requests` maps a line to the request sent for it; by default the line itself)."""

    requests: dict[bytes, bytes] = field(default_factory=dict)
    backend: BackendConnection | None = None
    replies: list[PendingReply] = field(default_factory=list)
    told: Told = field(default_factory=Told)
    loop_tasks: list[trio.lowlevel.Task] = field(default_factory=list)

    def opened(self, conn: Connection) -> Receiver:
        return functools.partial(self.received, conn)

    def holds_input(self, conn: Connection) -> bool:
        return False

    def closed(self, conn: Connection) -> None:
        pass

    def received(self, conn: Connection,
                 data: bytes) -> Handoff | type[HangUp] | type[Parked] | None:
        assert self.backend is not None
        self.loop_tasks.append(trio.lowlevel.current_task())
        for line in data.split(b"\r\n")[:-1]:
            request = self.requests.get(line, line + b"\r\n")
            self.replies.append(self.backend.submit(request, request.startswith(b"get "),
                                                    self.told))
        return None


class TaskSteps(trio.abc.Instrument):
    """Steps taken by each task whose name holds one of `names`."""

    def __init__(self, *names: str) -> None:
        self.names = names
        self.steps: collections.Counter[str] = collections.Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        for name in self.names:
            if name in task.name:
                self.steps[name] += 1


@dataclass
class Setup:
    backend: ScriptedBackend
    conn: BackendConnection
    forwarder: Forwarder
    loop: ReadyLoop
    loop_scope: trio.CancelScope
    failures: list[str]
    send: Callable[[bytes], int]


@asynccontextmanager
async def looped(requests: dict[bytes, bytes] | None = None) -> AsyncIterator[Setup]:
    """A scripted backend, a ReadyLoop with one forwarding client, and a connection from the
    loop to the backend (connected, running, and in the loop's set)."""
    backend = ScriptedBackend(answers)
    forwarder = Forwarder(requests or {})

    def no_handoff(conn: Connection, handoff: Handoff) -> None:
        raise AssertionError("the forwarder never hands off")

    loop = ReadyLoop(forwarder, no_handoff, lambda conn: nonblocking.close(conn.sock))
    failures: list[str] = []
    ours, peer = nonblocking_socketpair()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await backend.listen(nursery)
            loop_scope = trio.CancelScope()

            async def run_loop() -> None:
                with loop_scope:
                    await loop.run()

            nursery.start_soon(run_loop)
            await trio.testing.wait_all_tasks_blocked()  # the loop runs: the run's own
            conn = BackendConnection("127.0.0.1", backend.port, 2.0, failures.append,
                                     lambda: None)
            await conn.connect()
            nursery.start_soon(conn.run)
            await trio.testing.wait_all_tasks_blocked()
            forwarder.backend = conn
            client = Connection(ours)
            client.receiver = forwarder.opened(client)
            loop.add(client)
            await trio.testing.wait_all_tasks_blocked()
            try:
                yield Setup(backend, conn, forwarder, loop, loop_scope, failures, peer.send)
            finally:
                nursery.cancel_scope.cancel()
    conn.close("test over")
    peer.close()


async def test_a_reply_read_in_the_pass_settles_the_client_with_no_task_woken() -> None:
    steps = TaskSteps("_write_forever", "BackendConnection.run", "edge_poller")
    async with looped() as setup:
        trio.lowlevel.add_instrument(steps)
        try:
            setup.send(b"get k\r\nget k\r\n")  # two requests in one read: one send
            while len(setup.forwarder.told.tasks) < 2:
                await setup.forwarder.told.arrived.wait()
                setup.forwarder.told.arrived = trio.Event()
        finally:
            trio.lowlevel.remove_instrument(steps)
        replies = setup.forwarder.replies
        assert [render(reply) for reply in replies] == [HIT, HIT]
        assert setup.backend.asked == [b"get k", b"get k"]
        loop_task = setup.forwarder.loop_tasks[0]
        assert setup.forwarder.told.tasks == [loop_task, loop_task]  # told in the loop's pass
        assert steps.steps == {}  # neither the writer, the reader nor a poller woke
        assert setup.conn._reader is None  # never read by a task
        assert setup.failures == []


async def test_a_backend_closing_mid_reply_fails_every_pending_reply() -> None:
    async with looped() as setup:
        setup.backend.close.add(b"get a")  # half a reply, then the socket closes
        setup.backend.answer = lambda line: HIT[:10] if line == b"get a" else HIT
        setup.send(b"get a\r\nget b\r\n")
        while len(setup.forwarder.told.tasks) < 2:
            await setup.forwarder.told.arrived.wait()
            setup.forwarder.told.arrived = trio.Event()
        first, second = setup.forwarder.replies
        assert first.error is not None and "closed the connection" in first.error
        assert second.error == first.error  # failed with it: never answered, never resent
        assert not setup.conn.alive
        assert len(setup.failures) == 1 and "closed the connection" in setup.failures[0]
        loop_task = setup.forwarder.loop_tasks[0]
        assert setup.forwarder.told.tasks == [loop_task, loop_task]
        assert setup.backend.asked == [b"get a"]  # the socket closed before b was read


async def test_a_reply_that_answers_no_request_fails_the_connection_as_a_bad_reply() -> None:
    # An ordinary ResponseError after the Unauthenticated handler in the same function: the
    # compiled module once raised TypeError here (one exception variable, typed by the
    # first handler), which the loop logged as an unexpected failure.
    async with looped() as setup:
        setup.backend.answer = lambda line: b"STORED\r\n"  # a get answered as a set
        setup.send(b"get a\r\n")
        while not setup.forwarder.told.tasks:
            await setup.forwarder.told.arrived.wait()
        (reply,) = setup.forwarder.replies
        assert reply.error is not None and "bad reply from" in reply.error
        assert "out of step" in reply.error
        assert not setup.conn.alive
        assert len(setup.failures) == 1 and "bad reply from" in setup.failures[0]


async def test_a_send_the_kernel_does_not_take_whole_falls_back_to_the_writer() -> None:
    steps = TaskSteps("_write_forever")
    async with looped({b"big": BIG_SET}) as setup:
        setup.backend.reading = trio.Event()  # the backend stops reading (after one more read)
        trio.lowlevel.add_instrument(steps)
        try:
            setup.send(b"big\r\n")
            await trio.testing.wait_all_tasks_blocked()
            assert steps.steps["_write_forever"] >= 1  # it took the rest of the pass's send
            assert setup.backend.blocks == []
            setup.backend.reading.set()
            await setup.forwarder.told.arrived.wait()
        finally:
            trio.lowlevel.remove_instrument(steps)
        (reply,) = setup.forwarder.replies
        assert render(reply) == b"STORED\r\n"
        assert setup.backend.asked == [b"set big 0 0 %d" % len(BIG)]
        assert setup.backend.blocks == [BIG]  # every byte once, in order
        assert setup.failures == []


async def test_once_the_loop_ends_the_reader_task_finishes_a_reply_it_began() -> None:
    async with looped() as setup:
        setup.backend.split.add(b"get k")
        setup.send(b"get k\r\n")
        await trio.testing.wait_all_tasks_blocked()  # the loop read the first half
        (reply,) = setup.forwarder.replies
        assert not reply.done
        setup.loop_scope.cancel()  # the loop ends: the connection is detached
        await trio.testing.wait_all_tasks_blocked()
        setup.backend.release.set()
        await setup.forwarder.told.arrived.wait()
        assert render(reply) == HIT
        assert setup.conn._reader is not None  # read by the connection's own task
        assert setup.forwarder.told.tasks[0] is not setup.forwarder.loop_tasks[0]
        # and a request issued from a task now goes through the writer and the reader
        told = setup.forwarder.told
        told.arrived = trio.Event()
        again = setup.conn.submit(b"get k\r\n", True, told)
        await told.arrived.wait()
        assert render(again) == HIT
        assert setup.failures == []


async def test_a_request_issued_in_a_pass_fails_at_its_deadline_not_before() -> None:
    # Its deadline is dated by the pass's flush with the pass's one clock reading: never
    # before the request was read (the connection's timeout is 2 s here), and it still fires.
    async with looped() as setup:
        setup.backend.split.add(b"get k")  # half its reply, then nothing until the test ends
        sent_at = trio.current_time()
        setup.send(b"get k\r\n")
        await trio.testing.wait_all_tasks_blocked()
        [reply] = setup.forwarder.replies
        assert sent_at + 2.0 <= reply.deadline <= trio.current_time() + 2.0
        with trio.fail_after(5):
            await reply.wait()
        assert trio.current_time() >= sent_at + 2.0
        assert reply.error is not None and "timeout after 2000 ms" in reply.error
        assert setup.failures and "timeout" in setup.failures[0]
