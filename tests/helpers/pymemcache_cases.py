"""The pymemcache round-trips that run against single servers (test_pymemcache.py: memcached
1.6.18 and the backend) and through proxies (test_proxy_clients.py: a proxy over memcached
shards and one over backend shards). A test module binds the cases (`test_x =
pymemcache_cases.test_x`) and the `client`, `noreply_client` and `key` fixtures, and defines
`running` and `server` for them.

Tests use their own keys (prefixed with the test's name), so they do not see each other.
Time-dependent checks (expiry, delayed flush_all) drive both servers at once to sleep only once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError, MemcacheServerError

from tests.helpers import servers

KINDS = ("memcached", "backend")
VERSION = b"1.6.18"
MAX_ITEM_SIZE = 1 << 20
# Largest value memcached 1.6.18 (64-bit, CAS on, -I 1m) stores with flags 0 is
# MAX_ITEM_SIZE - 59 - len(key): the item header and the "\r\n" take the rest.
ITEM_OVERHEAD = 59
CONNECT_TIMEOUT = 2.0
TIMEOUT = 5.0


def client_for(server: servers.RunningServer, *, noreply: bool) -> Client:
    return Client(server.address, connect_timeout=CONNECT_TIMEOUT, timeout=TIMEOUT,
                  default_noreply=noreply)


@pytest.fixture
def client(server: servers.RunningServer) -> Iterator[Client]:
    """pymemcache with replies: storage commands report what the server answered."""
    c = client_for(server, noreply=False)
    yield c
    c.close()


@pytest.fixture
def noreply_client(server: servers.RunningServer) -> Iterator[Client]:
    """pymemcache as shipped (default_noreply=True): storage commands always return True."""
    c = client_for(server, noreply=True)
    yield c
    c.close()


@pytest.fixture
def key(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Keys private to this test (and to this parametrization)."""
    prefix = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:80]
    return lambda suffix: f"{prefix}:{suffix}"


# --- default_noreply=True: the client never sees a reply, so every check reads back ---------

def test_noreply_default_storage_commands(noreply_client: Client, client: Client,
                                          key: Callable[[str], str]) -> None:
    c, k = noreply_client, key
    assert c.set(k("a"), b"1") is True
    assert c.get(k("a")) == b"1"
    assert c.add(k("a"), b"ignored") is True  # NOT_STORED is hidden by noreply
    assert c.get(k("a")) == b"1"
    assert c.add(k("b"), b"2") is True
    assert c.get(k("b")) == b"2"
    assert c.replace(k("missing"), b"x") is True
    assert c.get(k("missing")) is None
    assert c.replace(k("a"), b"10") is True
    assert c.get(k("a")) == b"10"
    assert c.append(k("a"), b"0") is True
    assert c.prepend(k("a"), b"<") is True
    assert c.get(k("a")) == b"<100"
    assert c.append(k("missing"), b"x") is True
    assert c.get(k("missing")) is None
    assert c.set_many({k(str(i)): str(i).encode() for i in range(20)}) == []
    assert c.get_many([k(str(i)) for i in range(20)]) == {k(str(i)): str(i).encode()
                                                          for i in range(20)}
    assert c.delete(k("a")) is True
    assert c.get(k("a")) is None
    assert c.delete(k("a")) is True  # NOT_FOUND is hidden by noreply
    assert c.delete_many([k(str(i)) for i in range(10)]) is True
    assert c.get_many([k(str(i)) for i in range(20)]) == {k(str(i)): str(i).encode()
                                                          for i in range(10, 20)}
    assert c.touch(k("b"), 100) is True
    assert c.touch(k("missing"), 100) is True
    # incr/decr default to noreply=False even on this client.
    c.set(k("n"), b"5")
    assert c.incr(k("n"), 3) == 8
    assert c.decr(k("n"), 10) == 0
    assert c.incr(k("n"), 1, noreply=True) is None
    assert c.get(k("n")) == b"1"
    # An oversized set with noreply: the error is suppressed, nothing stored, old value gone.
    c.set(k("big"), b"small")
    assert c.set(k("big"), b"x" * (MAX_ITEM_SIZE + 1)) is True
    assert c.get(k("big")) is None
    # The connection is still in step after all those silent commands.
    assert c.version() == VERSION
    assert client.get(k("b")) == b"2"


# --- default_noreply=False: assert the server's answers --------------------------------------

def test_set_get(client: Client, key: Callable[[str], str]) -> None:
    assert client.get(key("a")) is None
    assert client.get(key("a"), default=b"dflt") == b"dflt"
    assert client.set(key("a"), b"hello") is True
    assert client.get(key("a")) == b"hello"
    assert client.set(key("a"), b"") is True
    assert client.get(key("a")) == b""
    assert client.set(key("a"), b"v", flags=7) is True
    assert client.raw_command(f"get {key('a')}", "END\r\n") == (
        f"VALUE {key('a')} 7 1\r\nv\r\n".encode())


