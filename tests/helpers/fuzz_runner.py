"""The fuzzer's runners: differential (each case against memcached) and isolation (victims).

Theory of operation. `FuzzServers` starts, once per run, the oracle (memcached 1.6.18), a
memring backend, a proxy over memcached shards and a proxy over memring backends. Every
case goes out on a fresh connection per server, followed by a sentinel `mg <prefix>~ O<nonce>`
whose `EN O<nonce>` reply marks the end of the case's replies; the oracle runs first (a few
ms), and if its sentinel was swallowed (a data block longer than the rest of the case) the
targets are read until they fall silent too. Keys carry a per-case prefix, so no case sees
another's items; the hostile shared keys a case named are deleted afterwards.

`DifferentialRunner` compares each target's reply (and whether it closed) with memcached's.
A difference is explained, in order, by the reply normalizers, by removing the commands a
documented difference names (and re-running on a clean prefix), by removing the commands of
an open bug; otherwise it is undocumented: shrunk by dropping commands while it persists,
and kept with the exact bytes. `IsolationRunner` pipelines victims' own sets and gets through
the proxies while hostile cases run on other connections, and checks every victim reply.

Every socket has a deadline; every loop is bounded by a case count and `max_seconds`.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import random
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from tests.helpers import fuzz_differences as known
from tests.helpers import servers
from tests.helpers.fuzz_grammar import (
    DEFAULT_OPTIONS,
    FuzzCase,
    GrammarOptions,
    case_prefix,
    generate_case,
    regenerate,
)

CASE_DEADLINE = 2.5  # whole reply of one case on one server (the proxy's timeout is 1 s)
STUCK_IDLE = 0.1  # memcached's silence that ends a case whose sentinel a data block swallowed
TARGET_IDLE = 0.25  # the same for a target (Python, on a busy machine: more margin)
MAX_REPLY = 8 << 20
MEMORY_MB = "1024"  # large enough that no run evicts, so no server's eviction order matters
RESYNC_EVERY = 1000  # cases between flush_all on every server (differential mode)
SHRINK_RUNS = 40  # re-runs one shrink may spend
SHRINK_SECONDS = 4.0  # ... and time (a case that desynchronises a proxy costs 1 s a run)


@dataclass(frozen=True)
class Outcome:
    """What one server did with one case."""

    reply: bytes
    closed: bool
    finished: bool  # the sentinel came back
    timed_out: bool

    def key(self) -> tuple[bytes, bool, bool]:
        return self.reply, self.closed, self.timed_out


def sentinel(prefix: bytes) -> tuple[bytes, bytes]:
    """(request, reply) of the sentinel that ends a case under `prefix`."""
    nonce = prefix[1:-1]
    return b"mg " + prefix + b"~ O" + nonce + b"\r\n", b"EN O" + nonce + b"\r\n"


class _Conversation:
    def __init__(self, address: tuple[str, int], payload: bytes, until: bytes) -> None:
        self.sock = socket.create_connection(address, timeout=2.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.out = memoryview(payload)
        self.reply = bytearray()
        self.until = until
        self.closed = self.finished = False
        self.last_input = time.monotonic()

    @property
    def done(self) -> bool:
        return self.closed or self.finished

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        self.last_input = time.monotonic()
        self.reply += data
        if len(self.reply) > MAX_REPLY:
            self.closed = True
        elif self.reply.endswith(self.until):
            self.finished = True

    def on_writable(self) -> None:
        try:
            sent = self.sock.send(self.out[:1 << 18])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.out = memoryview(b"")  # the peer closed; what it said is still readable
            return
        self.out = self.out[sent:]


def converse_all(addresses: list[tuple[str, int]], payload: bytes, until: bytes,
                 idle: float | None, deadline: float = CASE_DEADLINE) -> list[Outcome]:
    """Send `payload` to every address at once; read until `until`, close, `idle` s of
    silence after everything was sent, or the deadline."""
    conversations = [_Conversation(a, payload, until) for a in addresses]
    end = time.monotonic() + deadline
    timed_out = [False] * len(conversations)
    with selectors.DefaultSelector() as selector:
        try:
            for c in conversations:
                selector.register(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
            while True:
                now = time.monotonic()
                live = [c for c in conversations if not c.done]
                if not live:
                    break
                if now >= end:
                    for i, c in enumerate(conversations):
                        timed_out[i] = not c.done
                    break
                if idle is not None and all(not c.out and now - c.last_input >= idle
                                            for c in live):
                    break
                for c in live:
                    events = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0)
                    selector.modify(c.sock, events, c)
                for selected, events in selector.select(min(0.05, end - now)):
                    c = selected.data
                    if events & selectors.EVENT_READ:
                        c.on_readable()
                    if events & selectors.EVENT_WRITE and c.out:
                        c.on_writable()
                    if c.done:
                        selector.unregister(c.sock)
        finally:
            for c in conversations:
                c.sock.close()
    outcomes = []
    for c, late in zip(conversations, timed_out, strict=True):
        reply = bytes(c.reply)
        if c.finished:
            reply = reply[: -len(until)]
        outcomes.append(Outcome(reply, c.closed, c.finished, late))
    return outcomes


# --- servers ----------------------------------------------------------------------------------

class FuzzServers:
    """The oracle and the three targets, started once per run; `targets` maps name -> server."""

    def __init__(self, shards: int = 2) -> None:
        self.shards = shards
        self._stack = contextlib.ExitStack()
        self.oracle: servers.RunningServer | None = None
        self.targets: dict[str, servers.RunningServer] = {}
        self._control: dict[str, socket.socket] = {}

    def __enter__(self) -> FuzzServers:
        stack = self._stack
        try:
            self.oracle = stack.enter_context(servers.memcached("-m", MEMORY_MB))
            self.targets[known.BACKEND] = stack.enter_context(
                servers.backend("--memory", MEMORY_MB))
            # Proxy over memcached: shards of two replicas (writes fan out, the leader answers).
            mc = [[stack.enter_context(servers.memcached("-m", MEMORY_MB)) for _ in range(2)]
                  for _ in range(self.shards)]
            self.targets[known.PROXY_MEMCACHED] = stack.enter_context(servers.proxy(mc))
            be = [[stack.enter_context(servers.backend("--memory", MEMORY_MB))]
                  for _ in range(self.shards)]
            self.targets[known.PROXY_BACKEND] = stack.enter_context(servers.proxy(be))
        except BaseException:
            stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for sock in self._control.values():
            sock.close()
        self._stack.close()

    def address(self, name: str) -> tuple[str, int]:
        if name == "memcached":
            assert self.oracle is not None
            return self.oracle.address
        return self.targets[name].address

    def all_names(self) -> list[str]:
        return ["memcached", *self.targets]

    def control(self, name: str, payload: bytes, until: bytes = b"MN\r\n") -> bytes:
        """Send `payload` plus `mn` on a kept connection; reconnect once if it broke."""
        for attempt in range(2):
            sock = self._control.get(name)
            try:
                if sock is None:
                    sock = socket.create_connection(self.address(name), timeout=CASE_DEADLINE)
                    self._control[name] = sock
                sock.sendall(payload + b"mn\r\n")
                reply = bytearray()
                end = time.monotonic() + CASE_DEADLINE
                while not reply.endswith(until):
                    sock.settimeout(max(0.01, end - time.monotonic()))
                    chunk = sock.recv(1 << 16)
                    if not chunk:
                        raise ConnectionError("control connection closed")
                    reply += chunk
                return bytes(reply)
            except OSError:
                self._control.pop(name, None)
                if sock is not None:
                    sock.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def forget(self, names: list[str], keys: list[bytes]) -> None:
        """Delete shared keys on the named servers (base64 keys: any byte is fine)."""
        if keys:
            payload = b"".join(b"md %s b\r\n" % base64.b64encode(k) for k in keys)
            for name in names:
                self.control(name, payload)

    def flush(self, names: list[str]) -> None:
        for name in names:
            self.control(name, b"flush_all\r\nverbosity 0\r\n")


# --- differential mode -----------------------------------------------------------------------

@dataclass
class Finding:
    """An undocumented difference, shrunk: the bytes that reproduce it and both replies."""

    target: str
    original: str  # the case it came from
    case: FuzzCase
    memcached: Outcome
    got: Outcome

    def describe(self) -> str:
        sent = self.case.sent
        shown = sent if len(sent) <= 1500 else sent[:800] + b"..." + sent[-400:]
        return (f"[{self.target}] {self.original} -> minimal: {self.case.name}\n"
                f"  sent:      {shown!r}\n"
                f"  memcached: {self.memcached.reply[:1500]!r} closed={self.memcached.closed}"
                f" timed_out={self.memcached.timed_out}\n"
                f"  {self.target}: {self.got.reply[:1500]!r} closed={self.got.closed}"
                f" timed_out={self.got.timed_out}")


@dataclass
class DifferentialReport:
    cases: int = 0
    seconds: float = 0.0
    compared: int = 0  # (case, target) pairs
    documented: collections.Counter[tuple[str, str]] = field(
        default_factory=collections.Counter)
    open_bugs: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    open_bug_examples: dict[str, Finding] = field(default_factory=dict)
    reported: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    reported_examples: dict[str, Finding] = field(default_factory=dict)
    undocumented: list[Finding] = field(default_factory=list)
    undocumented_count: collections.Counter[str] = field(default_factory=collections.Counter)
    flaky: list[Finding] = field(default_factory=list)  # differed once, not on a re-run
    oracle_timeouts: int = 0

    def lines(self) -> list[str]:
        rate = self.cases / self.seconds if self.seconds else 0.0
        out = [f"differential: {self.cases} cases in {self.seconds:.1f} s ({rate:.0f} cases/s), "
               f"{self.compared} target replies compared, "
               f"{self.oracle_timeouts} oracle timeouts"]
        out.append("  documented differences by cause (target: count):")
        for name in sorted({n for _, n in self.documented}):
            per = ", ".join(f"{t}: {c}" for (t, n), c in sorted(self.documented.items())
                            if n == name)
            out.append(f"    {name}: {per}")
        out.append("  open bugs (issue 11) by cause:")
        for name in sorted({n for _, n in self.open_bugs}):
            per = ", ".join(f"{t}: {c}" for (t, n), c in sorted(self.open_bugs.items())
                            if n == name)
            out.append(f"    {name}: {per}")
        out.append("  undocumented, reported for triage, by cause:")
        for name in sorted({n for _, n in self.reported}):
            per = ", ".join(f"{t}: {c}" for (t, n), c in sorted(self.reported.items())
                            if n == name)
            out.append(f"    {name}: {per}")
        total = sum(self.undocumented_count.values())
        out.append(f"  undocumented, new: {total} "
                   f"{dict(self.undocumented_count) if total else ''}; "
                   f"{len(self.undocumented)} distinct minimal reproductions kept")
        out.append(f"  differences that did not reproduce on a re-run: {len(self.flaky)}")
        return out

    @property
    def failures(self) -> int:
        """Differences no documented cause or open bug explains."""
        return sum(self.reported.values()) + sum(self.undocumented_count.values()) + \
            len(self.flaky)


Progress = Callable[[int, float], None]


class DifferentialRunner:
    """Runs cases against the oracle and every target; see the module docstring."""

    def __init__(self, fuzz: FuzzServers, seed: int, options: GrammarOptions = DEFAULT_OPTIONS,
                 max_findings: int = 20,
                 drop: tuple[known.CommandDifference, ...] = ()) -> None:
        self.fuzz = fuzz
        self.seed = seed
        self.options = options
        self.max_findings = max_findings
        self.drop = drop  # commands these name are left out of every case
        self.report = DifferentialReport()
        self._prefixes = 0
        self._seen: set[tuple[str, tuple[bytes, ...]]] = set()

    def fresh_prefix(self) -> bytes:
        self._prefixes += 1
        return case_prefix((self.seed * 7919 + self._prefixes) & 0xFFFFFFFF)

    def run(self, cases: int, max_seconds: float, progress: Progress | None = None
            ) -> DifferentialReport:
        start = time.monotonic()
        report = self.report
        for index in range(cases):
            elapsed = time.monotonic() - start
            if elapsed > max_seconds:
                break
            if index and index % RESYNC_EVERY == 0:
                self.fuzz.flush(self.fuzz.all_names())
            case = generate_case(self.seed, index, self.fresh_prefix(), self.options)
            if self.drop:
                case = self.without(case, self.drop)
            self.check(case)
            report.cases += 1
            if progress is not None:
                progress(report.cases, elapsed)
        report.seconds = time.monotonic() - start
        return report

    def without(self, case: FuzzCase, table: tuple[known.CommandDifference, ...]) -> FuzzCase:
        drop: set[int] = set()
        for target in known.TARGETS:
            for positions in known.matching(table, target, case.commands).values():
                drop.update(positions)
        if not drop:
            return case
        return self.reprefix(case, frozenset(drop))

    def reprefix(self, case: FuzzCase, drop_here: frozenset[int]) -> FuzzCase:
        """`case` on a fresh prefix, also without its commands at positions `drop_here`."""
        kept = [i for i in range(len(case.commands) + len(case.dropped))
                if i not in case.dropped]
        dropped = case.dropped | {kept[i] for i in drop_here}
        return regenerate(case, self.fresh_prefix(), frozenset(dropped), self.options)

    # --- running one case ----------------------------------------------------------------------

    def execute(self, case: FuzzCase, names: list[str]) -> dict[str, Outcome]:
        """Run `case` on memcached first, then on `names` at once; clean its shared keys."""
        request, reply = sentinel(case.prefix)
        payload = case.sent + request
        oracle = converse_all([self.fuzz.address("memcached")], payload, reply, STUCK_IDLE)[0]
        # If memcached answered the sentinel (or closed), wait for the targets to do so too;
        # if a data block swallowed it, the targets' replies end when they fall silent.
        idle = None if oracle.finished or oracle.closed else TARGET_IDLE
        results = converse_all([self.fuzz.address(n) for n in names], payload, reply, idle)
        self.fuzz.forget(["memcached", *names], case.shared_keys())
        return {"memcached": oracle, **dict(zip(names, results, strict=True))}

    def check(self, case: FuzzCase) -> None:
        outcomes = self.execute(case, list(self.fuzz.targets))
        oracle = outcomes["memcached"]
        if oracle.timed_out:
            self.report.oracle_timeouts += 1
            return
        for target in self.fuzz.targets:
            self.report.compared += 1
            if outcomes[target].key() != oracle.key():
                self.classify(case, target, oracle, outcomes[target])

    def normalized_equal(self, target: str, oracle: Outcome, got: Outcome) -> list[str] | None:
        """The normalizers that make the replies equal (possibly none), or None."""
        if got.key() == oracle.key():
            return []
        if (got.closed, got.timed_out) != (oracle.closed, oracle.timed_out):
            return None
        want, have = oracle.reply, got.reply
        used = []
        for normalizer in known.REPLY_NORMALIZERS:
            if target in normalizer.targets:
                w, h = normalizer.normalize(want), normalizer.normalize(have)
                if (w, h) != (want, have):
                    used.append(normalizer.name)
                want, have = w, h
        timed = known.reconcile_timing(want, have)
        if timed != have:
            used.append(known.TIMING[0])
        return used if timed == want else None

    def differs(self, case: FuzzCase, target: str) -> tuple[Outcome, Outcome] | None:
        """Run `case` (already on a fresh prefix) on memcached and `target`; the two outcomes
        if they differ beyond the normalizers."""
        outcomes = self.execute(case, [target])
        oracle, got = outcomes["memcached"], outcomes[target]
        if oracle.timed_out or self.normalized_equal(target, oracle, got) is not None:
            return None
        return oracle, got

    def classify(self, case: FuzzCase, target: str, oracle: Outcome, got: Outcome) -> None:
        report = self.report
        used = self.normalized_equal(target, oracle, got)
        if used is not None:
            for name in used:
                report.documented[target, name] += 1
            return
        current = case
        tables = ((known.COMMAND_DIFFERENCES, report.documented, None),
                  (known.OPEN_BUGS, report.open_bugs, report.open_bug_examples),
                  (known.REPORTED, report.reported, report.reported_examples))
        for table, counter, examples in tables:
            found = known.matching(table, target, current.commands)
            if not found:
                continue
            drop = frozenset(p for positions in found.values() for p in positions)
            reduced = self.reprefix(current, drop)
            still = self.differs(reduced, target)
            if still is None:
                for name in found:
                    counter[target, name] += 1
                    if examples is not None and name not in examples:
                        examples[name] = Finding(target, case.name, current, oracle, got)
                return
            current, (oracle, got) = reduced, still
        self.undocumented(case, current, target, oracle, got)

    def undocumented(self, original: FuzzCase, case: FuzzCase, target: str, oracle: Outcome,
                     got: Outcome) -> None:
        report = self.report
        if len(report.undocumented) >= self.max_findings:
            report.undocumented_count[target] += 1  # counted, no longer re-run or shrunk
            return
        again = self.differs(self.reprefix(case, frozenset()), target)
        if again is None:
            if len(report.flaky) < self.max_findings:
                report.flaky.append(Finding(target, original.name, case, oracle, got))
            return
        report.undocumented_count[target] += 1
        if len(report.undocumented) >= self.max_findings:
            return
        minimal, oracle, got = self.shrink(case, target, *again)
        signature = (target, minimal.commands)
        if signature in self._seen:
            return
        self._seen.add(signature)
        report.undocumented.append(Finding(target, original.name, minimal, oracle, got))

    def shrink(self, case: FuzzCase, target: str, oracle: Outcome, got: Outcome
               ) -> tuple[FuzzCase, Outcome, Outcome]:
        """Drop commands one at a time (last first) while the difference persists."""
        budget = SHRINK_RUNS
        end = time.monotonic() + SHRINK_SECONDS
        position = len(case.commands) - 1
        while position >= 0 and budget > 0 and len(case.commands) > 1 and \
                time.monotonic() < end:
            budget -= 1
            trial = self.reprefix(case, frozenset({position}))
            still = self.differs(trial, target)
            if still is not None:
                case, (oracle, got) = trial, still
            position -= 1
        return case, oracle, got


# --- isolation mode --------------------------------------------------------------------------

@dataclass
class IsolationReport:
    cases: int = 0
    seconds: float = 0.0
    victim_batches: int = 0
    victim_replies: int = 0  # victim commands whose reply was checked
    wrong: int = 0  # batches whose replies were not exactly the expected ones
    misattributed: int = 0  # ... and carried another client's key or value
    examples: list[str] = field(default_factory=list)
    first_wrong_after_case: int | None = None  # hostile cases sent before the first wrong batch
    trigger_cases: list[int] = field(default_factory=list)  # cases with an open bug's command

    def lines(self) -> list[str]:
        rate = self.cases / self.seconds if self.seconds else 0.0
        return [f"isolation: {self.cases} hostile cases in {self.seconds:.1f} s "
                f"({rate:.0f} cases/s); {self.victim_batches} victim batches, "
                f"{self.victim_replies} victim replies checked, {self.wrong} wrong batches, "
                f"{self.misattributed} misattributed replies",
                f"  hostile cases carrying an open bug's command: {len(self.trigger_cases)}"
                + (f"; first wrong victim batch after case {self.first_wrong_after_case}"
                   if self.first_wrong_after_case is not None else "")]


class Victim(threading.Thread):
    """One client pipelining sets and gets of its own keys and checking every reply."""

    def __init__(self, name: str, address: tuple[str, int], seed: int,
                 report: IsolationReport, lock: threading.Lock, stop: threading.Event,
                 cases_sent: Callable[[], int]) -> None:
        super().__init__(name=name, daemon=True)
        self.address = address
        self.rng = random.Random(seed)
        self.report = report
        self.lock = lock
        self.halt = stop
        self.cases_sent = cases_sent
        self.generation = 0
        self.counter = 0
        self.stored: dict[bytes, bytes] = {}
        self.sock: socket.socket | None = None

    def key(self, i: int) -> bytes:
        return b"victim-%s-g%d-%d" % (self.name.encode(), self.generation, i)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=CASE_DEADLINE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def batch(self) -> tuple[bytes, bytes, int]:
        """(requests, the exact replies expected, number of commands)."""
        out, expected = bytearray(), bytearray()
        count = self.rng.randint(1, 6)
        for _ in range(count):
            key = self.key(self.rng.randrange(6))
            if self.rng.random() < 0.45:
                self.counter += 1
                value = b"%s=%d.%d" % (key, self.counter, self.rng.randrange(10**9))
                out += b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value)
                expected += b"STORED\r\n"
                self.stored[key] = value
            else:
                keys = [key] + ([self.key(self.rng.randrange(6))] if self.rng.random() < 0.3
                                else [])
                out += b"get %s\r\n" % b" ".join(keys)
                for k in keys:
                    if k in self.stored:
                        v = self.stored[k]
                        expected += b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(v), v)
                expected += b"END\r\n"
        return bytes(out), bytes(expected), count

    def exchange(self, requests: bytes, expected: bytes) -> bytes:
        if self.sock is None:
            self.sock = self.connect()
        sock = self.sock
        sock.setblocking(False)
        try:  # anything waiting before we ask is a reply that was not ours
            early = sock.recv(1 << 16)
        except BlockingIOError:
            early = b""
        sock.setblocking(True)
        sock.sendall(requests)
        reply = bytearray(early)
        end = time.monotonic() + CASE_DEADLINE
        while len(reply) < len(expected):
            left = end - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                break
            if not chunk:
                break
            reply += chunk
        return bytes(reply)

    def run(self) -> None:
        while not self.halt.is_set():
            requests, expected, count = self.batch()
            try:
                reply = self.exchange(requests, expected)
            except OSError as error:
                reply = b"<socket error %r>" % str(error).encode()
            with self.lock:
                self.report.victim_batches += 1
                self.report.victim_replies += count
            if reply != expected:
                self.record_wrong(requests, expected, reply)
            time.sleep(0.001)  # leave the hostile cases some of the CPU

    def foreign(self, reply: bytes) -> bool:
        """Does `reply` carry what belongs to another client: a reply no set or get gives, a
        key that is not this victim's, or another victim's value?"""
        mine = b"victim-%s-" % self.name.encode()
        if any(m != mine for m in re.findall(rb"victim-[^-\s]+-", reply)):
            return True
        pos = 0
        while pos < len(reply):
            end = reply.find(b"\r\n", pos)
            if end < 0:
                return False
            tokens = reply[pos:end].split(b" ")
            pos = end + 2
            if tokens[0] == b"VALUE" and len(tokens) == 4 and tokens[3].isdigit():
                if not tokens[1].startswith(mine):
                    return True
                pos += int(tokens[3]) + 2
            elif tokens[0] not in (b"STORED", b"END", b"SERVER_ERROR"):
                return True
        return False

    def record_wrong(self, requests: bytes, expected: bytes, reply: bytes) -> None:
        with self.lock:
            report = self.report
            report.wrong += 1
            if self.foreign(reply):
                report.misattributed += 1
            if report.first_wrong_after_case is None:
                report.first_wrong_after_case = self.cases_sent()
            if len(report.examples) < 5:
                report.examples.append(f"victim {self.name}: sent {requests[:300]!r}\n"
                                       f"    expected {expected[:300]!r}\n"
                                       f"    got      {reply[:300]!r}")
        # Start over on a new connection and new keys: the old ones' state is unknown now.
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.generation += 1
        self.stored.clear()


class IsolationRunner:
    """Hostile cases through both proxies while victims check their own replies."""

    runs = 0  # victims of each run get their own key names

    def __init__(self, fuzz: FuzzServers, seed: int, victims_per_proxy: int = 2,
                 drop: tuple[known.CommandDifference, ...] = ()) -> None:
        self.fuzz = fuzz
        self.seed = seed
        self.victims_per_proxy = victims_per_proxy
        self.drop = drop  # commands these name are left out of every hostile case
        IsolationRunner.runs += 1
        self.run_number = IsolationRunner.runs
        self.options = GrammarOptions(flush_all=False)
        self.report = IsolationReport()

    def run(self, cases: int, max_seconds: float, progress: Progress | None = None
            ) -> IsolationReport:
        report = self.report
        lock, stop = threading.Lock(), threading.Event()
        proxies = [n for n in self.fuzz.targets if n in known.PROXIES]
        victims = [Victim(f"{n[6:]}{i}r{self.run_number}", self.fuzz.address(n),
                          self.seed * 100 + j,
                          report, lock, stop, lambda: report.cases)
                   for j, (n, i) in enumerate((n, i) for n in proxies
                                              for i in range(self.victims_per_proxy))]
        differential = DifferentialRunner(self.fuzz, self.seed + 1, self.options)
        start = time.monotonic()
        for victim in victims:
            victim.start()
        try:
            for index in range(cases):
                elapsed = time.monotonic() - start
                if elapsed > max_seconds:
                    break
                case = generate_case(self.seed, index, differential.fresh_prefix(), self.options)
                if self.drop:
                    case = differential.without(case, self.drop)
                if any(known.matching(known.OPEN_BUGS, t, case.commands) for t in proxies):
                    report.trigger_cases.append(index)
                request, reply = sentinel(case.prefix)
                converse_all([self.fuzz.address(n) for n in proxies], case.sent + request,
                             reply, idle=0.5)
                self.fuzz.forget(proxies, case.shared_keys())
                report.cases += 1
                if progress is not None:
                    progress(report.cases, elapsed)
        finally:
            stop.set()
            for victim in victims:
                victim.join(CASE_DEADLINE + 2)
        report.seconds = time.monotonic() - start
        return report


@contextlib.contextmanager
def started(shards: int = 2) -> Iterator[FuzzServers]:
    with FuzzServers(shards) as fuzz:
        yield fuzz
