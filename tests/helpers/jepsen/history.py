"""A Jepsen-style history: what each client sent, when, and what came back.

Theory of operation: a client records one `Op` per request, with the monotonic time it was
sent (`invoke`), the time its answer arrived (`complete`) and what that answer means for the
checker (`Outcome`): OK (the server answered), FAIL (certainly not applied) or INFO (unknown:
a timeout or a dropped connection, so the write may have taken effect at any later time, or
never). A `History` is the list of those ops in any order; the checkers sort what they need.

A run is kept as JSON lines (`RecordedRun.save`) so that a failing run can be re-checked
later: one op per line, then one `{"final": {...}}` line holding the read of every key taken
after the faults healed (and, if the run began from known values, one `{"initial": {...}}`).
"""

from __future__ import annotations

import enum
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = frozenset({"set", "get", "gets", "cas", "incr", "delete"})
READ_KINDS = frozenset({"get", "gets"})
CAS_REPLIES = frozenset({"STORED", "EXISTS", "NOT_FOUND"})


class Outcome(enum.Enum):
    """What the answer to an op tells the checker about its effect."""

    OK = "ok"  # the server answered
    FAIL = "fail"  # certainly not applied (refused before applying, connection refused)
    INFO = "info"  # indeterminate (timeout, reset, SERVER_ERROR after sending)


@dataclass(frozen=True, slots=True)
class Op:
    """One request of one client: sent at `invoke`, answered at `complete` (None for INFO)."""

    process: int  # the client that ran it (one op at a time per process)
    kind: str  # "set" | "get" | "gets" | "cas" | "incr" | "delete"
    key: str
    invoke: float  # monotonic seconds when sent
    complete: float | None  # when the answer arrived; None for INFO (treated as +infinity)
    outcome: Outcome
    value: int | None = None  # set/cas: the value written; incr: the delta
    token: int | None = None  # cas: the cas unique it sent (obtained by an earlier gets)
    # get: int | None (miss); gets: tuple[int, int] (value, token) | None;
    # cas: "STORED" | "EXISTS" | "NOT_FOUND"; incr: int (new value) | None (NOT_FOUND);
    # delete: True (DELETED) | False (NOT_FOUND); set: None
    result: object = None

    def describe(self) -> str:
        """One line for a report: who, what, the answer and the real-time interval."""
        arguments = ""
        if self.kind == "cas":
            arguments = f" token={self.token} value={self.value}"
        elif self.kind == "incr":
            arguments = f" +{self.value}"
        elif self.kind == "set":
            arguments = f" {self.value}"
        answer = "" if self.outcome is not Outcome.OK or self.kind == "set" else f" -> {self.result!r}"
        end = "inf" if self.complete is None else f"{self.complete:.6f}"
        return (f"p{self.process} {self.kind} {self.key!r}{arguments}{answer} "
                f"{self.outcome.value} [{self.invoke:.6f}, {end}]")


class History(list[Op]):
    """The ops of a run, in any order, with the views the checkers and reports need."""

    def by_key(self) -> dict[str, list[Op]]:
        """Each key's ops, in the order they appear in the history."""
        keys: dict[str, list[Op]] = {}
        for op in self:
            keys.setdefault(op.key, []).append(op)
        return keys

    def outcome_counts(self) -> Counter[Outcome]:
        return Counter(op.outcome for op in self)

    def kind_counts(self) -> Counter[tuple[str, Outcome]]:
        """How many ops of each (kind, outcome), e.g. ("cas", Outcome.INFO)."""
        return Counter((op.kind, op.outcome) for op in self)

    def save(self, path: Path | str, final: Mapping[str, int | None] | None = None) -> None:
        RecordedRun(self, dict(final or {})).save(path)


@dataclass
class RecordedRun:
    """A history with the reads that bracket it, as saved to and loaded from JSON lines."""

    history: History
    final: dict[str, int | None] = field(default_factory=dict)
    initial: dict[str, int | None] = field(default_factory=dict)

    def save(self, path: Path | str) -> None:
        with Path(path).open("w", encoding="utf-8") as out:
            if self.initial:
                out.write(json.dumps({"initial": self.initial}) + "\n")
            for op in self.history:
                out.write(json.dumps(op_to_json(op)) + "\n")
            out.write(json.dumps({"final": self.final}) + "\n")

    @classmethod
    def load(cls, path: Path | str) -> RecordedRun:
        run = cls(History())
        with Path(path).open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                try:
                    if "final" in record:
                        run.final.update(record["final"])
                    elif "initial" in record:
                        run.initial.update(record["initial"])
                    else:
                        run.history.append(op_from_json(record))
                except (KeyError, TypeError, ValueError) as error:
                    raise ValueError(f"{path}:{number}: not an op: {error}") from error
        return run


def op_to_json(op: Op) -> dict[str, Any]:
    return {
        "process": op.process, "kind": op.kind, "key": op.key, "invoke": op.invoke,
        "complete": op.complete, "outcome": op.outcome.value, "value": op.value,
        "token": op.token, "result": op.result,
    }


def op_from_json(record: Mapping[str, Any]) -> Op:
    """The inverse of `op_to_json`; JSON has no tuples, so a gets result comes back as one."""
    kind = record["kind"]
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    result = record.get("result")
    if kind == "gets" and isinstance(result, list):
        result = tuple(result)
    complete = record.get("complete")
    return Op(
        process=int(record["process"]), kind=kind, key=str(record["key"]),
        invoke=float(record["invoke"]), complete=None if complete is None else float(complete),
        outcome=Outcome(record["outcome"]), value=record.get("value"),
        token=record.get("token"), result=result,
    )