def test_set_many_get_many(client: Client, key: Callable[[str], str]) -> None:
    values = {key(f"m{i}"): f"value-{i}".encode() * (i + 1) for i in range(100)}
    assert client.set_many(values) == []
    wanted = [*values, key("absent1"), key("absent2")]
    assert client.get_many(wanted) == values
    assert client.get_many([]) == {}


def test_add_replace_append_prepend(client: Client, key: Callable[[str], str]) -> None:
    k = key
    assert client.add(k("a"), b"1") is True
    assert client.add(k("a"), b"2") is False
    assert client.get(k("a")) == b"1"
    assert client.replace(k("a"), b"3") is True
    assert client.replace(k("nope"), b"3") is False
    assert client.get(k("nope")) is None
    assert client.append(k("a"), b"45") is True
    assert client.prepend(k("a"), b"12") is True
    assert client.get(k("a")) == b"12345"
    assert client.append(k("nope"), b"x") is False
    assert client.prepend(k("nope"), b"x") is False
    assert client.get(k("nope")) is None
    # append/prepend keep the flags of the stored item.
    assert client.set(k("f"), b"mid", flags=42) is True
    assert client.append(k("f"), b"-end", flags=1) is True
    assert client.prepend(k("f"), b"start-", flags=2) is True
    assert client.raw_command(f"get {k('f')}", "END\r\n") == (
        f"VALUE {k('f')} 42 13\r\nstart-mid-end\r\n".encode())


def test_gets_cas(client: Client, key: Callable[[str], str]) -> None:
    k = key("c")
    assert client.gets(k) == (None, None)
    assert client.cas(k, b"x", 1) is None  # NOT_FOUND
    assert client.set(k, b"one") is True
    value, token = client.gets(k)
    assert value == b"one"
    assert token is not None and int(token) > 0
    assert client.cas(k, b"two", token) is True
    assert client.get(k) == b"two"
    assert client.cas(k, b"three", token) is False  # EXISTS: the token is stale now
    assert client.get(k) == b"two"
    value2, token2 = client.gets(k)
    assert value2 == b"two" and int(token2) != int(token)
    # Any mutation changes the CAS; gets_many reports one per key.
    client.set(key("d"), b"d")
    both = client.gets_many([k, key("d"), key("absent")])
    assert set(both) == {k, key("d")}
    assert both[k] == (b"two", token2)
    client.touch(k, 1000)
    assert client.gets(k) == (b"two", token2)  # touch keeps the CAS
    client.append(k, b"!")
    assert client.cas(k, b"late", token2) is False


def test_incr_decr(client: Client, key: Callable[[str], str]) -> None:
    k = key("n")
    assert client.incr(k, 1) is None
    assert client.decr(k, 1) is None
    assert client.set(k, b"10") is True
    assert client.incr(k, 5) == 15
    assert client.decr(k, 3) == 12
    assert client.decr(k, 100) == 0  # decr floors at 0
    assert client.get(k) == b"0 "  # rewritten in place: "12" -> "0 "
    assert client.set(k, str(2**64 - 1).encode()) is True
    assert client.set(k, b"2") is True
    assert client.incr(k, 2**64 - 1) == 1  # incr wraps at 2**64
    assert client.incr(k, 2**64 - 1) == 0
    assert client.set(k, b"100") is True
    assert client.decr(k, 1) == 99
    assert client.get(k) == b"99 "  # memcached rewrites in place, padding with spaces
    assert client.incr(k, 1) == 100
    assert client.set(key("s"), b"abc") is True
    with pytest.raises(MemcacheClientError, match="cannot increment or decrement non-numeric"):
        client.incr(key("s"), 1)
    with pytest.raises(MemcacheClientError, match="cannot increment or decrement non-numeric"):
        client.decr(key("s"), 1)
    assert client.get(key("s")) == b"abc"
    assert client.version() == VERSION  # still in step after the errors


def test_incr_wraps_from_the_largest_value(running: dict[str, servers.RunningServer]) -> None:
    """Backend only: 1.6.18's safe_strtoull checks for '-' with strchr on the item data, which
    is not NUL-terminated, so a value >= 2**63 spuriously fails as non-numeric whenever a '-'
    follows in slab memory (seen with this module's keys). The backend must just wrap."""
    client = client_for(running["backend"], noreply=False)
    try:
        assert client.set("wrap", str(2**64 - 1).encode()) is True
        assert client.incr("wrap", 2) == 1
        assert client.set("wrap", str(2**64 - 1).encode()) is True
        assert client.decr("wrap", 2**64 - 1) == 0
    finally:
        client.close()


