"""What a run got wrong, counted directly, and the report that puts it next to the
linearizability verdicts.

Theory of operation: some anomalies need no search, only the history and `final`, a read of
every key taken after the faults healed:
- lost writes: keys named `fresh:...` are written by exactly one set and never overwritten or
  deleted, so an acknowledged fresh set whose key does not finally hold its value was lost;
- dirty reads: an OK read of a fresh key that returned a value the key does not finally hold
  saw a write that was later lost;
- phantom reads (any key): an OK get or gets returned a value no op could have produced: none
  wrote it (a FAIL op does not count), no acknowledged incr returned it, and it is not within
  the INFO increments' reach of a value that was.
`check` adds the per-key linearizability verdicts and times the whole.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .history import History, Op, Outcome
from .linearizability import DEFAULT_BUDGET, KeyVerdict, Verdict, check_linearizability

FRESH_PREFIX = "fresh:"
SHOWN_EXAMPLES = 5


@dataclass
class Report:
    """The counts of one run; `ok` when nothing went wrong (UNKNOWN keys are not errors)."""

    outcomes: dict[Outcome, int]
    acknowledged_writes: int
    lost: int
    dirty_reads: int
    phantom_reads: int
    keys_checked: int
    violations: list[KeyVerdict]
    unknown_keys: list[str]
    checker_seconds: float
    verdicts: dict[str, KeyVerdict] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # a few of the ops counted above

    @property
    def ok(self) -> bool:
        return not (self.lost or self.dirty_reads or self.phantom_reads or self.violations)

    def lines(self) -> list[str]:
        counts = ", ".join(f"{self.outcomes.get(o, 0)} {o.value}" for o in Outcome)
        lines = [
            f"ops: {counts}; acknowledged writes: {self.acknowledged_writes}",
            f"lost writes: {self.lost}; dirty reads: {self.dirty_reads}; "
            f"phantom reads: {self.phantom_reads}",
            f"keys checked: {self.keys_checked}; not linearizable: {len(self.violations)}; "
            f"undecided (budget): {len(self.unknown_keys)}; "
            f"checker time: {self.checker_seconds:.2f} s",
            *self.examples,
        ]
        for verdict in self.violations:
            lines.append(f"key {verdict.key!r} is not linearizable:")
            lines += [f"  {line}" for line in verdict.explanation.splitlines()]
        for key in self.unknown_keys:
            lines.append(f"key {key!r} is undecided: {self.verdicts[key].explanation.splitlines()[0]}")
        lines.append("verdict: " + ("OK" if self.ok else "ANOMALIES FOUND"))
        return lines


def check(history: Iterable[Op], final: Mapping[str, int | None],
          initial: Mapping[str, int | None] | None = None,
          budget: int = DEFAULT_BUDGET) -> Report:
    """Count the direct anomalies and check every key for linearizability."""
    started = time.monotonic()
    history = History(history)
    lost = lost_writes(history, final)
    dirty = dirty_reads(history, final)
    phantoms = phantom_reads(history, initial or {})
    verdicts = check_linearizability(history, initial, budget)
    examples = [f"  {label}: {op.describe()}"
                for label, ops in (("lost", lost), ("dirty read", dirty), ("phantom read", phantoms))
                for op in ops[:SHOWN_EXAMPLES]]
    return Report(
        outcomes=dict(history.outcome_counts()),
        acknowledged_writes=sum(1 for op in history if is_acknowledged_write(op)),
        lost=len(lost),
        dirty_reads=len(dirty),
        phantom_reads=len(phantoms),
        keys_checked=len(verdicts),
        violations=[v for v in verdicts.values() if v.verdict is Verdict.VIOLATION],
        unknown_keys=[key for key, v in verdicts.items() if v.verdict is Verdict.UNKNOWN],
        checker_seconds=time.monotonic() - started,
        verdicts=verdicts,
        examples=examples,
    )


def is_acknowledged_write(op: Op) -> bool:
    """An OK set, a cas that STORED, an incr that found the item, a delete that DELETED."""
    if op.outcome is not Outcome.OK:
        return False
    return (op.kind == "set" or (op.kind == "cas" and op.result == "STORED")
            or (op.kind == "incr" and op.result is not None)
            or (op.kind == "delete" and op.result is True))


def lost_writes(history: Iterable[Op], final: Mapping[str, int | None]) -> list[Op]:
    """Acknowledged fresh sets whose key does not finally hold their value (a key missing
    from `final` was not read, so it is not judged)."""
    return [op for op in history
            if op.key.startswith(FRESH_PREFIX) and op.kind == "set"
            and op.outcome is Outcome.OK and op.key in final and final[op.key] != op.value]


def dirty_reads(history: Iterable[Op], final: Mapping[str, int | None]) -> list[Op]:
    """OK reads of a fresh key that returned a value the key does not finally hold."""
    return [op for op in history
            if op.key.startswith(FRESH_PREFIX) and op.outcome is Outcome.OK
            and op.key in final and (value := read_value(op)) is not None
            and final[op.key] != value]


def phantom_reads(history: Iterable[Op], initial: Mapping[str, int | None]) -> list[Op]:
    """OK reads that returned a value no op (nor the initial state) could have produced."""
    produced: dict[str, set[int]] = {}
    reach: dict[str, int] = {}  # how far INFO increments could carry a produced value
    reads: list[Op] = []
    for key, value in initial.items():
        if value is not None:
            produced.setdefault(key, set()).add(value)
    for op in history:
        if op.outcome is Outcome.FAIL:
            continue
        values = produced.setdefault(op.key, set())
        writes = op.kind == "set" or (
            op.kind == "cas" and (op.outcome is Outcome.INFO or op.result == "STORED"))
        if writes:
            values.add(_int(op.value))
        elif op.kind == "incr" and op.outcome is Outcome.INFO:
            reach[op.key] = reach.get(op.key, 0) + _int(op.value)
        elif op.kind == "incr" and isinstance(op.result, int):
            values.add(op.result)
        elif op.outcome is Outcome.OK and read_value(op) is not None:
            reads.append(op)
    phantoms = []
    ordered = {key: sorted(values) for key, values in produced.items()}
    for op in reads:
        value = _int(read_value(op))
        candidates = ordered.get(op.key, [])
        # the largest produced value at or below the read: within reach, or a phantom
        below = bisect.bisect_right(candidates, value)
        if below == 0 or value - candidates[below - 1] > reach.get(op.key, 0):
            phantoms.append(op)
    return phantoms


def read_value(op: Op) -> int | None:
    """The value a get or gets returned; None for a miss or another kind."""
    if op.kind == "get" and isinstance(op.result, int):
        return op.result
    if op.kind == "gets" and isinstance(op.result, tuple | list) and op.result:
        value = op.result[0]
        return value if isinstance(value, int) else None
    return None


def _int(value: object) -> int:
    if not isinstance(value, int):
        raise ValueError(f"expected an int, got {value!r}")
    return value
