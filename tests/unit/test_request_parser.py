"""The request parser, fed each case whole, one byte at a time, and with trailing data."""

from __future__ import annotations

import pytest

from memring.protocol import NEED_DATA, RequestParser
from memring.protocol.meta_flags import decode_key
from memring.protocol.requests import (
    Arithmetic,
    Delete,
    FlushAll,
    Get,
    Lru,
    LruCrawler,
    MetaArithmetic,
    MetaDelete,
    MetaGet,
    MetaNoop,
    MetaSet,
    ProtocolError,
    Quit,
    RefreshCerts,
    Slabs,
    Stats,
    Store,
    Touch,
    Version,
    Watch,
)

pytestmark = pytest.mark.unit


def events_of(data: bytes, step: int | None = None, **kwargs: int) -> list[object]:
    parser = RequestParser(**kwargs)
    events: list[object] = []
    chunks = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        parser.receive_data(chunk)
        while (event := parser.next_event()) is not NEED_DATA:
            events.append(event)
    return events


def check(data: bytes, expected: list[object], **kwargs: int) -> None:
    """Whole, byte by byte, and followed by a trailing `mn` that must parse too."""
    assert events_of(data, **kwargs) == expected
    assert events_of(data, step=1, **kwargs) == expected
    if not any(isinstance(e, ProtocolError) and e.close for e in expected):
        assert events_of(data + b"mn\r\n", **kwargs) == [*expected, MetaNoop()]


def test_get_and_multiget() -> None:
    check(b"get a\r\n", [Get(b"get", [b"a"])])
    check(b"gets a b c\r\n", [Get(b"gets", [b"a", b"b", b"c"])])
    check(b"gat 10 a b\r\n", [Get(b"gat", [b"a", b"b"], 10)])
    check(b"gats -1 a\r\n", [Get(b"gats", [b"a"], -1)])


def test_bare_lf_and_space_runs() -> None:
    check(b"get  a   b \n", [Get(b"get", [b"a", b"b"])])


def test_tab_is_not_a_separator() -> None:
    check(b"get a\tb\r\n", [Get(b"get", [b"a\tb"])])


def test_storage_commands() -> None:
    check(b"set k 5 0 3\r\nabc\r\n", [Store(b"set", b"k", 5, 0, b"abc")])
    check(b"cas k 0 100 1 77 noreply\r\nx\r\n",
          [Store(b"cas", b"k", 0, 100, b"x", 77, True)])
    check(b"append k 0 0 0\r\n\r\n", [Store(b"append", b"k", 0, 0, b"")])
    # An extra token that is not "noreply" is ignored.
    check(b"set k 0 0 1 foo\r\nx\r\n", [Store(b"set", b"k", 0, 0, b"x")])


def test_value_may_contain_crlf() -> None:
    check(b"set k 0 0 4\r\n\r\n\r\n\r\n", [Store(b"set", b"k", 0, 0, b"\r\n\r\n")])


def test_bad_data_chunk_consumes_exactly_length_plus_two() -> None:
    check(b"set k 0 0 1\r\nxy\r\n",
          [ProtocolError(b"CLIENT_ERROR bad data chunk\r\n"), ProtocolError(b"ERROR\r\n")])


def test_bad_storage_line_does_not_swallow_data() -> None:
    check(b"set k 0 0 -1\r\nabc\r\n",
          [ProtocolError(b"CLIENT_ERROR bad command line format\r\n"),
           ProtocolError(b"ERROR\r\n")])
    check(b"set " + b"k" * 251 + b" 0 0 1\r\nx\r\n",
          [ProtocolError(b"CLIENT_ERROR bad command line format\r\n"),
           ProtocolError(b"ERROR\r\n")])


def test_too_large_swallows_data_and_drops_key() -> None:
    value = b"x" * 2000
    check(b"set k 0 0 2000\r\n" + value + b"\r\n",
          [ProtocolError(b"SERVER_ERROR object too large for cache\r\n", drop_key=b"k")],
          max_item_size=1024)


def test_largest_value_fits() -> None:
    largest = (1 << 20) - 59 - 1
    data = b"set k 0 0 %d\r\n" % largest + b"v" * largest + b"\r\n"
    assert events_of(data) == [Store(b"set", b"k", 0, 0, b"v" * largest)]
    over = largest + 1
    assert events_of(b"set k 0 0 %d\r\n" % over + b"v" * over + b"\r\n") == [
        ProtocolError(b"SERVER_ERROR object too large for cache\r\n", drop_key=b"k")]


