"""Running a binary corpus case against a server and reading its replies frame by frame
(tests/helpers/binary_cases.py holds the cases; the differential tests compare servers),
and libmemcached's `memccapable -b` checks."""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

from memring.protocol.binary_frames import HEADER, BinaryResponse, Opcode, Status
from memring.protocol.binary_parser import BinaryResponseError, BinaryResponseParser
from tests.helpers import servers, wire
from tests.helpers.binary_cases import SENTINEL, SENTINEL_REPLY, BinaryCase, get

STEP_TIMEOUT = 5.0


def _step(sock: socket.socket, data: bytes, *, closing: bool) -> wire.Exchange:
    if closing:
        return wire.drive(sock, [data], until=None, timeout=STEP_TIMEOUT)
    return wire.drive(sock, [data + SENTINEL], until=SENTINEL_REPLY, timeout=STEP_TIMEOUT)


def run_case(server: servers.RunningServer, case: BinaryCase,
             chunk: int | None = None) -> list[tuple[bytes, bool]]:
    """The reply of every step and whether the server had closed by its end; `chunk`: send
    each step in writes of this many bytes."""
    results = []
    with wire.connect(server) as sock:
        for index, data in enumerate(case.steps):
            closing = case.closes and index == len(case.steps) - 1
            if chunk is None:
                got = _step(sock, data, closing=closing)
            else:
                payload = data if closing else data + SENTINEL
                pieces = [payload[i: i + chunk] for i in range(0, len(payload), chunk)]
                got = wire.drive(sock, pieces, until=None if closing else SENTINEL_REPLY,
                                 timeout=STEP_TIMEOUT)
            assert not got.timed_out, f"{server.name}: step {index} of {case.name} timed out"
            results.append((got.reply, got.closed))
    return results


def frames(reply: bytes) -> list[BinaryResponse | str]:
    parser = BinaryResponseParser(max_body=1 << 22)
    parser.receive_data(reply)
    found: list[BinaryResponse | str] = []
    try:
        found.extend(parser)
    except BinaryResponseError as error:
        found.append(f"unparsable: {error}")
    if parser.buffered:
        found.append(f"{parser.buffered} trailing bytes")
    return found


def _short(response: BinaryResponse | str) -> str:
    if isinstance(response, str):
        return response
    value = response.value if len(response.value) < 60 else (
        response.value[:20] + b"...(%d bytes)" % len(response.value))
    return (f"op={response.opcode:#04x} status={response.status:#04x} key={response.key!r} "
            f"extras={response.extras.hex()} value={value!r} opaque={response.opaque} "
            f"cas={response.cas}")


def describe(want: bytes, got: bytes, name: str = "backend") -> str:
    lines = ["memcached:"] + ["  " + _short(f) for f in frames(want)]
    lines += [f"{name}:"] + ["  " + _short(f) for f in frames(got)]
    return "\n".join(lines)


def capable_lines(server: servers.RunningServer) -> list[str]:
    """The binary checks of libmemcached's `memccapable -b` against `server`, one a line."""
    if shutil.which("memccapable") is None:
        pytest.skip("memccapable is missing: make debian-deps (libmemcached-tools)")
    done = subprocess.run(["memccapable", "-h", "127.0.0.1", "-p", str(server.port), "-b"],
                          capture_output=True, text=True, timeout=120, check=False)
    return [line for line in done.stdout.splitlines() if line.startswith("binary ")]


def assert_big_bodies_stream_by(server: servers.RunningServer) -> None:
    """A 64 MiB value (answered "Too large.") and an unknown opcode's 64 MiB body are
    swallowed as they stream by, and the server's RSS grows by less than 32 MiB: it held
    neither (the backend and the proxy alike)."""
    big = 64 << 20
    set_header = HEADER.pack(0x80, Opcode.SET, 1, 8, 0, 0, 9 + big, 0, 0) + b"\0" * 8 + b"k"
    unknown_header = HEADER.pack(0x80, 0x40, 0, 0, 0, 0, big, 0, 0)
    before = wire.rss_kib(server.pid)
    chunks = [set_header, *wire.repeat(b"v" * (1 << 20), big), unknown_header,
              *wire.repeat(b"u" * (1 << 20), big), get(b"k") + SENTINEL]
    got = wire.converse(server, chunks, until=SENTINEL_REPLY, timeout=60)
    replies = [r for r in frames(got.reply) if isinstance(r, BinaryResponse)]
    assert [(r.opcode, r.status, r.value) for r in replies] == [
        (Opcode.SET, Status.E2BIG, b"Too large."),
        (0x40, Status.UNKNOWN_COMMAND, b"Unknown command"),
        (Opcode.GET, Status.KEY_ENOENT, b"Not found"), (Opcode.NOOP, 0, b"")]
    assert wire.rss_kib(server.pid) - before < 32 * 1024
