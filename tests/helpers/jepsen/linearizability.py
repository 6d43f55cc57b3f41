"""Is each key's history linearizable as a memcached item? (Wing & Gong's search with Lowe's
memoisation, as in knossos and porcupine.)

Theory of operation: keys are independent registers, so each key is checked alone
(P-compositionality). FAIL ops never took effect and INFO reads say nothing, so both are
dropped. The rest become entries on a doubly linked list sorted by time: a call at `invoke`
and, for an OK op, a return at `complete` (at equal times calls come first: such ops count
as concurrent). An op may be ordered next only if its call precedes the first return still on
the list; ordering it lifts its entries off the list. The search is a depth-first walk over
configurations (which ops are ordered, the model's state, folded by liveness.py so that
values no later op can read count as one), kept iteratively on an explicit stack; a configuration seen before is not walked again (Lowe's cache), and the walk stops at
`budget` configurations with UNKNOWN.

An INFO write has a call but no return: it may be ordered at any point after its call, or
never. That freedom is what makes such searches explode, so only canonical orders are walked
(each rule maps any legal order to one the walk still visits):
- in each configuration the OK ops are tried before the INFO ones;
- an INFO op that would not change the state is not ordered (leaving it out is the same);
- nothing that overwrites the state regardless of it (a set, an INFO delete) is ordered right
  after an INFO op: leaving the INFO op out is the same;
- INFO deletes are interchangeable, and so are INFO sets of stale values (liveness.py): only
  the earliest one still unordered is tried.

A violation is reported at the furthest point any path reached: the acknowledged op whose
return no order could get past, the states the model could be in there, and what overlapped it.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from .history import READ_KINDS, History, Op, Outcome
from .liveness import ValueLiveness
from .register import (
    CAS,
    DELETE,
    ILLEGAL,
    INCR,
    SET,
    RegisterOp,
    State,
    compile_op,
    describe_state,
    observed_value,
    step,
    token_values,
)

DEFAULT_BUDGET = 5_000_000  # configurations per key
SHOWN_STATES = 6
SHOWN_NEIGHBOURS = 12
SHOWN_PREFIX_TAIL = 4


class Verdict(enum.Enum):
    LINEARIZABLE = "linearizable"
    VIOLATION = "violation"
    UNKNOWN = "unknown"  # the search budget ran out


@dataclass(frozen=True, slots=True)
class KeyVerdict:
    """One key's verdict; for VIOLATION and UNKNOWN, what a developer should look at."""

    key: str
    verdict: Verdict
    explanation: str = ""
    configurations: int = 0  # how many the search visited


def check_linearizability(
    history: Iterable[Op],
    initial: Mapping[str, int | None] | None = None,
    budget: int = DEFAULT_BUDGET,
) -> dict[str, KeyVerdict]:
    """Each key's verdict; a key absent from `initial` starts absent."""
    initial = initial or {}
    return {key: check_key(key, ops, initial.get(key), budget)
            for key, ops in History(history).by_key().items()}


def check_key(key: str, ops: Iterable[Op], initial: int | None = None,
              budget: int = DEFAULT_BUDGET) -> KeyVerdict:
    ops = list(ops)
    tokens, conflicts = token_values(ops)
    if conflicts:
        lines = [f"cas token {c.token} was read with two values: {c.first.describe()}  and  "
                 f"{c.second.describe()}" for c in conflicts]
        return KeyVerdict(key, Verdict.VIOLATION, "\n".join(lines))
    acknowledged: list[RegisterOp] = []
    indeterminate: list[RegisterOp] = []
    for op in ops:
        if op.outcome is Outcome.FAIL or (op.outcome is Outcome.INFO and op.kind in READ_KINDS):
            continue
        if op.complete is not None and op.complete < op.invoke:
            raise ValueError(f"completes before it was invoked: {op.describe()}")
        if op.outcome is Outcome.OK and op.complete is None:
            raise ValueError(f"an OK op needs its completion time: {op.describe()}")
        compiled = compile_op(op, tokens)
        if compiled.kind == CAS and compiled.indeterminate and compiled.expected is None:
            continue  # a cas with an unknown token never matches, so it never took effect
        (indeterminate if compiled.indeterminate else acknowledged).append(compiled)
    return _Search(key, acknowledged, indeterminate, initial, budget).run()


