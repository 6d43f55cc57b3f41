"""Binary-protocol commands: `BinaryRequest` frames in, binary reply frames out, against the
same Store, counters, write fence and replication recorder as the text commands.

The codec (protocol.binary_parser) has already checked each frame's lengths and answered
bad ones; here the replies are chosen as memcached 1.6.18's proto_bin.c chooses them.
Quiet opcodes omit a success (and a get's miss) but never an error. A cluster refusal
(not the leader, lease expired, too few in-sync replicas) is status 0x86 "temporary
failure" with the refusal's reason as its body: memcached has no such status of its own,
and the proxy recognises the same reasons (protocol.write_refusals) in either protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from memring.backend.stats import StatsReport
from memring.backend.store import Outcome, Store
from memring.protocol.binary_frames import (
    NO_CREATE,
    QUIET_TWIN,
    BinaryRequest,
    BinaryResponse,
    Opcode,
    Status,
    counter_value,
    encode_response,
    error_response,
    is_quiet,
    parse_arithmetic_extras,
    parse_expiration_extras,
    parse_storage_extras,
    value_response,
)
from memring.protocol.write_refusals import refusal_reason


class Refusals(Protocol):
    """The write fence (backend.commands.WriteFence), as far as binary commands ask it."""

    def refusal(self) -> bytes | None: ...

    def read_refusal(self) -> bytes | None: ...


class Recorder(Protocol):
    def committed(self, key: bytes | None) -> None: ...


class CommandContext(Protocol):
    """What the binary commands share with the text ones (backend.commands.CommandHandler):
    the store, the stats, the fence and the replication recorder, set there."""

    @property
    def store(self) -> Store: ...

    @property
    def stats(self) -> StatsReport: ...

    @property
    def fence(self) -> Refusals | None: ...

    @property
    def recorder(self) -> Recorder | None: ...

    def role_stats(self) -> list[tuple[str, object]]: ...

_WRITES = frozenset({Opcode.SET, Opcode.ADD, Opcode.REPLACE, Opcode.APPEND, Opcode.PREPEND,
                     Opcode.DELETE, Opcode.INCREMENT, Opcode.DECREMENT, Opcode.FLUSH,
                     Opcode.TOUCH, Opcode.GAT, Opcode.GATK})
_READS = frozenset({Opcode.GET, Opcode.GETK})
_STORE_COMMAND = {Opcode.SET: b"set", Opcode.ADD: b"add", Opcode.REPLACE: b"replace",
                  Opcode.APPEND: b"append", Opcode.PREPEND: b"prepend"}
# complete_update_bin: a store that did not happen answers by what was asked.
_NOT_STORED_STATUS = {b"add": Status.KEY_EEXISTS, b"replace": Status.KEY_ENOENT}


class BinaryCommands:
    """Executes binary request frames; one per server, shared by its binary connections."""

    def __init__(self, handler: CommandContext) -> None:
        self.handler = handler
        self.store: Store = handler.store
        self._commands: dict[int, Callable[[BinaryRequest, int, list[bytes]], None]] = {
            Opcode.GET: self.get, Opcode.GETK: self.get,
            Opcode.TOUCH: self.touch, Opcode.GAT: self.touch, Opcode.GATK: self.touch,
            Opcode.SET: self.storage, Opcode.ADD: self.storage, Opcode.REPLACE: self.storage,
            Opcode.APPEND: self.storage, Opcode.PREPEND: self.storage,
            Opcode.DELETE: self.delete,
            Opcode.INCREMENT: self.arithmetic, Opcode.DECREMENT: self.arithmetic,
            Opcode.FLUSH: self.flush, Opcode.NOOP: self.noop, Opcode.VERSION: self.version,
            Opcode.STAT: self.stat, Opcode.QUIT: self.quit,
        }

    def handle(self, request: BinaryRequest, out: list[bytes]) -> bool:
        """Append the reply frames of one request to `out`; True if the connection closes
        once they are written (quit)."""
        command = QUIET_TWIN.get(request.opcode, request.opcode)
        fence = self.handler.fence
        if fence is not None and (command in _WRITES or command in _READS):
            line = fence.refusal() if command in _WRITES else fence.read_refusal()
            if line is not None:
                out.append(error_response(request.opcode, Status.TEMPORARY_FAILURE,
                                          request.opaque, refusal_reason(line)))
                return False
        recorder = self.handler.recorder
        if recorder is None or command not in _WRITES:
            self._commands[command](request, command, out)
            return command == Opcode.QUIT
        try:
            self._commands[command](request, command, out)
        finally:
            recorder.committed(None)  # the store told replication what changed
        return False

    # -- replies -------------------------------------------------------------------------

    @staticmethod
    def _success(request: BinaryRequest, out: list[bytes], *, extras: bytes = b"",
                 key: bytes = b"", value: bytes = b"", cas: int = 0) -> None:
        if not is_quiet(request.opcode):
            out.append(encode_response(BinaryResponse(
                request.opcode, Status.SUCCESS, key, extras, value, request.opaque, cas)))

    @staticmethod
    def _error(request: BinaryRequest, status: Status, out: list[bytes]) -> None:
        out.append(error_response(request.opcode, status, request.opaque))

    def _miss(self, request: BinaryRequest, command: int, out: list[bytes]) -> None:
        """A get's miss: nothing when quiet; getk/gatk return the key as status 1's body."""
        if is_quiet(request.opcode):
            return
        if command in (Opcode.GETK, Opcode.GATK):
            out.append(encode_response(BinaryResponse(
                request.opcode, Status.KEY_ENOENT, request.key, b"", b"", request.opaque)))
        else:
            self._error(request, Status.KEY_ENOENT, out)

    # -- retrieval -----------------------------------------------------------------------

    def get(self, request: BinaryRequest, command: int, out: list[bytes]) -> None:
        hit = self.store.fetch(request.key)
        if hit is None:
            self._miss(request, command, out)
            return
        flags, cas, value = hit
        # a hit is sent even by getq/getkq: quiet hides only the miss
        out.append(value_response(request.opcode, request.key if command == Opcode.GETK
                                  else b"", flags, value, request.opaque, cas))

    def touch(self, request: BinaryRequest, command: int, out: list[bytes]) -> None:
        item = self.store.get_and_touch(request.key, parse_expiration_extras(request.extras))
        if item is None:
            self._miss(request, command, out)
            return
        out.append(value_response(
            request.opcode, request.key if command == Opcode.GATK else b"", item.flags,
            b"" if command == Opcode.TOUCH else item.value, request.opaque, item.cas))

    # -- storage -------------------------------------------------------------------------

    def storage(self, request: BinaryRequest, command: int, out: list[bytes]) -> None:
        store = self.store
        key = request.key
        name = _STORE_COMMAND[Opcode(command)]
        if name in (b"append", b"prepend"):
            flags = exptime = 0
            current = store.peek(key)
            if request.cas and current is not None and current.cas != request.cas:
                store.stats.cmd_set += 1  # counted as the store it was (set_cmds)
                self._error(request, Status.KEY_EEXISTS, out)
                return
        else:
            flags, exptime = parse_storage_extras(request.extras)
            if request.cas:
                name = b"cas"  # any set/add/replace with a CAS is a cas (process_bin_update)
        outcome = store.store(name, key, request.value, flags, exptime, request.cas)
        if outcome is Outcome.STORED:
            item = store.item(key)
            self._success(request, out, cas=item.cas if item is not None else 0)
        elif outcome is Outcome.EXISTS:
            self._error(request, Status.KEY_EEXISTS, out)
        elif outcome is Outcome.NOT_FOUND:
            self._error(request, Status.KEY_ENOENT, out)
        else:
            self._error(request, _NOT_STORED_STATUS.get(name, Status.NOT_STORED), out)

    def delete(self, request: BinaryRequest, command: int, out: list[bytes]) -> None:
        store = self.store
        if request.cas:
            current = store.peek(request.key)
            if current is not None and current.cas != request.cas:
                self._error(request, Status.KEY_EEXISTS, out)
                return
        if store.delete(request.key):
            self._success(request, out)
        else:
            self._error(request, Status.KEY_ENOENT, out)

    def arithmetic(self, request: BinaryRequest, command: int, out: list[bytes]) -> None:
        delta, initial, exptime = parse_arithmetic_extras(request.extras)
        store = self.store
        key = request.key
        incr = command == Opcode.INCREMENT
        create = exptime != NO_CREATE
        outcome, value, item = store.arithmetic(key, incr, delta, request.cas,
                                                count_miss=not create)
        if outcome is Outcome.NOT_FOUND and create:
            # a miss creates the counter at `initial` (an add that is not a set command)
            item = store.add_counter(key, initial, exptime)
            if item is None:
                self._error(request, Status.NOT_STORED, out)
                return
            outcome, value = Outcome.STORED, initial
        if outcome is Outcome.STORED:
            self._success(request, out, value=counter_value(value),
                          cas=item.cas if item is not None else 0)
        elif outcome is Outcome.NON_NUMERIC:
            self._error(request, Status.DELTA_BADVAL, out)
        elif outcome is Outcome.EXISTS:
            self._error(request, Status.KEY_EEXISTS, out)
        else:
            self._error(request, Status.KEY_ENOENT, out)

    # -- administration --------------------------------------------------------------------

    def flush(self, request: BinaryRequest, command: int, out: list[bytes]) -> None:
        self.store.flush_all(parse_expiration_extras(request.extras) if request.extras else 0)
        self._success(request, out)

    def noop(self, request: BinaryRequest, command: int, out: list[bytes]) -> None:
        self._success(request, out)

    def version(self, request: BinaryRequest, command: int, out: list[bytes]) -> None:
        self._success(request, out, value=self.handler.stats.settings.version.encode())

    def quit(self, request: BinaryRequest, command: int, out: list[bytes]) -> None:
        self._success(request, out)  # then the connection closes (handle says so)

    def stat(self, request: BinaryRequest, command: int, out: list[bytes]) -> None:
        """One STAT frame per statistic (key = name, value = value), then an empty one
        (proto_bin.c process_bin_stat); the subgroups are prefix matches there."""
        report = self.handler.stats
        group = request.key
        pairs: list[tuple[str, object]]
        if not group:
            pairs = [*report.general(), *self.handler.role_stats()]
        elif group.startswith(b"reset"):
            report.reset()
            pairs = []
        elif group.startswith(b"settings"):
            pairs = report.settings_stats()
        elif group.startswith(b"detail"):
            option = group[6:]
            if option.startswith(b" dump"):
                pairs = [("detailed", report.prefixes.dump().decode())]
            elif option.startswith(b" on") or option.startswith(b" off"):
                report.prefixes.enabled = option.startswith(b" on")
                pairs = []
            else:
                self._error(request, Status.KEY_ENOENT, out)
                return
        else:
            found = report.group(group)
            if found is None:
                self._error(request, Status.KEY_ENOENT, out)
                return
            pairs = found
        opaque = request.opaque
        out.extend(encode_response(BinaryResponse(
            Opcode.STAT, Status.SUCCESS, name.encode(), b"", str(value).encode(), opaque))
            for name, value in pairs)
        out.append(encode_response(BinaryResponse(Opcode.STAT, opaque=opaque)))
