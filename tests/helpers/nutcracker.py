"""A twemproxy (Debian's nutcracker, `distribution: ketama`) in front of real memcacheds, and
the placement it gives keys: stored through nutcracker, then every memcached is asked directly,
with a `get` of all the keys, which of them it holds. Used by
tests/compat/test_ketama_nutcracker.py and swept over pool sizes by bench/ketama_placement.py.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from memring.proxy.ketama import KetamaRing, point_name
from tests.helpers import servers

HOST = servers.HOST
SOCKET_TIMEOUT = 5.0
SET_CHUNK = 200   # pipelined sets per round trip
GET_BATCH = 250   # keys per `get` line
MAX_KEY = 250     # memcached's and nutcracker's key length limit


def nutcracker_binary() -> str:
    path = shutil.which("nutcracker") or "/usr/sbin/nutcracker"
    if not Path(path).exists():
        raise RuntimeError("nutcracker is not installed: run `make debian-deps` as root")
    return path


@dataclass(frozen=True)
class PoolServer:
    """One `servers:` entry of a nutcracker pool, and the point name it gets on the ring."""

    port: int
    weight: int = 1
    name: str | None = None
    host: str = HOST

    def yaml_entry(self) -> str:
        entry = f"{self.host}:{self.port}:{self.weight}"
        return f"{entry} {self.name}" if self.name else entry

    @property
    def point(self) -> str:
        return self.name or point_name(self.host, self.port)


@dataclass
class Placement:
    """The outcome of one comparison: how many keys were checked and which disagreed."""

    compared: int = 0
    mismatches: list[tuple[bytes, int, list[int]]] = field(default_factory=list)


class TextConnection:
    """A blocking memcached text-protocol connection; every socket call has a timeout."""

    def __init__(self, port: int, host: str = HOST, deadline: float | None = None) -> None:
        self.deadline = deadline if deadline is not None else time.monotonic() + 60.0
        self.sock = socket.create_connection((host, port), timeout=SOCKET_TIMEOUT)
        self.buffer = bytearray()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> TextConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fill(self) -> None:
        if time.monotonic() > self.deadline:
            raise TimeoutError("memcached exchange passed its deadline")
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buffer += chunk

    def flush_all(self) -> None:
        self.sock.sendall(b"flush_all\r\n")
        while not self.buffer.endswith(b"\r\n"):
            self._fill()
        reply = bytes(self.buffer)
        del self.buffer[:]
        if reply != b"OK\r\n":
            raise AssertionError(f"flush_all failed: {reply!r}")

    def store(self, keys: Sequence[bytes]) -> None:
        """`set` every key (value b"1"), pipelined in chunks; each reply must be STORED."""
        for start in range(0, len(keys), SET_CHUNK):
            chunk = keys[start:start + SET_CHUNK]
            self.sock.sendall(b"".join(b"set %s 0 0 1\r\n1\r\n" % k for k in chunk))
            while self.buffer.count(b"\r\n") < len(chunk):
                self._fill()
            replies = bytes(self.buffer).split(b"\r\n")
            del self.buffer[:]
            bad = [r for r in replies[:len(chunk)] if r != b"STORED"]
            if bad or replies[len(chunk):] != [b""]:
                raise AssertionError(f"set through nutcracker failed: {bad[:3]!r}")

    def held(self, keys: Sequence[bytes]) -> set[bytes]:
        """Which of `keys` the server holds: one `get` per batch, replies parsed by length."""
        found: set[bytes] = set()
        for start in range(0, len(keys), GET_BATCH):
            self.sock.sendall(b"get " + b" ".join(keys[start:start + GET_BATCH]) + b"\r\n")
            # A reply ends with END\r\n after a line break (or is just END\r\n): no key or
            # data line can end that way, since VALUE lines end in flags and length.
            while not (self.buffer == b"END\r\n" or self.buffer.endswith(b"\r\nEND\r\n")):
                self._fill()
            found.update(_parse_values(bytes(self.buffer)))
            del self.buffer[:]
        return found


def _parse_values(reply: bytes) -> list[bytes]:
    keys: list[bytes] = []
    pos = 0
    for _ in range(reply.count(b"VALUE ") + 1):  # bounded: one round per VALUE, then END
        eol = reply.index(b"\r\n", pos)
        line = reply[pos:eol]
        if line == b"END":
            return keys
        _, key, _flags, length = line.split(b" ")
        keys.append(key)
        pos = eol + 2 + int(length) + 2
    raise AssertionError(f"unexpected get reply: {reply[:200]!r}")


def nutcracker_yaml(listen_port: int, hash_name: str, pool: Sequence[PoolServer]) -> str:
    lines = [
        "memring_ketama:",
        f"  listen: {HOST}:{listen_port}",
        f"  hash: {hash_name}",
        "  distribution: ketama",
        "  auto_eject_hosts: false",  # every server stays on the ring, as in memring
        "  timeout: 3000",
        "  servers:",
    ]
    lines += [f"    - {s.yaml_entry()}" for s in pool]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def nutcracker(pool: Sequence[PoolServer], hash_name: str) -> Iterator[int]:
    """A nutcracker over `pool` on free ports; yields its listen port, stops it after."""
    listen_port, stats_port = servers.free_port(), servers.free_port()
    with tempfile.TemporaryDirectory(prefix="memring-nutcracker-") as tmp:
        conf = Path(tmp, "nutcracker.yml")
        conf.write_text(nutcracker_yaml(listen_port, hash_name, pool))
        argv = [nutcracker_binary(), "-c", str(conf), "-s", str(stats_port), "-a", HOST,
                "-o", str(Path(tmp, "nutcracker.log")), "-v", "4"]
        # `running` polls `version`, which nutcracker forwards to a backend: once it
        # answers, the listener and the server pool are both up.
        with servers.running("nutcracker", argv, port=listen_port) as proc:
            yield proc.port


def compare_placement(pool: Sequence[PoolServer], hash_name: str, keys: Sequence[bytes],
                      timeout: float = 60.0) -> Placement:
    """Store `keys` through nutcracker, find each on the memcacheds, compare with KetamaRing."""
    deadline = time.monotonic() + timeout
    ring = KetamaRing([(s.point, s.weight) for s in pool], hash_name)
    for server in pool:  # earlier comparisons on the same memcacheds leave their keys
        with TextConnection(server.port, host=server.host, deadline=deadline) as conn:
            conn.flush_all()
    with nutcracker(pool, hash_name) as port, TextConnection(port, deadline=deadline) as conn:
        conn.store(keys)
    where: dict[bytes, list[int]] = {}
    for index, server in enumerate(pool):
        with TextConnection(server.port, host=server.host, deadline=deadline) as conn:
            for key in conn.held(keys):
                where.setdefault(key, []).append(index)
    result = Placement()
    for key in keys:
        expected = ring.server_for(key)
        actual = where.get(key, [])
        result.compared += 1
        if actual != [expected]:
            result.mismatches.append((key, expected, actual))
    return result


_WORDS = ["ключ", "キー", "钥匙", "Schlüssel", "clé", "κλειδί", "מפתח", "مفتاح", "🔑", "naïve",
          "ÿ", "€uro", "ß", "Ωmega", "emoji😀🎉"]


def sample_keys(count: int, seed: int, prefix: str) -> list[bytes]:
    """`count` distinct keys: ASCII, UTF-8 text, raw bytes >= 0x80 (not UTF-8), long ones.

    memcached keys may hold any byte but space and control characters, so the raw keys
    draw from 0x21..0x7e and 0x80..0xff.
    """
    rng = random.Random(seed)
    raw_alphabet = bytes([*range(0x21, 0x7F), *range(0x80, 0x100)])
    keys: list[bytes] = []
    for i in range(count):
        tag = b"%s%d:" % (prefix.encode(), i)  # keeps keys distinct
        kind = i % 4
        if kind == 0:
            key = tag + bytes(rng.randrange(0x21, 0x7F) for _ in range(rng.randrange(1, 40)))
        elif kind == 1:
            key = tag + "".join(rng.choice(_WORDS) for _ in range(rng.randrange(1, 5))).encode()
        elif kind == 2:
            key = tag + bytes(rng.choice(raw_alphabet) for _ in range(rng.randrange(1, 60)))
        else:
            long_tail = bytes(rng.choice(raw_alphabet) for _ in range(rng.randrange(60, MAX_KEY)))
            key = (tag + long_tail)[:MAX_KEY]
        keys.append(key)
    return keys
