"""Linearizable histories made to order, for testing and timing the checker.

Theory of operation: random ops run one after another on a model of memcached items, each at
its own linearization point (point i at time i). Each op is then given a real-time interval
around its point: invoked up to `stretch` before it (but after its process's previous op
completed), completed up to `stretch` after it, so ops of different processes overlap the way
concurrent clients' do, and every interval still contains the op's true point. Some writes
become INFO (no completion): half of them took effect at their point, half never did. Some ops
become FAIL and did nothing. Every history made here is linearizable by construction.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .history import History, Op, Outcome

KIND_WEIGHTS = {"set": 25, "get": 25, "gets": 15, "cas": 15, "incr": 10, "delete": 10}
VERSION_SPACING = 1_000_000  # between written values, far beyond what increments add
MAX_DELTA = 9


@dataclass(frozen=True, slots=True)
class SimulationPlan:
    ops: int = 200
    keys: int = 1
    processes: int = 10
    stretch: float = 3.0  # how far an interval reaches from its op's point, in points
    info_rate: float = 0.03  # of writes
    fail_rate: float = 0.02  # of all ops


@dataclass
class _Item:
    """One key in the sequential model: its value, the version's cas unique, tokens read."""

    value: int | None = None
    token: int = 0
    tokens_read: list[int] | None = None


class _Simulation:
    def __init__(self, rng: random.Random, plan: SimulationPlan) -> None:
        self.rng, self.plan = rng, plan
        self.items = {f"k{index}": _Item(tokens_read=[]) for index in range(plan.keys)}
        self.free_at = [0.0] * plan.processes  # when each process's previous op ended
        self.versions = 0  # values written so far, for unique values
        self.cas_uniques = 0

    def run(self) -> History:
        history = History()
        clock = 0.0
        kinds, weights = list(KIND_WEIGHTS), list(KIND_WEIGHTS.values())
        for _ in range(self.plan.ops):
            clock += 1.0
            free = [p for p, at in enumerate(self.free_at) if at < clock]
            if not free:  # every process is busy: the next point waits for one
                clock = min(self.free_at) + 0.5
                free = [p for p, at in enumerate(self.free_at) if at < clock]
            process = self.rng.choice(free)
            key = self.rng.choice(list(self.items))
            kind = self.rng.choices(kinds, weights)[0]
            history.append(self._op(process, key, kind, clock))
        return history

    def _op(self, process: int, key: str, kind: str, point: float) -> Op:
        rng, plan, item = self.rng, self.plan, self.items[key]
        invoke = min(point, max(point - rng.uniform(0, plan.stretch), self.free_at[process] + 0.01))
        complete = point + rng.uniform(0, plan.stretch)
        self.free_at[process] = complete
        value, token = self._arguments(kind, item)
        if rng.random() < plan.fail_rate:
            return Op(process, kind, key, invoke, complete, Outcome.FAIL, value, token)
        if kind not in ("get", "gets") and rng.random() < plan.info_rate:
            if rng.random() < 0.5:
                self._apply(kind, item, value, token)  # it took effect; its answer was lost
            return Op(process, kind, key, invoke, None, Outcome.INFO, value, token)
        result = self._apply(kind, item, value, token)
        return Op(process, kind, key, invoke, complete, Outcome.OK, value, token, result)

    def _arguments(self, kind: str, item: _Item) -> tuple[int | None, int | None]:
        if kind in ("set", "cas"):
            self.versions += 1
            value = self.versions * VERSION_SPACING
            if kind == "set":
                return value, None
            assert item.tokens_read is not None
            # mostly a token some gets returned (current or stale), sometimes one never seen
            if item.tokens_read and self.rng.random() < 0.9:
                return value, self.rng.choice(item.tokens_read[-4:])
            return value, 10**12 + self.versions
        if kind == "incr":
            return self.rng.randint(1, MAX_DELTA), None
        return None, None

    def _apply(self, kind: str, item: _Item, value: int | None, token: int | None) -> object:
        """Run one op on the model; its answer."""
        if kind == "get":
            return item.value
        if kind == "gets":
            if item.value is None:
                return None
            assert item.tokens_read is not None
            item.tokens_read.append(item.token)
            return (item.value, item.token)
        if kind == "delete":
            present = item.value is not None
            item.value = None
            return present
        if kind == "incr":
            if item.value is None:
                return None
            assert value is not None
            self._write(item, item.value + value)
            return item.value
        if kind == "cas":
            if item.value is None:
                return "NOT_FOUND"
            if token != item.token:
                return "EXISTS"
        self._write(item, value)
        return "STORED" if kind == "cas" else None

    def _write(self, item: _Item, value: int | None) -> None:
        self.cas_uniques += 1
        item.value, item.token = value, self.cas_uniques


def simulate_history(rng: random.Random, plan: SimulationPlan) -> History:
    """A linearizable history of `plan.ops` ops over `plan.keys` keys (named k0, k1, ...)."""
    return _Simulation(rng, plan).run()
