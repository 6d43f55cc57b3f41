"""Placeholder until the checker branch lands (same API)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.Enum):
    OK = "ok"
    FAIL = "fail"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Op:
    process: int
    kind: str
    key: str
    invoke: float
    complete: float | None
    outcome: Outcome
    value: int | None = None
    token: int | None = None
    result: object = None
