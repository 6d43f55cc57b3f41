"""Binary-protocol clients against memcached 1.6.18 and a backend: pylibmc (libmemcached,
binary=True) gets the same answers from both; SASL PLAIN against the backend's auth file."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memring.protocol.binary_frames import (
    BinaryRequest,
    BinaryResponse,
    Opcode,
    Status,
    encode_request,
    encode_response,
    error_response,
    storage_extras,
)
from memring.protocol.binary_parser import BinaryResponseParser
from tests.helpers import servers, wire

pytestmark = pytest.mark.compat


def pylibmc_session(port: int) -> list[Any]:
    """What a pylibmc (binary) client sees for a run of ordinary calls."""
    pylibmc = pytest.importorskip("pylibmc")  # in the dev extras
    # libmemcached 1.0.18's binary touch waits out its poll timeout (5 s) after the reply,
    # against memcached too (measured): 200 ms keeps the same answers and spares the wait
    client = pylibmc.Client([f"127.0.0.1:{port}"], binary=True,
                            behaviors={"cas": True, "_poll_timeout": 200})
    seen: list[Any] = []

    def call(name: str, *args: Any) -> Any:
        try:
            result = getattr(client, name)(*args)
        except pylibmc.Error as error:  # NotFound, TooBig, ...: the error is the answer
            result = type(error).__name__
        seen.append(result)
        return result

    try:
        call("set", "k", "v")
        call("get", "k")
        call("add", "k", "w")
        call("add", "n", 5)
        call("incr", "n", 3)
        call("decr", "n", 10)
        call("get_multi", ["k", "n", "missing"])
        _value, cas = call("gets", "k")
        call("cas", "k", "x", cas)
        call("cas", "k", "y", cas)  # stale CAS
        call("append", "k", "+")
        call("prepend", "k", "-")
        call("get", "k")
        call("replace", "missing", "z")
        call("touch", "k", 100)
        call("delete", "k")
        call("delete", "k")
        call("incr", "missing", 1)
        call("set_multi", {"a": b"1" * 100_000, "b": {"pickled": 1}})
        call("get_multi", ["a", "b"])
        call("set", "big", b"v" * 2_000_000)
        stats = client.get_stats()[0][1]
        seen.append({name: stats[name] for name in ("cmd_get", "get_hits", "get_misses",
                                                    "curr_items", "total_items")})
        call("flush_all")
        call("get", "a")
    finally:
        client.disconnect_all()
    return seen


def test_pylibmc_binary_sees_what_memcached_answers() -> None:
    with servers.memcached() as memcached, servers.backend() as backend:
        want = pylibmc_session(memcached.port)
        got = pylibmc_session(backend.port)
    assert want[1] == "v"  # the session did talk to memcached
    assert got == want


# -- SASL PLAIN against --auth-file ---------------------------------------------------------

@pytest.fixture
def authenticating_backend(tmp_path: Path) -> Iterator[servers.RunningServer]:
    path = tmp_path / "auth"
    path.write_text("alice:secret\n")
    with servers.backend("--auth-file", str(path)) as backend:
        yield backend


def replies(server: servers.RunningServer, steps: list[bytes]
            ) -> tuple[list[list[BinaryResponse]], bool]:
    """The replies of each step, written alone on one connection (each read for 0.5 s),
    and whether the server closed the connection (no step is sent after that)."""
    found = []
    with wire.connect(server) as sock:
        for data in steps:
            done = wire.drive(sock, [data], until=None, timeout=0.5)
            parser = BinaryResponseParser()
            parser.receive_data(done.reply)
            found.append(list(parser))
            if done.closed:
                return found, True
    return found, False


def frame(opcode: int, key: bytes = b"", value: bytes = b"", extras: bytes = b"") -> bytes:
    return encode_request(BinaryRequest(opcode, key, extras, value))


def test_sasl_plain_with_the_auth_file(authenticating_backend: servers.RunningServer) -> None:
    got, closed = replies(authenticating_backend, [
        frame(Opcode.VERSION), frame(Opcode.SASL_LIST_MECHS),
        frame(Opcode.SASL_AUTH, b"PLAIN", b"\0alice\0wrong"),
        frame(Opcode.SASL_AUTH, b"PLAIN", b"\0alice\0secret"),
        frame(Opcode.SET, b"k", b"v", storage_extras(0, 0)), frame(Opcode.GET, b"k")])
    assert got[0][0].value == b"1.6.18"  # version is allowed before authenticating
    assert got[1] == [BinaryResponse(Opcode.SASL_LIST_MECHS, value=b"PLAIN")]
    assert [(r.status, r.value) for r in got[2]] == [(Status.AUTH_ERROR, b"Auth failure.")]
    assert got[3] == [BinaryResponse(Opcode.SASL_AUTH, value=b"Authenticated")]
    assert got[4][0].status == Status.SUCCESS
    assert got[5][0].value == b"v"
    assert not closed


def test_commands_before_authentication_answer_auth_error_and_close(
        authenticating_backend: servers.RunningServer) -> None:
    got, closed = replies(authenticating_backend, [frame(Opcode.GET, b"k"), frame(Opcode.NOOP)])
    assert [encode_response(r) for r in got[0]] == [
        error_response(Opcode.GET, Status.AUTH_ERROR, 0)]
    assert closed and len(got) == 1  # closed after the refusal, as memcached -S closes


# pylibmc's wheel bundles its own libsasl2, which looks for its plugins (PLAIN among them) in
# Red Hat's /usr/lib64/sasl2; on Debian they are here, and SASL_PATH says so (measured: without
# it the client fails before sending SASL_AUTH, "FAILED TO SEND AUTHENTICATION TO SERVER").
DEBIAN_SASL_PLUGINS = "/usr/lib/x86_64-linux-gnu/sasl2"
PYLIBMC_SASL = """
import sys, pylibmc
client = pylibmc.Client([sys.argv[1]], binary=True, username=sys.argv[2], password=sys.argv[3])
try:
    client.set("k", "v")
    print(client.get("k"))
except pylibmc.Error as error:
    print(type(error).__name__)
"""


def test_pylibmc_sasl_plain_against_the_auth_file(
        authenticating_backend: servers.RunningServer) -> None:
    pytest.importorskip("pylibmc")
    if not Path(DEBIAN_SASL_PLUGINS, "libplain.so").exists():
        pytest.skip(f"no SASL PLAIN plugin in {DEBIAN_SASL_PLUGINS} (libsasl2-modules)")
    address = f"127.0.0.1:{authenticating_backend.port}"
    env = {**os.environ, "SASL_PATH": DEBIAN_SASL_PLUGINS}
    seen = [subprocess.run([sys.executable, "-c", PYLIBMC_SASL, address, "alice", password],
                           capture_output=True, text=True, env=env, timeout=30,
                           check=True).stdout.strip()
            for password in ("secret", "wrong")]
    assert seen[0] == "v"
    assert seen[1] != "v" and seen[1].endswith("Error"), seen


@pytest.mark.parametrize("kind", ["memcached", "backend"])
def test_pylibmc_binary_through_the_proxy(kind: str) -> None:
    """The same session through a proxy over two shards of either kind. Its `stats` entry
    is left out: through the proxy `stats` describes the proxy (README)."""
    with servers.memcached() as memcached:
        want = pylibmc_session(memcached.port)
    with servers.proxy_over(kind, shards=2) as proxy:
        got = pylibmc_session(proxy.port)
    assert want[1] == "v"

    def without_stats(seen: list[Any]) -> list[Any]:
        return [s for s in seen if not (isinstance(s, dict) and "cmd_get" in s)]

    assert without_stats(got) == without_stats(want)