# The INFO ops ordered since the last OK op: the state before them, and the number of the
# last one if it is an incr (else -1); None after an OK op.
_Run = tuple[State, int] | None
# What backtracking restores: the op ordered, its list node, the scan's phase and the INFO
# classes it tried, then the configuration before it (state, frontier, ahead, INFO ops, run).
_Frame = tuple[int, int, int, int, State, int, int, int, _Run]


class _Search:
    """The walk over one key's configurations. Ops are numbered: the OK ones by completion
    (so `frontier`, the first unordered OK op, is also the first return on the list), then
    the INFO ones. Nodes 1..n are the entries in time order, on two lists: the OK ops' calls
    and returns (head 0), and the INFO ops' calls (head `info_head`), so that the INFO calls
    that stay unordered to the end are not walked past in every scan for an OK op."""

    def __init__(self, key: str, acknowledged: list[RegisterOp],
                 indeterminate: list[RegisterOp], initial: int | None, budget: int) -> None:
        self.key, self.budget, self.initial = key, budget, initial
        acknowledged.sort(key=lambda r: (r.op.complete, r.op.invoke))
        self.ops = acknowledged + indeterminate
        self.acknowledged = len(acknowledged)
        self.liveness = ValueLiveness(self.ops, self.acknowledged)
        entries: list[tuple[float, int, int]] = []  # (time, 0 call / 1 return, op number)
        for number, register_op in enumerate(self.ops):
            entries.append((register_op.op.invoke, 0, number))
            if number < self.acknowledged:
                complete = register_op.op.complete
                assert complete is not None
                entries.append((complete, 1, number))
        entries.sort()
        count = len(entries)
        self.info_head = count + 2
        size = count + 4  # the entries, the OK list's head and tail, the INFO list's
        self.next, self.prev = [0] * size, [0] * size
        self.node_op = [-1] * size
        self.node_returns = [False] * size
        self.node_returns[count + 1] = self.node_returns[count + 3] = True  # tails end scans
        self.call_node = [0] * len(self.ops)
        self.return_node = [0] * len(self.ops)
        ok_list, info_list = [0], [self.info_head]
        for node, (_, is_return, number) in enumerate(entries, 1):
            self.node_op[node] = number
            self.node_returns[node] = bool(is_return)
            (self.return_node if is_return else self.call_node)[number] = node
            (info_list if number >= self.acknowledged else ok_list).append(node)
        for nodes in ([*ok_list, count + 1], [*info_list, count + 3]):
            for before, after in itertools.pairwise(nodes):
                self.next[before], self.prev[after] = after, before
        # Search facts per op: does it overwrite the state blindly; its interchangeability
        # class when INFO (1: delete; 2: a set, once its value is stale).
        self.blind = [r.kind == SET or (r.indeterminate and r.kind == DELETE) for r in self.ops]
        self.info_class = [0] * len(self.ops)
        for number, r in enumerate(self.ops):
            if r.indeterminate:
                self.info_class[number] = 1 if r.kind == DELETE else 2 if r.kind == SET else 0
        self.stuck_frontier = -1  # the furthest dead end: its frontier, states, path
        self.stuck_states: list[State] = []
        self.stuck_path: list[int] = []
        self.stuck_ordered = 0

    def run(self) -> KeyVerdict:
        ops, nxt, node_op, node_returns = self.ops, self.next, self.node_op, self.node_returns
        blind, info_class, liveness = self.blind, self.info_class, self.liveness
        acknowledged, info_head, return_node = self.acknowledged, self.info_head, self.return_node
        cache: set[tuple[int, int, int, State, _Run]] = set()
        stack: list[_Frame] = []
        # The OK ops ordered: all those numbered below `frontier`, and those whose bit is set
        # in `ahead` (bit i: op frontier + i), a small int however long the history is.
        frontier = ahead = ordered_info = 0
        run: _Run = None  # the INFO ops just ordered: (the state before them, last incr)
        state: State = self.initial  # the model's real state; the cache sees it folded
        state_folded = liveness.fold(state, 0)
        node, phase, classes_tried = nxt[0], 0, 0  # phase 0: OK ops, phase 1: INFO ops
        ceiling: float | None = None  # the INFO incrs' ceiling in this configuration
        while frontier < acknowledged:
            # a scan ends at the first return: no op called after it can go next
            if node_returns[node] or (phase and node > return_node[frontier]):
                if phase == 0:
                    node, phase, classes_tried, ceiling = nxt[info_head], 1, 0, None
                    continue
                self._note_dead_end(frontier, state, stack, ahead)
                if not stack:
                    return self._violation(len(cache))
                (number, node, phase, classes_tried,
                 state, frontier, ahead, ordered_info, run) = stack.pop()
                ceiling, state_folded = None, liveness.fold(state, frontier)
                self._restore(number)
                node = nxt[node]
                continue
            number = node_op[node]
            r = ops[number]
            if phase == 0:
                # after INFO ops, only an op they made legal: any other could go first
                if run is not None and step(run[0], r) is not ILLEGAL:
                    node = nxt[node]
                    continue
            else:
                # a blind write makes the INFO ops before it pointless; INFO incrs commute
                if run is not None and (blind[number] or (r.kind == INCR and number < run[1])):
                    node = nxt[node]
                    continue
                kind_class = info_class[number]
                if kind_class == 2 and liveness.last_observer(r.argument) >= frontier:
                    kind_class = 0  # someone may still read this set's value
                if kind_class:
                    if classes_tried & kind_class:
                        node = nxt[node]
                        continue
                    classes_tried |= kind_class
            after = step(state, r)
            if after is ILLEGAL:
                node = nxt[node]
                continue
            if phase and r.kind == INCR and isinstance(after, int):
                if ceiling is None:
                    ceiling = self._incr_ceiling(state if run is None else run[0], frontier)
                if after > ceiling:  # no op in reach could read what it leads to
                    node = nxt[node]
                    continue
            next_ahead, next_info, next_frontier = ahead, ordered_info, frontier
            next_run: _Run = None
            if phase:
                next_info |= 1 << (number - acknowledged)
                next_run = (state if run is None else run[0], number if r.kind == INCR else -1)
            else:
                next_ahead |= 1 << (number - frontier)
                if number == frontier:  # skip past every op already ordered
                    done = (~next_ahead & (next_ahead + 1)).bit_length() - 1
                    next_frontier += done
                    next_ahead >>= done
            folded = liveness.fold(after, next_frontier)
            config = (next_ahead, next_frontier, next_info, folded, next_run)
            if (phase and folded == state_folded) or config in cache:
                node = nxt[node]
                continue
            cache.add(config)
            if len(cache) > self.budget:
                return self._unknown(len(cache))
            stack.append((number, node, phase, classes_tried,
                          state, frontier, ahead, ordered_info, run))
            ahead, ordered_info, frontier, state, state_folded, run = (
                next_ahead, next_info, next_frontier, after, folded, next_run)
            self._lift(number)
            node, phase, classes_tried, ceiling = nxt[0], 0, 0, None
        return KeyVerdict(self.key, Verdict.LINEARIZABLE, configurations=len(cache))

    def _incr_ceiling(self, run_start: State, frontier: int) -> float:
        """The highest value a run of INFO ops from `run_start` may usefully increment to.

        Such a run must end with an OK op it makes legal (see `run`), and increments only
        raise the value: that op reads an exact value (get, gets, incr, cas STORED, or an
        INFO cas on the way needs one), or merely needs the item present and different from
        `run_start` (delete, cas EXISTS). Only ops called before the first pending return
        can be that op: they are the nodes before it."""
        ceiling = -1
        first_return = self.return_node[frontier]
        for r in self._called_before(first_return):
            if not r.indeterminate and (
                    (r.kind == CAS and r.result == "EXISTS"
                     and (run_start is None or run_start == r.expected))
                    or (r.kind == DELETE and r.result is True and run_start is None)):
                return float("inf")
            value = observed_value(r)
            if value is not None:
                ceiling = max(ceiling, value)
        return ceiling

    def _called_before(self, first_return: int) -> Iterator[RegisterOp]:
        """The unordered ops, OK and INFO, whose calls precede the node `first_return`."""
        for head in (0, self.info_head):
            node = self.next[head]
            while node < first_return and not self.node_returns[node]:
                yield self.ops[self.node_op[node]]
                node = self.next[node]

    def _lift(self, number: int) -> None:
        nxt, prev = self.next, self.prev
        for node in (self.call_node[number], self.return_node[number]):
            if node:
                nxt[prev[node]] = nxt[node]
                prev[nxt[node]] = prev[node]

    def _restore(self, number: int) -> None:
        """Undo `_lift(number)`, in the reverse order (dancing links)."""
        nxt, prev = self.next, self.prev
        for node in (self.return_node[number], self.call_node[number]):
            if node:
                nxt[prev[node]] = node
                prev[nxt[node]] = node

    def _note_dead_end(self, frontier: int, state: State, stack: list[_Frame],
                       ahead: int) -> None:
        if frontier > self.stuck_frontier:
            self.stuck_frontier, self.stuck_states = frontier, []
            self.stuck_path = [frame[0] for frame in stack[-SHOWN_PREFIX_TAIL:]]
            self.stuck_ordered = frontier + ahead.bit_count()
        if frontier == self.stuck_frontier and state not in self.stuck_states:
            self.stuck_states.append(state)

    def _violation(self, configurations: int) -> KeyVerdict:
        return KeyVerdict(self.key, Verdict.VIOLATION, self._explain(), configurations)

    def _unknown(self, configurations: int) -> KeyVerdict:
        text = f"gave up after {self.budget} configurations"
        if self.stuck_frontier >= 0:
            text += "; the furthest dead end so far:\n" + self._explain()
        return KeyVerdict(self.key, Verdict.UNKNOWN, text, configurations)

    def _explain(self) -> str:
        """Where every path failed, in terms a developer can act on."""
        stuck = self.ops[self.stuck_frontier].op
        states = ", ".join(describe_state(s) for s in self.stuck_states[:SHOWN_STATES])
        if len(self.stuck_states) > SHOWN_STATES:
            states += f" (and {len(self.stuck_states) - SHOWN_STATES} more)"
        lines = [
            f"every order failed at: {stuck.describe()}",
            f"  no order of the ops before its answer explains it; the model could be in: {states}",
            f"  longest linearizable prefix: {self.stuck_ordered} of {self.acknowledged} "
            "acknowledged ops; it ends with:",
            *(f"    {self.ops[number].op.describe()}" for number in self.stuck_path),
            "  ops concurrent with it:",
        ]
        neighbours = self._concurrent_with(stuck)
        lines += [f"    {op.describe()}" for op in neighbours[:SHOWN_NEIGHBOURS]]
        if len(neighbours) > SHOWN_NEIGHBOURS:
            lines.append(f"    (and {len(neighbours) - SHOWN_NEIGHBOURS} more)")
        return "\n".join(lines)

    def _concurrent_with(self, stuck: Op) -> list[Op]:
        """The ops whose intervals overlap `stuck`'s, those invoked nearest to it first."""
        end = stuck.complete if stuck.complete is not None else float("inf")
        overlapping = [r.op for r in self.ops if r.op is not stuck and r.op.invoke <= end
                       and (r.op.complete is None or r.op.complete >= stuck.invoke)]
        overlapping.sort(key=lambda op: abs(op.invoke - stuck.invoke))
        return overlapping
