"""The Jepsen run's clients: each does one memcached text command at a time through a proxy
and records it in the history as invoked, then as OK, FAIL or INFO.

Keys: a few registers (`r0`...) that every client sets, reads, gets+cas'es, incrs and deletes,
for the linearizability check; and `fresh:<client>:<n>` keys, each set once and read by the
other clients while the set may still be in flight, for direct counts of lost writes and
dirty reads. Values are integers unique to the write that makes them (`ValueSource`), spaced
so increments never reach another write's value: a value names the version of an item.

An answer the protocol defines is OK (a read's miss too); a write that got no answer, an
error or a timeout is INFO (it may have been applied: the proxy may have forwarded it); a
read that failed is FAIL (a read changes nothing). After anything but an answer the
connection is dropped and a new one opened, so a late reply is never taken for the next
command's.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from tests.helpers.jepsen.history import Op, Outcome

OP_TIMEOUT = 5.0  # longer than a failover (lease TTL + leader wait): most answers arrive
VALUE_SPACING = 1000  # increments between two writes' values: far fewer than this per version


class ProtocolError(Exception):
    """An answer that is not one of the command's defined ones."""


@dataclass
class ValueSource:
    """Values unique across the run: (client + 1) * 10**12 + n * VALUE_SPACING."""

    client: int
    n: int = 0

    def next(self) -> int:
        self.n += 1
        return (self.client + 1) * 10**12 + self.n * VALUE_SPACING


@dataclass
class SharedKeys:
    """Fresh keys written so far, for other clients to read (the newest ones mostly)."""

    fresh: list[str] = field(default_factory=list)

    def recent(self, rng: random.Random) -> str | None:
        if not self.fresh:
            return None
        return self.fresh[-1 - min(int(rng.expovariate(0.1)), len(self.fresh) - 1)]


