"""The differential corpus: raw byte sequences a client sends, replayed against both servers.

Every case is pure client input; the expected reply is whatever memcached 1.6.18 answers, so a
case never states an expectation. The harness (test_differential.py) sends the chunks of a case
with a short pause between them (so splits really reach the server as separate reads), then a
`mn` sentinel, and compares the replies byte for byte.

Left out on purpose, because 1.6.18 differs from the protocol.txt memring follows:
- meta flags newer than 1.6.18 (ms `N` in append mode, `E`, md `x`, mg `C`; ms `s` is
  taken and not echoed, as 1.6.18 does: case ms_s_is_ignored);
- places where memring deliberately rejects what 1.6.18 accepts: flags 4294967296 (stored
  as 0), an exptime or a length past 2**31-1 (1.6.18 keeps the low 32 bits, so 4294967297
  becomes 1). Those are covered by tests that assert memring's answer instead
  (tests/unit/test_request_parser.py, tests/integration/test_bad_input.py).
memring does follow 1.6.18 where later releases changed a reply (`me` printing exp= with
the sign flipped and the decoded key; `mg k t v N30` on a miss reporting t-1, as 1.6.18
applies N's TTL only when its loop reaches `N`), since 1.6.18 is the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    """One client conversation.

    `sentinel=False` is for cases where the server closes the connection or where a trailing
    `mn` would be swallowed; the harness then reads until close or until the line goes idle.
    `timing=True` lets TTL-like reply fields (`t`, `exp=`, `la=`) differ by one second, since the
    two servers tick their clocks independently. `mn_lines` counts the `MN` replies the case
    itself produces, so the harness does not mistake one of them for the sentinel's.
    `proxy=False` is for commands the proxy answers for itself by design (not a difference
    of the codec): the case then runs against servers only.
    """

    name: str
    chunks: tuple[bytes, ...]
    sentinel: bool = True
    timing: bool = False
    pause: float = 0.02
    mn_lines: int = 0
    proxy: bool = True

    @property
    def sent(self) -> bytes:
        return b"".join(self.chunks)


def case(name: str, *chunks: bytes, sentinel: bool = True, timing: bool = False,
         pause: float = 0.02, mn_lines: int = 0, proxy: bool = True) -> Case:
    return Case(name, tuple(chunks), sentinel, timing, pause, mn_lines, proxy)


def set_(key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> bytes:
    """A well-formed `set` line plus its data block, for case set-up."""
    return b"set %s %d %d %d\r\n%s\r\n" % (key, flags, exptime, len(value), value)


K250 = b"k" * 250
K251 = b"k" * 251
# Largest value memcached -I 1m (64-bit, CAS on) stores under a 1-byte key with flags 0.
MAX_VALUE_1B_KEY = 1048516
TOO_MANY_TOKENS = b"set k 0 0 1 " + b" ".join(b"t%d" % i for i in range(25)) + b"\r\nx\r\n"
MANY_KEYS = b" ".join(b"k%d" % (i % 7) for i in range(600))

CASES: list[Case] = [
    # --- storage commands -------------------------------------------------------------------
    case("set_get", set_(b"k", b"hello") + b"get k\r\n"),
    case("set_overwrite", set_(b"k", b"one") + set_(b"k", b"second", 7) + b"get k\r\n"),
    case("set_flags_max_u32", set_(b"k", b"x", 4294967295) + b"get k\r\n"),
    case("set_flags_negative", b"set k -1 0 1\r\nx\r\nget k\r\n"),
    case("set_flags_non_numeric", b"set k abc 0 1\r\nx\r\nget k\r\n"),
    case("set_exptime_non_numeric", b"set k 0 abc 1\r\nx\r\nget k\r\n"),
    case("set_length_non_numeric", b"set k 0 0 abc\r\nx\r\nget k\r\n"),
    case("set_negative_length", b"set k 0 0 -1\r\nx\r\nget k\r\n"),
    case("set_zero_length", b"set k 0 0 0\r\n\r\nget k\r\n"),
    case("set_value_with_crlf_and_nul", set_(b"k", b"a\r\nb\x00c\r\n\xff") + b"get k\r\n"),
    case("set_noreply", b"set k 0 0 1 noreply\r\nx\r\nget k\r\n"),
    case("set_extra_token_ignored", b"set k 0 0 1 foo\r\nx\r\nget k\r\n"),
    case("set_too_few_tokens", b"set k 0 0\r\nx\r\nget k\r\n"),
    case("set_too_many_tokens", b"set k 0 0 1 noreply extra\r\nx\r\nget k\r\n"),
    case("set_over_24_tokens", TOO_MANY_TOKENS + b"get k\r\n"),
    case("set_negative_exptime_expires", set_(b"k", b"x", exptime=-1) + b"get k\r\n"),
    case("set_absolute_exptime_in_past", set_(b"k", b"x", exptime=2592001) + b"get k\r\n"),
    case("set_max_relative_exptime", set_(b"k", b"x", exptime=2592000) + b"get k\r\n"),
    case("set_key_with_control_chars", set_(b"a\x01b\x7f", b"v") + b"get a\x01b\x7f\r\n"),
    case("set_key_250_accepted", set_(K250, b"v") + b"get " + K250 + b"\r\n"),
    case("set_key_251_rejected", set_(K251, b"v") + b"get k\r\n"),
    case("set_largest_value", b"set k 0 0 %d\r\n" % MAX_VALUE_1B_KEY + b"v" * MAX_VALUE_1B_KEY
         + b"\r\nmg k s\r\n"),
    case("set_object_too_large_swallows", b"set k 0 0 %d\r\n" % (MAX_VALUE_1B_KEY + 1)
         + b"v" * (MAX_VALUE_1B_KEY + 1) + b"\r\nget k\r\n"),
    case("set_too_large_deletes_old", set_(b"k", b"old") + b"set k 0 0 2000000\r\n"
         + b"v" * 2000000 + b"\r\nget k\r\n"),
    case("set_too_large_noreply", b"set k 0 0 2000000 noreply\r\n" + b"v" * 2000000
         + b"\r\nget k\r\n"),
    case("bad_data_chunk_longer", b"set k 0 0 3\r\nabcde\r\nget k\r\n"),
    case("bad_data_chunk_shorter", b"set k 0 0 5\r\nabc\r\nget k\r\nget k\r\n"),
    case("bad_data_chunk_lf_only", b"set k 0 0 1\nx\nget k\nget k\r\n"),
    case("add_new_and_existing", b"add k 0 0 1\r\na\r\nadd k 0 0 1\r\nb\r\nget k\r\n"),
    case("add_noreply", b"add k 0 0 1 noreply\r\na\r\nadd k 0 0 1 noreply\r\nb\r\nget k\r\n"),
    case("replace_missing_and_existing",
         b"replace k 0 0 1\r\na\r\n" + set_(b"k", b"x") + b"replace k 5 0 1\r\nb\r\nget k\r\n"),
    case("append_prepend_keep_flags",
         set_(b"k", b"mid", 42) + b"append k 0 0 4\r\n-end\r\nprepend k 9 0 6\r\nstart-\r\n"
         b"gets k\r\n"),
    case("append_prepend_missing", b"append k 0 0 1\r\na\r\nprepend k 0 0 1\r\nb\r\nget k\r\n"),
    case("append_keeps_ttl", set_(b"k", b"x", exptime=1000) + b"append k 0 0 1\r\ny\r\n"
         b"prepend k 0 5 1\r\nw\r\nmg k t v f\r\n", timing=True),
    case("append_bad_format", set_(b"k", b"a") + b"append k 0 0 z\r\nb\r\nget k\r\n"),
    case("cas_flow",
         set_(b"k", b"a") + b"gets k\r\ncas k 0 0 1 1\r\nb\r\ncas k 0 0 1 1\r\nc\r\n"
         b"cas nokey 0 0 1 1\r\nd\r\ngets k\r\n"),
    case("cas_noreply", set_(b"k", b"a") + b"cas k 0 0 1 99 noreply\r\nb\r\n"
         b"cas k 0 0 1 1 noreply\r\nc\r\ngets k\r\n"),
    case("cas_missing_unique", b"cas k 0 0 1\r\nx\r\n"),
    case("cas_non_numeric_unique", b"cas k 0 0 1 abc\r\nx\r\n"),
    case("cas_unique_zero", set_(b"k", b"a") + b"cas k 0 0 1 0\r\nb\r\ngets k\r\n"),
    case("cas_numbering_after_delete", set_(b"k", b"a") + b"delete k\r\n" + set_(b"j", b"b")
         + set_(b"k", b"c") + b"gets k j\r\n"),
    case("cas_after_flush", set_(b"k", b"a") + b"flush_all\r\ncas k 0 0 1 1\r\nb\r\n"),
    # --- retrieval ----------------------------------------------------------------------------
    case("get_miss", b"get nope\r\n"),
    case("get_no_key", b"get\r\n"),
    case("get_multi_misses_duplicates",
         set_(b"a", b"1") + set_(b"b", b"22", 3) + b"get a x b a\r\n"),
    case("gets_multi", set_(b"a", b"1") + set_(b"b", b"2") + b"gets b a zz\r\n"),
    # the first touch of an expiring gat ends the item: its repeats are misses (fuzzer)
    case("gat_expiring_repeated_key", set_(b"a", b"1") + set_(b"b", b"2") + b"gat -1 a b a b\r\n"
         + set_(b"a", b"1") + b"gats 1000000000 a a\r\n" + set_(b"a", b"1") + b"gat 100 a a\r\n"
         b"gat -1 a a\r\n"),
    # Two sends: memcached drops every reply still queued when a multiget hits a long key,
    # including an earlier STORED of the same read batch, an artefact nobody should copy.
    case("get_key_251_in_multiget", set_(b"a", b"1"), b"get a " + K251 + b" a\r\n"),
    case("get_many_keys_long_line", b"".join(set_(b"k%d" % i, b"%d" % i) for i in range(7))
         + b"get " + MANY_KEYS + b"\r\n"),
    case("gat_and_gats", set_(b"k", b"x", 3) + b"gat 100 k\r\ngats 100 k nope\r\ngets k\r\n"),
    case("gets_no_key", b"gets\r\ngets \r\n"),
    case("gat_updates_ttl", set_(b"k", b"x") + b"gat 1000 k\r\nmg k t\r\n", timing=True),
    case("gat_miss", b"gat 100 nope\r\ngats 100 nope\r\n"),
    case("gat_no_key", b"gat 10\r\ngat\r\n"),
    case("gat_invalid_exptime", set_(b"k", b"x") + b"gat abc k\r\ngats abc k\r\n"),
    case("gat_negative_expires", set_(b"k", b"x") + b"gat -1 k\r\nget k\r\n"),
    # --- delete / touch -------------------------------------------------------------------------
    case("delete_hit_miss", set_(b"k", b"x") + b"delete k\r\ndelete k\r\nget k\r\n"),
    case("delete_noreply", set_(b"k", b"x") + b"delete k noreply\r\ndelete k noreply\r\n"),
    case("delete_zero_time", set_(b"k", b"x") + b"delete k 0\r\ndelete k 0 noreply\r\n"),
    case("delete_nonzero_time", set_(b"k", b"x") + b"delete k 5\r\nget k\r\n"),
    case("delete_bad_token_count", b"delete\r\ndelete k 0 noreply x\r\n"),
    case("touch_hit_miss", set_(b"k", b"x") + b"touch k 100\r\ntouch nope 100\r\nget k\r\n"),
    case("touch_noreply", set_(b"k", b"x") + b"touch k 100 noreply\r\ntouch nope 1 noreply\r\n"),
    case("touch_invalid_exptime", set_(b"k", b"x") + b"touch k abc\r\ntouch k abc noreply\r\n"),
    case("touch_negative_expires", set_(b"k", b"x") + b"touch k -1\r\nget k\r\n"),
    case("touch_updates_ttl", set_(b"k", b"x") + b"touch k 1000\r\nmg k t c\r\n",
         timing=True),
    case("touch_bad_token_count", b"touch k\r\ntouch k 1 noreply x\r\n"),
    # --- incr / decr ----------------------------------------------------------------------------
    case("incr_decr_basic", set_(b"n", b"10") + b"incr n 5\r\ndecr n 3\r\nget n\r\n"),
    case("incr_miss", b"incr n 1\r\ndecr n 1\r\n"),
    case("incr_wraps_u64", set_(b"n", b"18446744073709551615") + b"incr n 2\r\ngets n\r\n"),
    case("decr_floors_zero", set_(b"n", b"5") + b"decr n 10\r\nget n\r\n"),
    case("decr_shrinks_with_padding", set_(b"n", b"100") + b"decr n 1\r\nget n\r\nincr n 1\r\n"
         b"get n\r\n"),
    case("incr_non_numeric_value", set_(b"n", b"abc") + b"incr n 1\r\ndecr n 1\r\n"),
    case("incr_empty_value", b"set n 0 0 0\r\n\r\nincr n 1\r\n"),
    case("incr_value_over_u64", set_(b"n", b"18446744073709551616") + b"incr n 1\r\n"),
    case("incr_leading_spaces_value", set_(b"n", b"  7") + b"incr n 1\r\nget n\r\n"),
    case("incr_invalid_delta", set_(b"n", b"1") + b"incr n abc\r\ndecr n -1\r\n"
         b"incr n 18446744073709551616\r\nincr n 18446744073709551615\r\n"),
    case("incr_noreply_suppresses_errors", set_(b"n", b"abc") + b"incr n 1 noreply\r\n"
         b"incr n x noreply\r\nincr nope 1 noreply\r\nget n\r\n"),
    case("incr_bad_token_count", b"incr n\r\ndecr\r\nincr n 1 noreply x\r\n"),
    case("incr_grows_length", set_(b"n", b"9") + b"incr n 1\r\nget n\r\ndecr n 10\r\n"
         b"get n\r\n"),
    case("incr_noreply_hit", set_(b"n", b"1") + b"incr n 4 noreply\r\ndecr n 1 noreply\r\n"
         b"get n\r\n"),
    case("incr_keeps_flags", set_(b"n", b"1", 77) + b"incr n 1\r\ngets n\r\n"),
    # --- misc text commands ---------------------------------------------------------------------
    case("flush_all_variants", set_(b"k", b"x") + b"flush_all\r\nget k\r\n" + set_(b"k", b"y")
         + b"flush_all 0\r\nflush_all -1\r\nflush_all noreply\r\nget k\r\n"),
    case("flush_all_delayed_keeps_items", set_(b"k", b"x") + b"flush_all 100\r\nget k\r\n"),
    case("flush_all_then_add", set_(b"k", b"x") + b"flush_all\r\nadd k 0 0 1\r\ny\r\n"
         b"gets k\r\n"),
    case("flush_all_errors", b"flush_all abc\r\nflush_all abc noreply\r\n"
         b"flush_all 1 noreply x\r\n"),
    case("version", b"version\r\n"),
    # found by the fuzzer: x is md's flag only; ma's modes are upper case in 1.6.18
    case("meta_x_flag_and_lowercase_mode", b"mg k x\r\nma k x\r\nma k Mi\r\nma k Md\r\n"
         b"ma k MI N0 J1\r\n"),
    # memcached tokenizes a line up to its first NUL (found by the fuzzer)
    case("nul_ends_the_command_line", b"add k 0 \x00 6\r\nagcjjg\r\nincr k\x00 x\r\n"
         b"get a\x00b\r\n\x00abc\r\n"),
    # the rest of issue 14's NUL shapes: every command family reads up to the NUL, and the
    # data block after a line cut short is read as a line of its own
    case("nul_in_each_command_family", b"incr \x00 1\r\nversion\x00junk\r\n" + set_(b"a", b"x")
         + b"get a\x00b\r\nset a\x00b 0 0 1\r\nx\r\nmg a\x00 v\r\nmg a v\x00 k\r\n"
         b"ms a\x00 1\r\nx\r\nms a 1\x00 T0\r\nx\r\ndelete a\x00 0\r\nmn\x00x\r\n"
         b"set a 0 0 1 \x00noreply\r\ny\r\nget a \x00\r\n\x00get a\r\nm\x00g a\r\n",
         mn_lines=1),
    case("verbosity", b"verbosity 1\r\nverbosity 1 noreply\r\nverbosity\r\nverbosity abc\r\n"
         b"verbosity 1 2 3\r\n"),
    # through the proxy cache_memlimit is refused (tests/integration/test_proxy_admin.py)
    case("cache_memlimit", b"cache_memlimit 100\r\ncache_memlimit 100 noreply\r\n"
         b"cache_memlimit 1\r\ncache_memlimit abc\r\ncache_memlimit\r\n", proxy=False),
    case("shutdown_not_enabled", b"shutdown\r\nshutdown graceful\r\nget k\r\n"),
    # without -Z / --tls: noreply does not hide the error (tests/compat/test_tls_memcached.py)
    case("refresh_certs_without_tls", b"refresh_certs\r\nrefresh_certs noreply\r\n"
         b"refresh_certs a b\r\nget k\r\n"),
    case("stats_reset_and_unknown", b"stats reset\r\nstats nonsense\r\n"),
    case("quit_closes", set_(b"k", b"x") + b"quit\r\nget k\r\n", sentinel=False),
    case("quit_alone", b"quit\r\n", sentinel=False),
    case("mn_alone", b"mn\r\nmn\r\n", mn_lines=2),
    # --- framing and errors -------------------------------------------------------------------
    case("unknown_command", b"bogus\r\nbogus k 1 2\r\n"),
    case("empty_lines", b"\r\n\n\r\n"),
    case("uppercase_command", b"GET k\r\nSet k 0 0 1\r\nx\r\n"),
    case("bare_lf_lines", b"set k 0 0 1\nx\r\nget k\ngets k\n"),
    case("multiple_spaces", b"set  k   0 0  1 \r\nx\r\nget   k  \r\n   get k\r\n"),
    case("tab_in_key", b"set a\tb 0 0 1\r\nx\r\nget a\tb\r\nget a\r\n"),
    case("noreply_suppresses_errors", b"set k abc 0 1 noreply\r\nx\r\n"
         b"touch k abc noreply\r\nget k\r\n"),
    case("http_request_closes", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", sentinel=False),
    # no command is shorter than two bytes: ERROR comes before the HTTP/ check
    case("one_byte_command_with_http_token", b"m HTTP/1.0\r\nx HTTP/1.1\r\nget k\r\n"),
    case("http_token_after_unknown_command_closes", b"FOO bar HTTP/1.0\r\nget k\r\n",
         sentinel=False),
    # 1.6.18 checks for "HTTP/" only on lines it does not otherwise understand.
    case("http_token_after_known_command", set_(b"k", b"x") + b"get k HTTP/1.0\r\n"
         b"set k 0 0 1 HTTP/1.1\r\ny\r\nget k\r\n"),
    case("long_line_without_newline_closes", b"set " + b"a" * 3000, sentinel=False),
    case("long_line_split_closes", b"set k 0 0 1 " + b"a" * 1500, b"b" * 1500, sentinel=False),
    case("key_too_long_get", b"get " + K251 + b"\r\n"),
    case("key_250_everywhere", set_(K250, b"5") + b"incr " + K250 + b" 1\r\ntouch " + K250
         + b" 10\r\nmg " + K250 + b" v\r\ndelete " + K250 + b"\r\n"),
    case("key_251_everywhere", b"incr " + K251 + b" 1\r\ntouch " + K251 + b" 10\r\ndelete "
         + K251 + b"\r\nmg " + K251 + b" v\r\nmd " + K251 + b"\r\n"),
    # --- pipelining and split sends -------------------------------------------------------------
    case("pipeline_many", b"".join(set_(b"p%d" % i, b"v%d" % i) for i in range(40))
         + b"".join(b"get p%d\r\n" % i for i in range(40)) + b"delete p3\r\nincr p1 1\r\n"),
    case("split_in_data_block", b"set k 0 0 10\r\nhello", b"world\r\nget k\r\n"),
    case("split_in_crlf", b"set k 0 0 1\r", b"\nx\r", b"\nget k\r", b"\n"),
    case("split_in_command", b"ge", b"t k\r\nse", b"t k 0 0 1\r\n", b"x\r\n", b"get k\r\n"),
    case("split_in_length_token", b"set k 0 0 1", b"2\r\nhello world!\r\nget k\r\n"),
    case("split_byte_by_byte", *(bytes([b]) for b in b"set k 0 0 2\r\nab\r\nget k\r\n"),
         pause=0.005),
    case("split_meta_data_block", b"ms k 4 T0\r\nda", b"ta\r", b"\nmg k v\r\n"),
    case("split_bad_data_chunk", b"set k 0 0 2\r\nabc", b"\r\nget k\r\n"),
    # replies memcached holds while it waits for a data block (issue 14, protocol.write_points):
    # all since its last write, sent with the block's, never if the client closes first
    case("held_while_a_block_is_incomplete", set_(b"a", b"x") + b"mg a v\r\nset b 0 0 10\r\nabc",
         sentinel=False),
    case("held_replies_go_with_the_block", b"mg a\r\nset b 0 0 10\r\nabc", b"def",
         b"ghij\r\nmg b v\r\nset c 0 0 3\r\nab", b"c\r\n"),
    case("get_and_mn_write_before_a_block", set_(b"a", b"x") + b"get a\r\nmg a v\r\nmn\r\n"
         b"mg b\r\nset b 0 0 10\r\nabc", sentinel=False),
    case("every_20_requests_write_before_a_block", b"".join(b"mg x%d\r\n" % i for i in range(45))
         + b"set b 0 0 10\r\nabc", sentinel=False),
    case("twenty_requests_held_before_a_block", b"".join(b"mg x%d\r\n" % i for i in range(20))
         + b"set b 0 0 10\r\nabc", sentinel=False),
    case("held_while_a_block_is_swallowed", b"mg a\r\nms a 2000000 T0\r\nxx\r\nmg b\r\n"
         b"set a 0 0 2000000\r\nxx", sentinel=False),
    # once it has waited, memcached reads only the rest of the block: it writes right after
    case("block_finished_later_writes_at_once", b"mg a\r\nset b 0 0 3\r\nab",
         b"c\r\nfoo HTTP/1.1\r\n", sentinel=False),
    case("swallow_finished_later_writes_at_once", b"mg a\r\nset b 0 0 2000000\r\nab",
         b"c" * 1999998 + b"\r\nmg b\r\n" + b"v" * 3000, sentinel=False),
    # ... and so it does after a block too big for its 16 KiB read buffer (fuzzer)
    case("big_block_writes_after_it", b"mg a\r\nadd k 1 86400 20000\r\n" + b"v" * 20000
         + b"\r\nmg b\r\nms k 20000 T0\r\n" + b"v" * 20000 + b"\r\nmg c\r\n" + b"v" * 3000,
         sentinel=False),
    case("bad_line_close_drops_unwritten", b"mg a\r\nget a\r\nmg b\r\nfoo HTTP/1.1\r\n",
         sentinel=False),
    case("long_line_close_drops_unwritten", b"mg a\r\nmg b\r\n" + b"v" * 3000, sentinel=False),
    # --- meta: mg ----------------------------------------------------------------------------
    case("mg_miss", b"mg nope v\r\nmg nope\r\nmg nope k O123 v\r\n"),
    case("mg_miss_quiet", b"mg nope v q\r\nmg nope k q Oab\r\n"),
    case("mg_hit_flags", set_(b"k", b"hello", 12) + b"mg k v f s c k Oxyz\r\nmg k\r\n"
         b"mg k s v\r\nmg k q v\r\n"),
    case("mg_ttl_unlimited", set_(b"k", b"x") + b"mg k t v\r\n"),
    case("mg_ttl_set", set_(b"k", b"x", exptime=1000) + b"mg k t\r\n", timing=True),
    case("mg_touch_T", set_(b"k", b"x") + b"mg k T1000 t\r\nmg k t c\r\n", timing=True),
    case("mg_hit_before_flags", set_(b"k", b"x") + b"mg k h l\r\nmg k h l\r\nmg k h l u\r\n"),
    case("mg_base64_key", set_(b"foo", b"bar") + b"mg Zm9v b k v\r\nmg Zm9v b\r\nmg Zm9v k\r\n"),
    case("mg_base64_bad", b"mg !!!! b v\r\nmg Zm9 b v\r\n"),
    case("mg_duplicate_flag", set_(b"k", b"x") + b"mg k v v\r\nmg k O1 O2\r\n"),
    case("mg_invalid_flag", set_(b"k", b"x") + b"mg k !\r\nmg k v 9\r\n"),
    case("mg_bad_token", set_(b"k", b"x") + b"mg k Tabc\r\nmg k N\r\nmg k R-\r\n"),
    case("mg_opaque_too_long", set_(b"k", b"x") + b"mg k O" + b"o" * 33 + b"\r\nmg k O"
         + b"o" * 32 + b"\r\n"),
    case("mg_flags_missing_tokens", b"mg k b c f h k l O q s t u v N R T\r\n"),
    case("mg_many_valid_flags", b"mg k c f h k l O q s u v P L N100 R1 T100 t\r\n",
         timing=True),
    case("mg_options_too_long", b"mg k " + b" ".join([b"P"] * 19) + b"\r\nmg k "
         + b" ".join([b"P"] * 30) + b"\r\n"),
    case("meta_options_too_long_ms_md_ma", b"ms k 1 " + b" ".join([b"P"] * 30) + b"\r\nx\r\n"
         b"md k " + b" ".join([b"P"] * 30) + b"\r\nma k " + b" ".join([b"P"] * 30) + b"\r\n"),
    case("mg_quiet_hit_shows", set_(b"k", b"x") + b"mg k q k v\r\nmg k q\r\n"),
    case("mg_base64_key_with_space", b"ms YSBi 1 b\r\nz\r\nmg YSBi b k v\r\nget a\r\n"),
    case("mg_no_key", b"mg\r\n"),
    case("mg_vivify_N", b"mg k N30 s c v\r\nmg k s c v\r\nmg k N30 v\r\n"),
    case("mg_recache_R", set_(b"k", b"x", exptime=100) + b"mg k R30 v c\r\nmg k R200 v c\r\n"
         b"mg k R200 v c\r\n"),
    case("mg_gets_like_after_mutations", set_(b"k", b"1") + b"incr k 1\r\nappend k 0 0 1\r\n0\r\n"
         b"mg k c v\r\n"),
    # --- meta: ms ----------------------------------------------------------------------------
    case("ms_basic", b"ms k 2\r\nhi\r\nmg k v f c\r\n"),
    case("ms_flags_and_ttl", b"ms k 2 F33 T0 c k Oop\r\nhi\r\nmg k v f t\r\n"),
    case("ms_quiet", b"ms k 2 q\r\nhi\r\nms k 2 q ME\r\nho\r\nmg k v\r\n"),
    case("ms_mode_add", b"ms k 1 ME\r\na\r\nms k 1 ME\r\nb\r\nmg k v\r\n"),
    case("ms_mode_replace", b"ms k 1 MR\r\na\r\nms k 1\r\nb\r\nms k 1 MR\r\nc\r\nmg k v\r\n"),
    case("ms_mode_append_prepend", b"ms k 1 MA\r\na\r\nms k 1\r\nb\r\nms k 1 MA\r\nc\r\n"
         b"ms k 1 MP\r\nd\r\nmg k v\r\n"),
    case("ms_mode_set_lower", b"ms k 1 Ms\r\na\r\nms k 1 Ma\r\nb\r\nmg k v\r\n"),
    case("ms_mode_invalid", b"ms k 1 MX\r\na\r\nms k 1 MSS\r\nb\r\nmg k v\r\n"),
    case("ms_cas_compare", b"ms k 1\r\na\r\nms k 1 C1 c\r\nb\r\nms k 1 C1\r\nc\r\n"
         b"ms nope 1 C1\r\nd\r\nmg k v c\r\n"),
    case("ms_invalidate", b"ms k 1 c\r\na\r\nms k 1 c\r\nb\r\nms k 1 C99 I c\r\nx\r\n"
         b"ms k 1 C1 I c\r\ny\r\nmg k v c\r\nmg k v c\r\n"),
    case("ms_cas_zero", b"ms k 1 c\r\na\r\nms k 1 C0\r\nb\r\nms k 1 C0 I\r\nc\r\n"
         b"mg k v c\r\n"),
    case("ms_base64_key", b"ms Zm9v 1 b k\r\nx\r\nget foo\r\nmg Zm9v b k v\r\n"),
    case("ms_invalid_flag_swallows", b"ms k 2 !\r\nhi\r\nms k 2 F1 F2\r\nho\r\nmg k v\r\n"),
    case("ms_bad_datalen", b"ms k abc\r\nhi\r\nms k\r\nms k -1\r\nhi\r\n"),
    case("ms_bad_data_chunk", b"ms k 2\r\nhello\r\nmg k v\r\n"),
    case("ms_bad_flag_token", b"ms k 1 Fabc\r\nx\r\nms k 1 Tabc\r\ny\r\nmg k v\r\n"),
    case("ms_too_large", b"ms k 2000000 T0\r\n" + b"v" * 2000000 + b"\r\nmg k v\r\n"),
    case("ms_key_too_long", b"ms " + K251 + b" 1\r\nx\r\n"),
    case("ms_opaque_too_long", b"ms k 1 O" + b"o" * 40 + b"\r\nx\r\nmg k v\r\n"),
    case("ms_zero_length", b"ms k 0\r\n\r\nmg k v s\r\n"),
    case("ms_quiet_shows_failures", set_(b"k", b"x") + b"ms k 1 q C99\r\ny\r\nms k 1 q MR\r\n"
         b"z\r\nms j 1 q MR\r\nz\r\nmg k v\r\n"),
    case("ms_ttl", b"ms k 1 T1000\r\nx\r\nmg k t v\r\n", timing=True),
    # 1.6.18 takes s on ms and prints nothing for it (s<size> came in 1.6.20)
    case("ms_s_is_ignored", b"ms b 2 s\r\nxx\r\nms b 2 s k c O1\r\nxx\r\nmg b s v\r\n"),
    # --- meta: md ----------------------------------------------------------------------------
    case("md_hit_miss", set_(b"k", b"x") + b"md k\r\nmd k\r\nmd k q\r\nmd k k Oz\r\n"),
    case("md_quiet_hit", set_(b"k", b"x") + b"md k q\r\nmg k v\r\n"),
    case("md_cas_compare", set_(b"k", b"x") + b"md k C5\r\nmd k C1\r\nmg k\r\n"),
    case("md_invalidate", set_(b"k", b"x") + b"md k I T30\r\nmg k v c\r\nmg k v c\r\n"
         b"ms k 1 C2 c\r\ny\r\nmg k v c\r\n"),
    case("md_flag_errors", set_(b"k", b"x") + b"md k !\r\nmd k q q\r\nmd k Cabc\r\nmg k v\r\n"),
    case("md_base64", set_(b"foo", b"x") + b"md Zm9v b k\r\nmg foo v\r\n"),
    # --- meta: ma ----------------------------------------------------------------------------
    case("ma_miss", b"ma n\r\nma n q\r\nma n k Ox v\r\n"),
    case("ma_basic", set_(b"n", b"10") + b"ma n\r\nma n v\r\nma n D5 v\r\nma n MD v\r\n"
         b"ma n M- D100 v\r\nma n M+ t c v k\r\n"),
    case("ma_autovivify", b"ma n N0 J13 v\r\nma n N0 J13 v\r\nma m N0 v\r\nmg n v f t\r\n"),
    case("ma_non_numeric", set_(b"n", b"abc") + b"ma n\r\nma n q\r\n"),
    case("ma_wrap", set_(b"n", b"18446744073709551615") + b"ma n D2 v\r\n"),
    case("ma_cas_compare", set_(b"n", b"1") + b"ma n C9 v\r\nma n C1 v c\r\n"),
    case("ma_flag_errors", set_(b"n", b"1") + b"ma n Dabc\r\nma n MX\r\nma n v v\r\nma n !\r\n"
         b"ma n Jabc N0\r\n"),
    case("ma_quiet_hides_hd", set_(b"n", b"1") + b"ma n q\r\nma n q v\r\nmg n v\r\n"),
    case("ma_ttl_update", set_(b"n", b"1") + b"ma n T1000 t v\r\nmg n t\r\n", timing=True),
    # memcached's base64_decode skips bytes outside the alphabet (found by the fuzzer), and
    # the b flag's error is one of the scan's: a later flag's error replaces it
    case("meta_base64_key_skips_other_bytes", b"ms Y\x01Q== 1 b k\r\nx\r\nmg YQ== b k v\r\n"
         b"mg Z\x01jA= b t s\r\nmg Y\x01Q== b v\r\nmd Y\x01Q== b q\r\nmg YQ== b v\r\n"),
    case("meta_base64_error_takes_its_place", b"mg !!!! b Tx\r\nmg !!!! Tx b\r\n"
         b"mg YQ== Tx b\r\nmg A=== b\r\nmg AA=A b k\r\nma !!!! b Dx\r\nma !!!! Dx b\r\n"
         b"ms !!!! 2 Mz b\r\nxx\r\nms YQ== 2 b Mz\r\nxx\r\nms !!!! 2 b Mzz\r\nxx\r\n"),
    case("me_binary_key_shown_in_base64", b"ms YQ== 1 b\r\nx\r\nme a\r\nme YQ== b\r\nms a 1\r\ny\r\n"
         b"me a\r\n", timing=True),
    # a bad ms/ma mode is reported before an opaque token over 32 bytes (process_mset_command)
    case("meta_bad_mode_before_long_opaque", b"ms k 2 O" + b"o" * 40 + b" Mz\r\nxx\r\n"
         b"ms k 2 MI O" + b"o" * 40 + b"\r\nxx\r\nma k Mz O" + b"o" * 40 + b"\r\n"
         b"ma k O" + b"o" * 40 + b" MS\r\nms k 2 O" + b"o" * 40 + b" MS\r\nxx\r\nmg k v\r\n"),
    # --- meta: me / mn ------------------------------------------------------------------------
    case("me_hit_miss", set_(b"k", b"hello") + b"me k\r\nget k\r\nme k\r\nme nope\r\n",
         timing=True),
    case("me_no_exptime", set_(b"k", b"x") + b"me k\r\n", timing=True),
    case("me_errors", b"me\r\nme " + K251 + b"\r\n"),
    case("me_with_ttl", set_(b"k", b"hello", exptime=1000) + b"me k\r\n", timing=True),
    case("me_base64_key", b"me k b\r\nme Zm9v b\r\n" + set_(b"foo", b"x") + b"me Zm9v b\r\n"),
    case("mg_t_before_N_on_miss", b"mg k t v N30\r\nmg k t v\r\n", timing=True),
    case("mn_mixed", b"mg a v q\r\nmg b v q\r\nmn\r\n", mn_lines=1),
]
