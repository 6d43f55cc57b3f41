"""When a value of one key stops mattering to the linearizability search.

Theory of operation: the search orders a key's ops; at any point, the acknowledged ops whose
answers arrived before the first one not yet ordered are all ordered (their index in
completion order is below the search's `frontier`). A value `x` can still matter only if an
op not yet ordered compares the state with a value `x` could become: a get or gets that read
it, a cas whose token was read with it, an incr whose result minus its delta is it. Increments
are positive, so from `x` the state can only reach values in `[x, x + every delta of the
key]`. Once every op that observes a value in that range is ordered, `x` is interchangeable
with any other such value: the search folds them into one state, `STALE`, which lets it
recognise configurations that differ only by which forgotten version the item holds.

An INFO cas never completes, so the value its token was read with never goes stale.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from .register import INCR, STALE, RegisterOp, State, observed_value


class ValueLiveness:
    """For each value, the completion index up to which some op may still observe it."""

    def __init__(self, ops: Sequence[RegisterOp], acknowledged: int) -> None:
        """`ops[:acknowledged]` are the OK ops in completion order (their index is their
        completion index); the INFO ops after them never complete, so they observe forever."""
        last_observer: dict[int, int] = {}
        self.reach = 0  # how far increments can carry a value: the sum of all deltas
        for index, op in enumerate(ops):
            if op.kind == INCR:
                self.reach += op.argument
            observed = observed_value(op)
            if observed is not None:
                until = min(index, acknowledged)
                last_observer[observed] = max(last_observer.get(observed, -1), until)
        self._values = sorted(last_observer)
        self._until = [last_observer[value] for value in self._values]
        self._memo: dict[int, int] = {}

    def last_observer(self, value: int) -> int:
        """The highest completion index of an op observing a value `value` may become; -1
        when none does."""
        memo = self._memo.get(value)
        if memo is not None:
            return memo
        low = bisect.bisect_left(self._values, value)
        high = bisect.bisect_right(self._values, value + self.reach)
        until = max(self._until[low:high], default=-1)
        self._memo[value] = until
        return until

    def fold(self, state: State, frontier: int) -> State:
        """`state`, or STALE if no op at or after `frontier` can observe it any more."""
        if isinstance(state, int) and self.last_observer(state) < frontier:
            return STALE
        return state

