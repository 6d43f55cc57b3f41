"""ASCII authentication against memcached 1.6.18 started with -Y: the same steps sent to
memcached, a memring backend and a memring proxy (both with --auth-file) must get the same
replies, byte for byte, and the same close.

Each step is sent once the previous one was answered (tests.helpers.auth_conversations says
why). Where memring deliberately differs, the test pins both sides and says why.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from memring.protocol.ascii_auth import (
    AUTHENTICATION_FAILURE,
    TOKEN_TOO_LONG,
    UNAUTHENTICATED,
    auth_request,
)
from tests.helpers import servers
from tests.helpers.auth_conversations import Steps, authenticated_stats, converse_steps

pytestmark = pytest.mark.compat

AUTH_FILE = b"alice:secret\nbob:pa ss\ncarol:pw\n"
ALICE = auth_request(b"alice", b"secret")

# name -> steps; every step gets at most one reply line from memcached, or is the auth
# set followed by requests (answered normally once authenticated)
CASES: dict[str, list[bytes]] = {
    "version": [b"version\r\n", b"version\r\n"],
    "quit does not close": [b"quit\r\n", b"version\r\n"],
    "get": [b"get foo\r\n"],
    "stats": [b"stats\r\n"],
    "meta commands": [b"mn\r\n", b"mg foo v\r\n", b"ms foo 2\r\n", b"hi\r\n"],
    "empty line": [b"\r\n"],
    "verbosity": [b"verbosity 1\r\n"],
    "other storage commands": [b"add k 0 0 12\r\n", b"alice secret\r\n",
                               b"cas k 0 0 12 1\r\n"],
    "auth then get": [ALICE, b"get k\r\n"],
    "auth and get in one send": [ALICE + b"get k\r\n"],
    "auth then set and get": [ALICE, b"set k 0 0 1\r\nv\r\nget k\r\n"],
    "auth twice": [ALICE, ALICE + b"get k\r\n"],
    "auth then quit closes": [ALICE, b"quit\r\n"],
    "noreply is ignored": [b"set k 0 0 12 noreply\r\nalice secret\r\n", b"version\r\n"],
    "third user": [auth_request(b"carol", b"pw"), b"version\r\n"],
    "wrong password": [b"set k 0 0 11\r\nalice wrong\r\n", b"version\r\n"],
    "wrong then right": [b"set k 0 0 11\r\nalice wrong\r\n", ALICE, b"version\r\n"],
    "unknown user": [b"set k 0 0 9\r\ndave pass\r\n", b"version\r\n"],
    "password with a space": [b"set k 0 0 9\r\nbob pa ss\r\n", b"version\r\n"],
    "one token": [b"set k 0 0 5\r\nalice\r\n", b"version\r\n"],
    "empty data": [b"set k 0 0 0\r\n\r\n", b"version\r\n"],
    "CR in the data": [b"set k 0 0 12\r\nalice\rsecret\r\n"],
    "bad termination": [b"set k 0 0 10\r\nalice secrXY", b"version\r\n"],
    "extra token": [b"set k 0 0 18\r\nalice secret extra\r\n", b"version\r\n"],
    "two spaces": [b"set k 0 0 13\r\nalice  secret\r\n"],
    "leading space": [b"set k 0 0 13\r\n alice secret\r\n"],
    "NUL after the password": [b"set k 0 0 13\r\nalice secret\x00\r\n"],
    "bare LF line": [b"set k 0 0 12\nalice secret\r\n"],
    "plus sign": [b"set k 0 0 +12 \r\nalice secret\r\n"],
    "four tokens": [b"set k 0 12\r\n", b"version\r\n"],
    "bad length": [b"set k 0 0 x\r\n", b"set k 0 0 -1\r\n", b"set k 0 0 12abc\r\n"],
    "setx": [b"setx k 0 0 12\r\n"],
    "tab": [b"set\tk 0 0 12\r\n"],
    "split across sends": [b"set k 0 ", b"0 12\r\nalice se", b"cret\r\n", b"version\r\n"],
    "junk without newline closes": [b"x" * 2049],
    "many tokens": [b"set k 0 0 12 " + b" ".join([b"t"] * 30) + b"\r\nalice secret\r\n"],
}


@pytest.fixture(scope="module")
def auth_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "users"
    path.write_bytes(AUTH_FILE)
    return path


@contextlib.contextmanager
def three_servers(auth_file: Path) -> Iterator[dict[str, servers.RunningServer]]:
    """memcached -Y, a backend and a proxy with --auth-file (over a plain backend)."""
    with contextlib.ExitStack() as stack:
        found = {
            "memcached": stack.enter_context(servers.memcached("-Y", str(auth_file))),
            "backend": stack.enter_context(servers.backend("--auth-file", str(auth_file))),
        }
        upstream = stack.enter_context(servers.backend())
        found["proxy"] = stack.enter_context(
            servers.proxy([[upstream]], "--auth-file", str(auth_file)))
        yield found


@pytest.fixture(scope="module")
def started(auth_file: Path) -> Iterator[dict[str, servers.RunningServer]]:
    with three_servers(auth_file) as found:
        yield found


def ask_all(started: dict[str, servers.RunningServer], steps: list[bytes]) -> dict[str, Steps]:
    with ThreadPoolExecutor(len(started)) as pool:
        futures = {name: pool.submit(converse_steps, server, steps)
                   for name, server in started.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", CASES)
def test_same_replies_as_memcached(started: dict[str, servers.RunningServer],
                                   name: str) -> None:
    got = ask_all(started, CASES[name])
    oracle = got.pop("memcached")
    assert any(oracle.replies) or oracle.closed  # memcached did answer
    for server, steps in got.items():
        assert steps == oracle, f"{server} differs from memcached on {name!r}"


def test_refusals_are_memcached_words(started: dict[str, servers.RunningServer]) -> None:
    """The constants the code uses are the lines memcached sends."""
    got = converse_steps(started["memcached"], [b"version\r\n", b"set k 0 0 3\r\na b\r\n"])
    assert got.replies == (UNAUTHENTICATED, AUTHENTICATION_FAILURE)


def test_stats_count_attempts_as_memcached(auth_file: Path) -> None:
    """auth_cmds counts checks made, auth_errors failed ones; format errors are neither."""
    steps = [b"set k 0 0 11\r\nalice wrong\r\n", b"set k 0 0 5\r\nalice\r\n", ALICE]
    with three_servers(auth_file) as found:
        for server in found.values():
            converse_steps(server, steps)
        counts = {name: {k: v for k, v in authenticated_stats(server, b"carol", b"pw").items()
                         if k.startswith("auth_")}
                  for name, server in found.items()}
        settings = {name: authenticated_stats(server, b"alice", b"secret", "settings")
                    for name, server in found.items() if name != "proxy"}
    # two checks in the steps, the third authenticates the `stats` connection
    assert counts["memcached"] == {"auth_cmds": "3", "auth_errors": "1"}
    assert counts["backend"] == counts["proxy"] == counts["memcached"]
    for name in ("memcached", "backend"):
        assert settings[name]["auth_enabled_ascii"] == str(auth_file)
    # memcached -Y has no SASL; the backend's auth file also checks binary SASL PLAIN
    assert settings["memcached"]["auth_enabled_sasl"] == "no"
    assert settings["backend"]["auth_enabled_sasl"] == "yes"


# -- where memring differs on purpose ---------------------------------------------------------

def test_each_request_gets_its_refusal(started: dict[str, servers.RunningServer]) -> None:
    """memcached 1.6.18 writes every refusal of one read into the same response object
    (proto_text.c try_read_command_asciiauth reuses c->resp; out_string resets it), so of
    pipelined requests only the last refusal is sent and a client cannot match replies to
    requests; memring answers each request."""
    pipelined = [b"get a\r\nget b\r\nset k 0 0 11\r\nalice wrong\r\nversion\r\n"]
    got = ask_all(started, pipelined)
    assert got["memcached"].replies == (UNAUTHENTICATED,)
    expected = UNAUTHENTICATED * 2 + AUTHENTICATION_FAILURE + UNAUTHENTICATED
    assert got["backend"].replies == got["proxy"].replies == (expected,)


def test_a_long_token_is_refused_at_once(started: dict[str, servers.RunningServer]) -> None:
    """1.6.18 waits for (and buffers) any announced length, and a length near 2**32 wraps
    its read past the buffer; memcached 1.6.42 refuses more than 16384 bytes, and so does
    memring (the data is then read as commands)."""
    got = ask_all(started, [b"set k 0 0 16385\r\n", b"version\r\n"])
    assert got["memcached"].replies == (b"", b"")  # still waiting for the 16385 bytes
    assert got["backend"].replies == got["proxy"].replies == (TOKEN_TOO_LONG, UNAUTHENTICATED)
