"""Sentinel values of the codec.

A one-member Enum (PEP 484's sentinel) rather than h11's sentinel classes: it prints its
name as h11's do, and mypy narrows `event is NEED_DATA` for it, which it cannot for a class
object or an instance of a private class (both needed `type: ignore` at every caller).
"""

from __future__ import annotations

import enum
from typing import Final, Literal


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return self.value


NEED_DATA: Final = _NeedData.NEED_DATA
"""What a parser's `next_event()` returns when it needs more bytes for the next event."""

NeedData = Literal[_NeedData.NEED_DATA]