def test_noreply_hides_errors() -> None:
    # the hidden bad data chunk is still an event (the block's end is a write point)
    check(b"set k 0 0 1 noreply\r\nxy\r\n", [ProtocolError(b""), ProtocolError(b"ERROR\r\n")])
    check(b"incr k x noreply\r\n", [])
    check(b"delete k 5 noreply\r\n", [])


def test_flags_are_u32_and_reject_overflow() -> None:
    check(b"set k 4294967295 0 1\r\nx\r\n", [Store(b"set", b"k", 4294967295, 0, b"x")])
    # 1.6.18 would store 4294967296 as 0; we refuse it (see protocol/numeric.py).
    check(b"set k 4294967296 0 1\r\nx\r\n",
          [ProtocolError(b"CLIENT_ERROR bad command line format\r\n"),
           ProtocolError(b"ERROR\r\n")])


def test_numbers_past_int32_are_refused() -> None:
    # 1.6.18 keeps the low 32 bits (4294967297 -> 1); we refuse, see protocol/numeric.py.
    for line in (b"set k 0 4294967297 1\r\n", b"set k 0 0 4294967297\r\n",
                 b"set k 0 0 2147483647\r\n"):
        check(line + b"x\r\n", [ProtocolError(b"CLIENT_ERROR bad command line format\r\n"),
                                 ProtocolError(b"ERROR\r\n")])


def test_c_number_rules() -> None:
    check(b"set k +5 -0 1\r\nx\r\n", [Store(b"set", b"k", 5, 0, b"x")])
    check(b"set k 1_0 0 1\r\nx\r\n",
          [ProtocolError(b"CLIENT_ERROR bad command line format\r\n"),
           ProtocolError(b"ERROR\r\n")])


def test_other_text_commands() -> None:
    check(b"delete k\r\ndelete k 0 noreply\r\n", [Delete(b"k"), Delete(b"k", True)])
    check(b"incr k 5\r\ndecr k 18446744073709551615\r\n",
          [Arithmetic(b"incr", b"k", 5), Arithmetic(b"decr", b"k", (1 << 64) - 1)])
    check(b"incr k 18446744073709551616\r\n",
          [ProtocolError(b"CLIENT_ERROR invalid numeric delta argument\r\n")])
    check(b"touch k 10\r\n", [Touch(b"k", 10)])
    check(b"flush_all\r\nflush_all 10\r\nflush_all noreply\r\n",
          [FlushAll(), FlushAll(10), FlushAll(0, True)])
    check(b"stats\r\nstats items\r\n", [Stats([]), Stats([b"items"])])
    check(b"version\r\n", [Version()])
    check(b"quit\r\n", [Quit()])
    # memcached: noreply is the last token, whatever precedes it (tests/compat/test_tls_memcached)
    check(b"refresh_certs\r\nrefresh_certs noreply\r\nrefresh_certs a b\r\n",
          [RefreshCerts(), RefreshCerts(True), RefreshCerts()])


def test_administration_commands() -> None:
    """Their tokens go to the backend, whose replies depend on its state (admin_commands)."""
    check(b"lru_crawler metadump all\r\nlru_crawler\r\n",
          [LruCrawler([b"metadump", b"all"]), LruCrawler([])])
    check(b"lru tune 10 40 0.2 2.0\r\nlru\r\n",
          [Lru([b"tune", b"10", b"40", b"0.2", b"2.0"]), ProtocolError(b"ERROR\r\n")])
    check(b"slabs automove 1\r\nwatch\r\nwatch fetchers HTTP/1.1\r\n",
          [Slabs([b"automove", b"1"]), Watch([]), Watch([b"fetchers", b"HTTP/1.1"])])


def test_unknown_and_short_commands() -> None:
    check(b"bogus\r\n", [ProtocolError(b"ERROR\r\n")])
    check(b"get\r\n", [ProtocolError(b"ERROR\r\n")])
    check(b"\r\n", [ProtocolError(b"ERROR\r\n")])
    check(b"set k 0 0\r\n", [ProtocolError(b"ERROR\r\n")])


def test_http_request_closes_silently() -> None:
    check(b"GET / HTTP/1.1\r\n", [ProtocolError(b"", close=True)])


def test_long_line_without_newline_closes() -> None:
    assert events_of(b"x" * 3000) == [ProtocolError(b"", close=True)]
    # A get line may be long; past max_line it is refused like memcached's proxy does.
    assert events_of(b"get " + b"k " * 2000) == []
    assert events_of(b"get " + b"k " * 2000, max_line=3000) == [
        ProtocolError(b"SERVER_ERROR request too long\r\n", close=True)]


def test_binary_protocol_closes() -> None:
    assert events_of(b"\x80\x00\x00\x00\r\n") == [ProtocolError(b"", close=True)]