class Connection:
    """One client connection to a proxy; replies read line by line from a buffer."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[:end + 2]
                return line
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("closed by the proxy")
            self.buffer += data

    async def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size + 2:
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("closed by the proxy")
            self.buffer += data
        block = bytes(self.buffer[:size])
        del self.buffer[:size + 2]
        return block

    async def request(self, data: bytes) -> bytes:
        await self.stream.send_all(data)
        return await self.line()

    async def get(self, key: str, with_cas: bool) -> tuple[int, int] | None:
        """(value, cas unique; 0 for get) or None on a miss."""
        first = await self.request(f"{'gets' if with_cas else 'get'} {key}\r\n".encode())
        if first == b"END":
            return None
        parts = first.split()
        if len(parts) < 4 or parts[0] != b"VALUE" or parts[1] != key.encode():
            raise ProtocolError(first.decode(errors="replace"))
        value = int(await self.exactly(int(parts[3])))
        if await self.line() != b"END":
            raise ProtocolError("no END after the value")
        return value, int(parts[4]) if with_cas else 0

    async def get_many(self, keys: list[str]) -> dict[str, int]:
        await self.stream.send_all(("get " + " ".join(keys) + "\r\n").encode())
        found: dict[str, int] = {}
        while True:
            line = await self.line()
            if line == b"END":
                return found
            parts = line.split()
            if len(parts) < 4 or parts[0] != b"VALUE":
                raise ProtocolError(line.decode(errors="replace"))
            found[parts[1].decode()] = int(await self.exactly(int(parts[3])))


def storage(command: str, key: str, value: int, token: int | None = None) -> bytes:
    data = str(value).encode()
    extra = f" {token}" if token is not None else ""
    return f"{command} {key} 0 0 {len(data)}{extra}\r\n".encode() + data + b"\r\n"


Recorder = Callable[[Op], None]


@dataclass
class LoadWindow:
    """When the clients stop: a deadline that the nemesis may bring forward once it is done."""

    end: float


@dataclass
class Client:
    """One process of the history: a loop of random operations until the window ends."""

    number: int
    ports: list[int]  # the proxies; a client keeps to one, moving on after a failure
    registers: list[str]
    shared: SharedKeys
    record: Recorder
    rng: random.Random
    values: ValueSource = field(init=False)
    conn: Connection | None = None
    port_index: int = 0
    fresh_written: int = 0

    def __post_init__(self) -> None:
        self.values = ValueSource(self.number)
        self.port_index = self.number % len(self.ports)

    async def run(self, window: LoadWindow) -> None:
        try:
            while trio.current_time() < window.end:
                await self.step()
        finally:
            await self._drop()

    async def step(self) -> None:
        roll = self.rng.random()
        if roll < 0.1:
            key = f"fresh:{self.number}:{self.fresh_written}"
            self.fresh_written += 1
            self.shared.fresh.append(key)
            await self.write("set", key, self.values.next())
            return
        if roll < 0.2:
            fresh = self.shared.recent(self.rng)
            if fresh is not None:
                await self.read("get", fresh)
                return
        key = self.rng.choice(self.registers)
        roll = self.rng.random()
        if roll < 0.30:
            await self.read("get", key)
        elif roll < 0.55:
            await self.write("set", key, self.values.next())
        elif roll < 0.75:
            found = await self.read("gets", key)
            if isinstance(found, tuple):
                await self.write("cas", key, self.values.next(), token=found[1])
        elif roll < 0.90:
            await self.write("incr", key, 1)
        else:
            await self.write("delete", key, None)

    async def _connection(self) -> Connection:
        if self.conn is None:
            self.conn = await Connection.open(self.ports[self.port_index])
        return self.conn

    async def _drop(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            with trio.CancelScope(shield=True):
                await conn.aclose()
        self.port_index = (self.port_index + 1) % len(self.ports)

    async def read(self, kind: str, key: str) -> object:
        invoke = trio.current_time()
        result: object = None
        try:
            with trio.fail_after(OP_TIMEOUT):
                conn = await self._connection()
                found = await conn.get(key, kind == "gets")
            result = (found[0] if found is not None else None) if kind == "get" else found
        except (OSError, ConnectionError, ProtocolError, trio.TooSlowError, ValueError,
                trio.BrokenResourceError):
            await self._drop()
            self.record(Op(self.number, kind, key, invoke, trio.current_time(), Outcome.FAIL))
            return None
        self.record(Op(self.number, kind, key, invoke, trio.current_time(), Outcome.OK,
                       result=result))
        return result

    async def write(self, kind: str, key: str, value: int | None,
                    token: int | None = None) -> None:
        invoke = trio.current_time()
        connected = self.conn is not None
        try:
            with trio.fail_after(OP_TIMEOUT):
                conn = await self._connection()
                connected = True
                answer = await conn.request(self._encode(kind, key, value, token))
            result = self._verdict(kind, answer)
        except (OSError, ConnectionError, ProtocolError, trio.TooSlowError, ValueError,
                trio.BrokenResourceError):
            await self._drop()
            # no connection was ever made for it: it cannot have been applied
            outcome = Outcome.INFO if connected else Outcome.FAIL
            self.record(Op(self.number, kind, key, invoke,
                           None if outcome is Outcome.INFO else trio.current_time(), outcome,
                           value=value, token=token))
            return
        self.record(Op(self.number, kind, key, invoke, trio.current_time(), Outcome.OK,
                       value=value, token=token, result=result))

    @staticmethod
    def _encode(kind: str, key: str, value: int | None, token: int | None) -> bytes:
        if kind in ("set", "cas"):
            assert value is not None
            return storage(kind, key, value, token)
        if kind == "incr":
            return f"incr {key} {value}\r\n".encode()
        return f"delete {key}\r\n".encode()

    @staticmethod
    def _verdict(kind: str, answer: bytes) -> object:
        """The result the history records; ProtocolError for anything else (SERVER_ERROR:
        the write may have been applied before it failed, so it is INFO)."""
        if kind == "set" and answer == b"STORED":
            return None
        if kind == "cas" and answer in (b"STORED", b"EXISTS", b"NOT_FOUND"):
            return answer.decode()
        if kind == "incr":
            if answer == b"NOT_FOUND":
                return None
            if answer.isdigit():
                return int(answer)
        if kind == "delete" and answer in (b"DELETED", b"NOT_FOUND"):
            return answer == b"DELETED"
        raise ProtocolError(answer.decode(errors="replace"))


async def final_reads(port: int, keys: list[str], timeout: float = 30.0) -> dict[str, int | None]:
    """Every key's value once the faults are healed (retrying a failing proxy)."""
    result: dict[str, int | None] = {}
    with trio.fail_after(timeout):
        for start in range(0, len(keys), 100):
            batch = keys[start:start + 100]
            while True:
                try:
                    conn = await Connection.open(port)
                    try:
                        found = await conn.get_many(batch)
                    finally:
                        await conn.aclose()
                    break
                except (OSError, ConnectionError, ProtocolError, trio.BrokenResourceError):
                    await trio.sleep(0.2)
            for key in batch:
                result[key] = found.get(key)
    return result
