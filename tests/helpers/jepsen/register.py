"""One key's memcached item as a register: the sequential model the linearizability search
steps through.

Theory of operation: the state is the item's value (an int) or None when the item is absent;
the search's cache also sees `Stale.VERSION`, any value that no op still to be ordered can
tell from another (liveness.py folds such values together). `compile_op` turns an
`Op` into a `RegisterOp` once, resolving its cas token to the value that token was read with;
`step(state, op)` is then the state after `op`, or `Illegal.STEP` when the op's answer
cannot have come from `state`. An INFO op's answer is unknown, so any answer is legal for it:
it only changes the state, as it would have if it took effect.

Cas tokens: every OK gets of the key, anywhere in the history, says that its token names the
version with its value (`token_values`). A token read with two different values is itself a
violation. A cas whose token no OK gets returned names a version the checker cannot know, so
it is taken to match no state: only EXISTS (item present) or NOT_FOUND (absent) are legal
answers, and as an INFO op it never has an effect. Tokens are per key: a cas unique names a
version of one item, and a cluster's shards number them independently.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from .history import CAS_REPLIES, Op, Outcome

SET, GET, GETS, CAS, INCR, DELETE = range(6)
KIND_CODES = {"set": SET, "get": GET, "gets": GETS, "cas": CAS, "incr": INCR, "delete": DELETE}


class Stale(enum.Enum):
    """Present, with a value no op still to be linearized reads (the search's folded state)."""

    VERSION = "a stale version"


class Illegal(enum.Enum):
    """The op's answer cannot have come from the state it was stepped from."""

    STEP = "illegal"


State = int | None | Literal[Stale.VERSION]
STALE = Stale.VERSION
ILLEGAL = Illegal.STEP


def describe_state(state: State) -> str:
    if state is None:
        return "absent"
    if state is STALE:
        return "present with a stale value (one no later op reads)"
    return str(state)


@dataclass(frozen=True, slots=True)
class RegisterOp:
    """An op compiled for stepping: its kind as a small int, its cas token resolved."""

    op: Op
    kind: int
    indeterminate: bool  # INFO: any answer is legal, the effect may or may not happen
    argument: int  # set/cas: the value written; incr: the delta; else 0
    expected: int | None  # cas: the value its token was read with; None: an unknown token
    result: object


@dataclass(frozen=True, slots=True)
class TokenConflict:
    """Two OK gets that returned the same cas token with different values."""

    token: int
    first: Op
    second: Op


def token_values(ops: Iterable[Op]) -> tuple[dict[int, int], list[TokenConflict]]:
    """Each token's value from the key's OK gets, and every token seen with two values."""
    values: dict[int, int] = {}
    witness: dict[int, Op] = {}
    conflicts: list[TokenConflict] = []
    for op in ops:
        if op.kind != "gets" or op.outcome is not Outcome.OK or op.result is None:
            continue
        value, token = gets_result(op)
        if token not in values:
            values[token], witness[token] = value, op
        elif values[token] != value:
            conflicts.append(TokenConflict(token, witness[token], op))
    return values, conflicts


def gets_result(op: Op) -> tuple[int, int]:
    result = op.result
    if not (isinstance(result, tuple) and len(result) == 2
            and all(isinstance(part, int) for part in result)):
        raise ValueError(f"a gets answers (value, token) or None, not {result!r}: {op}")
    return result[0], result[1]


def compile_op(op: Op, tokens: dict[int, int]) -> RegisterOp:
    """`op` ready for `step`; ValueError if its arguments or answer are malformed."""
    kind = KIND_CODES.get(op.kind)
    if kind is None:
        raise ValueError(f"unknown kind: {op}")
    indeterminate = op.outcome is Outcome.INFO
    argument = 0
    if kind in (SET, CAS, INCR):
        if not isinstance(op.value, int):
            raise ValueError(f"a {op.kind} needs an int value: {op}")
        argument = op.value
    if kind == INCR and argument <= 0:
        raise ValueError(f"the workload's increments are positive: {op}")
    expected = None
    if kind == CAS:
        if op.token is None:
            raise ValueError(f"a cas needs a token: {op}")
        expected = tokens.get(op.token)
    result = op.result
    if not indeterminate:
        result = _checked_result(op, kind)
    return RegisterOp(op, kind, indeterminate, argument, expected, result)


def _checked_result(op: Op, kind: int) -> object:
    result = op.result
    if kind == GET and not (result is None or isinstance(result, int)):
        raise ValueError(f"a get answers an int or None: {op}")
    if kind == GETS and result is not None:
        return gets_result(op)
    if kind == CAS and result not in CAS_REPLIES:
        raise ValueError(f"a cas answers one of {sorted(CAS_REPLIES)}: {op}")
    if kind == INCR and not (result is None or isinstance(result, int)):
        raise ValueError(f"an incr answers an int or None: {op}")
    if kind == DELETE and not isinstance(result, bool):
        raise ValueError(f"a delete answers True or False: {op}")
    return result


def observed_value(op: RegisterOp) -> int | None:
    """The value whose equality with the state decides whether `op` is legal, if any."""
    if op.kind == CAS:
        return op.expected  # STORED needs it, EXISTS needs it not; even as INFO (STORED)
    if op.indeterminate:
        return None
    result = op.result
    if op.kind == GET and isinstance(result, int):
        return result
    if op.kind == GETS and isinstance(result, tuple):
        value = result[0]
        return value if isinstance(value, int) else None
    if op.kind == INCR and isinstance(result, int):
        return result - op.argument
    return None


def step(state: State, op: RegisterOp) -> State | Illegal:
    """The state after `op` took effect in `state`, or ILLEGAL if its answer rules that out."""
    kind = op.kind
    if kind == SET:
        return op.argument
    if op.indeterminate:
        if kind == CAS:
            return op.argument if op.expected is not None and state == op.expected else state
        if kind == INCR:
            return state + op.argument if isinstance(state, int) else state
        if kind == DELETE:
            return None
        raise ValueError(f"an INFO read has no effect and is not stepped: {op.op}")
    result = op.result
    if kind == GET:
        return state if result == state else ILLEGAL
    if kind == GETS:
        if result is None:
            return state if state is None else ILLEGAL
        return state if isinstance(result, tuple) and result[0] == state else ILLEGAL
    if kind == CAS:
        if result == "NOT_FOUND":
            return state if state is None else ILLEGAL
        if state is None:
            return ILLEGAL
        matches = op.expected is not None and state == op.expected
        if result == "STORED":
            return op.argument if matches else ILLEGAL
        return state if not matches else ILLEGAL  # EXISTS
    if kind == INCR:
        if result is None:
            return state if state is None else ILLEGAL
        if not (isinstance(state, int) and isinstance(result, int)):
            return ILLEGAL
        return result if state + op.argument == result else ILLEGAL
    # DELETE: DELETED iff the item was there
    return None if (state is not None) == result else ILLEGAL