def test_meta_commands() -> None:
    [event] = events_of(b"mg k v t Oabc k\r\n")
    assert isinstance(event, MetaGet)
    assert event.key == b"k"
    assert event.flags.order == "vtOk"
    assert event.flags.opaque == b"Oabc"
    [event] = events_of(b"ms k 2 T10 F5 MA q\r\nhi\r\n")
    assert isinstance(event, MetaSet)
    assert (event.value, event.flags.ttl, event.flags.client_flags, event.flags.mode,
            event.flags.quiet) == (b"hi", 10, 5, ord("A"), True)
    [event] = events_of(b"md a2V5 b q\r\n")
    assert isinstance(event, MetaDelete)
    assert event.key == b"key" and event.flags.base64
    [event] = events_of(b"ma k N0 J13 D2 MD\r\n")
    assert isinstance(event, MetaArithmetic)
    assert (event.flags.vivify_ttl, event.flags.initial, event.flags.delta,
            event.flags.mode) == (0, 13, 2, ord("D"))


@pytest.mark.parametrize(("data", "reply"), [
    (b"mg k v v\r\n", b"CLIENT_ERROR duplicate flag\r\n"),
    (b"mg k zz\r\n", b"CLIENT_ERROR invalid flag\r\n"),
    (b"md k zz\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
    (b"ma k D-1\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
    (b"ma k MX\r\n", b"CLIENT_ERROR invalid mode for ma M token\r\n"),
    (b"mg k Tx\r\n", b"CLIENT_ERROR bad token in command line format\r\n"),
    (b"mg k O" + b"x" * 40 + b"\r\n", b"CLIENT_ERROR opaque token too long\r\n"),
    (b"mg a b\r\n", b"CLIENT_ERROR error decoding key\r\n"),
    (b"mg k " + b" ".join(b"O%d" % i for i in range(18)) + b"\r\n",
     b"CLIENT_ERROR options flags are too long\r\n"),
])
def test_meta_flag_errors(data: bytes, reply: bytes) -> None:
    check(data, [ProtocolError(reply)])


def test_meta_set_errors_swallow_data_after_the_length() -> None:
    check(b"ms k 1 MX\r\nx\r\n", [ProtocolError(b"CLIENT_ERROR invalid mode for ms M token\r\n")])
    check(b"ms k 1 Fx\r\nx\r\n", [ProtocolError(b"CLIENT_ERROR bad command line format\r\n")])
    # Before the length is known nothing is swallowed.
    check(b"ms k x\r\nx\r\n", [ProtocolError(b"CLIENT_ERROR bad command line format\r\n"),
                              ProtocolError(b"ERROR\r\n")])
    # meta mode reports a bad chunk even with q.
    check(b"ms k 1 q\r\nxy\r\n", [ProtocolError(b"CLIENT_ERROR bad data chunk\r\n"),
                                 ProtocolError(b"ERROR\r\n")])


def test_pipelined_burst() -> None:
    data = b"".join(b"set k%d 0 0 1\r\nx\r\nget k%d\r\n" % (i, i) for i in range(100))
    events = events_of(data)
    assert len(events) == 200
    assert events[198] == Store(b"set", b"k99", 0, 0, b"x")
    assert events_of(data, step=7) == events


def test_in_data_block_while_a_block_is_read_or_swallowed() -> None:
    """Servers hold replies while this is true (protocol.write_points)."""
    parser = RequestParser(max_item_size=1000)
    for data, inside in ((b"mg a\r\nset b 0 0 5\r\nab", True), (b"c", True),
                         (b"de\r\n", False), (b"set c 0 0 2000\r\nxx", True),
                         (b"x" * 1998, True), (b"\r\n", False), (b"mg a", False),
                         (b"\r\nms a 3 Mz\r\nx", True), (b"xx\r\n", False)):
        parser.receive_data(data)
        while parser.next_event() is not NEED_DATA:
            pass
        assert parser.in_data_block is inside, data


def test_base64_key_read_as_memcached_decodes() -> None:
    """Bytes outside the alphabet are skipped; decoding stops after the first padded block;
    a later flag's error replaces the b flag's (differential case meta_base64_*)."""
    assert decode_key(b"Y\x01Q==") == b"a"
    assert decode_key(b"QQ==QUFB") == b"A"
    assert decode_key(b"AA=A") == b"\x00\x00"
    for bad in (b"!!!!", b"YQ=", b"A===", b"===="):
        assert decode_key(bad) is None, bad
    [error] = events_of(b"mg !!!! b Tx\r\n")
    assert error == ProtocolError(b"CLIENT_ERROR bad token in command line format\r\n")
    [error] = events_of(b"mg !!!! Tx b\r\n")
    assert error == ProtocolError(b"CLIENT_ERROR error decoding key\r\n")