def test_touch_delete_delete_many(client: Client, key: Callable[[str], str]) -> None:
    assert client.touch(key("a"), 10) is False
    assert client.set(key("a"), b"1") is True
    assert client.touch(key("a"), 10) is True
    assert client.get(key("a")) == b"1"
    assert client.delete(key("a")) is True
    assert client.delete(key("a")) is False
    assert client.get(key("a")) is None
    client.set_many({key(str(i)): b"v" for i in range(10)})
    assert client.delete_many([key(str(i)) for i in range(5)] + [key("absent")]) is True
    assert sorted(client.get_many([key(str(i)) for i in range(10)])) == sorted(
        key(str(i)) for i in range(5, 10))


def test_flush_all(client: Client, key: Callable[[str], str]) -> None:
    client.set_many({key(str(i)): b"v" for i in range(10)})
    assert client.flush_all() is True
    assert client.get_many([key(str(i)) for i in range(10)]) == {}
    assert client.set(key("after"), b"new") is True  # items stored after a flush live
    assert client.get(key("after")) == b"new"


def test_version(client: Client, noreply_client: Client) -> None:
    assert client.version() == VERSION
    assert noreply_client.version() == VERSION


def test_binary_values(client: Client, key: Callable[[str], str]) -> None:
    values = {
        key("all_bytes"): bytes(range(256)) * 16,
        key("crlf"): b"\r\nEND\r\nVALUE x 0 1\r\n\r\n",
        key("nul"): b"\x00" * 1000,
        key("ff"): b"\xff\xfe\x80\r",
        key("lf"): b"\n",
    }
    for k, v in values.items():
        assert client.set(k, v) is True
        assert client.get(k) == v
    assert client.get_many(list(values)) == values
    assert client.append(key("nul"), b"\r\n\x00") is True
    assert client.get(key("nul")) == b"\x00" * 1000 + b"\r\n\x00"


def test_values_near_the_item_size_limit(client: Client, key: Callable[[str], str]) -> None:
    k = key("big")
    largest = MAX_ITEM_SIZE - ITEM_OVERHEAD - len(k)
    value = bytes(i % 251 for i in range(largest))
    assert client.set(k, value) is True
    assert client.get(k) == value
    with pytest.raises(MemcacheServerError, match="object too large for cache"):
        client.set(k, value + b"x")
    # memcached's set removes the old item when the new one is too large.
    assert client.get(k) is None
    with pytest.raises(MemcacheServerError, match="object too large for cache"):
        client.set(k, b"y" * (MAX_ITEM_SIZE + 1))
    assert client.get(k) is None
    # A smaller value under a shorter key, a MiB of traffic later: still in step.
    assert client.set(key("after"), b"ok") is True
    assert client.get(key("after")) == b"ok"


def test_key_lengths(client: Client) -> None:
    k250 = "k" * 250
    assert client.set(k250, b"long key") is True
    assert client.get(k250) == b"long key"
    assert client.get_many([k250, "k" * 249]) == {k250: b"long key"}
    assert client.delete(k250) is True


def test_expiry_touch_and_delayed_flush(running: dict[str, servers.RunningServer]) -> None:
    """Both servers at once, so the module sleeps once for all of them."""
    clients = {kind: client_for(running[kind], noreply=False) for kind in KINDS}
    # Delayed flush on its own server per kind: it would hit every other test's keys.
    with servers.start("memcached") as flush_m, servers.start("backend") as flush_b:
        flushers = {"memcached": client_for(flush_m, noreply=False),
                    "backend": client_for(flush_b, noreply=False)}
        for kind in KINDS:
            c, f = clients[kind], flushers[kind]
            assert c.set("exp:short", b"1", expire=1) is True
            assert c.set("exp:long", b"2", expire=30) is True
            assert c.set("exp:never", b"3") is True
            assert c.set("exp:touched", b"4") is True
            assert c.touch("exp:touched", 1) is True
            assert c.get("exp:long") == b"2"
            f.set_many({f"keep{i}": b"v" for i in range(5)})
            # memcached 1.6.18 flushes at realtime(delay) - 1, so with delay 3 the items
            # live at least 1 s (its clock ticks once a second) and are gone within 3 s.
            assert f.flush_all(delay=3) is True
            assert len(f.get_many([f"keep{i}" for i in range(5)])) == 5, kind
        time.sleep(2.1)
        for kind in KINDS:
            c = clients[kind]
            assert c.get("exp:short") is None, kind
            assert c.get("exp:touched") is None, kind
            assert c.get_many(["exp:long", "exp:never"]) == {"exp:long": b"2",
                                                             "exp:never": b"3"}, kind
        time.sleep(1.1)
        for kind in KINDS:
            f = flushers[kind]
            assert f.get_many([f"keep{i}" for i in range(5)]) == {}, kind
            assert f.set("new", b"n") is True
            assert f.get("new") == b"n", kind
            f.close()
    for c in clients.values():
        c.close()
