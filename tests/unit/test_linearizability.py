"""tests/helpers/jepsen: the history model, the per-key linearizability checker and the direct
anomaly counts, on hand-written histories (each a case the checker must get right) and on
simulated concurrent histories that are linearizable by construction."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.helpers.jepsen import (
    History,
    Op,
    Outcome,
    RecordedRun,
    Verdict,
    check_key,
    check_linearizability,
)
from tests.helpers.jepsen import check as check_command
from tests.helpers.jepsen.anomalies import check
from tests.helpers.jepsen.simulation import SimulationPlan, simulate_history

pytestmark = pytest.mark.unit

OK, FAIL, INFO = Outcome.OK, Outcome.FAIL, Outcome.INFO


def op(process: int, kind: str, invoke: float, complete: float | None, result: object = None,
       *, value: int | None = None, token: int | None = None, outcome: Outcome = OK,
       key: str = "k") -> Op:
    if outcome is INFO:
        complete = None
    return Op(process, kind, key, invoke, complete, outcome, value, token, result)


def verdict_of(*ops: Op, initial: int | None = None, budget: int = 100_000) -> Verdict:
    return check_key("k", ops, initial, budget).verdict


# ---- linearizable ----------------------------------------------------------------------

@pytest.mark.parametrize("read", [None, 5])
def test_a_read_concurrent_with_a_write_may_see_either_side(read: int | None) -> None:
    assert verdict_of(
        op(1, "set", 0, 10, value=5),
        op(2, "get", 1, 2, read),
    ) is Verdict.LINEARIZABLE


@pytest.mark.parametrize("order", [(1, 2), (2, 1)])
def test_concurrent_writes_in_either_order(order: tuple[int, int]) -> None:
    first, second = order
    assert verdict_of(
        op(1, "set", 0, 5, value=1),
        op(2, "set", 1, 4, value=2),
        op(3, "get", 3, 8, first),  # between the two writes
        op(4, "get", 6, 7, second),
    ) is Verdict.LINEARIZABLE


def test_an_info_write_may_take_effect_long_after_it_was_sent() -> None:
    assert verdict_of(
        op(1, "set", 0, None, value=5, outcome=INFO),
        op(2, "get", 1, 2, None),
        op(2, "get", 10, 11, 5),
    ) is Verdict.LINEARIZABLE


def test_an_info_write_may_never_take_effect() -> None:
    assert verdict_of(
        op(1, "set", 0, None, value=5, outcome=INFO),
        op(1, "delete", 0.5, None, outcome=INFO),
        op(2, "get", 1, 2, None),
        op(2, "set", 3, 4, value=7),
        op(2, "gets", 5, 6, (7, 70)),
    ) is Verdict.LINEARIZABLE


def test_a_cas_with_a_token_no_gets_returned_matches_no_version() -> None:
    history = [
        op(1, "set", 0, 1, value=1),
        op(1, "cas", 2, 3, "EXISTS", value=2, token=999),
        op(1, "cas", 3.5, None, value=3, token=998, outcome=INFO),  # never takes effect
        op(1, "get", 4, 5, 1),
    ]
    assert verdict_of(*history) is Verdict.LINEARIZABLE
    stored = dataclasses.replace(history[1], result="STORED")
    assert verdict_of(history[0], stored, op(1, "get", 4, 5, 2)) is Verdict.VIOLATION


def test_gets_then_cas_stored() -> None:
    assert verdict_of(
        op(1, "set", 0, 1, value=1),
        op(1, "gets", 2, 3, (1, 77)),
        op(2, "cas", 4, 5, "STORED", value=2, token=77),
        op(1, "cas", 4.5, 6, "EXISTS", value=3, token=77),
        op(1, "get", 7, 8, 2),
    ) is Verdict.LINEARIZABLE


def test_an_incr_chain_with_concurrent_increments() -> None:
    assert verdict_of(
        op(1, "set", 0, 1, value=100),
        op(1, "incr", 2, 5, 103, value=1),  # ordered after the concurrent +2
        op(2, "incr", 2.5, 4, 102, value=2),
        op(3, "incr", 2.2, 3, None, value=9, outcome=INFO),  # never took effect
        op(3, "get", 6, 7, 103),
        op(3, "delete", 8, 9, True),
        op(3, "incr", 10, 11, None, value=1),
    ) is Verdict.LINEARIZABLE


def test_an_info_incr_that_took_effect() -> None:
    assert verdict_of(
        op(1, "set", 0, 1, value=100),
        op(2, "incr", 2, None, value=4, outcome=INFO),
        op(1, "get", 3, 4, 100),
        op(1, "incr", 5, 6, 105, value=1),
    ) is Verdict.LINEARIZABLE


def test_delete_then_miss() -> None:
    assert verdict_of(
        op(1, "set", 0, 1, value=1),
        op(1, "delete", 2, 3, True),
        op(2, "get", 4, 5, None),
        op(2, "gets", 6, 7, None),
        op(1, "delete", 8, 9, False),
        op(1, "cas", 10, 11, "NOT_FOUND", value=2, token=5),
    ) is Verdict.LINEARIZABLE


def test_a_known_initial_value() -> None:
    assert verdict_of(op(1, "get", 0, 1, 42), initial=42) is Verdict.LINEARIZABLE
    assert verdict_of(op(1, "get", 0, 1, 42)) is Verdict.VIOLATION


# ---- not linearizable ------------------------------------------------------------------

def test_a_stale_read_after_an_acknowledged_overwrite() -> None:
    result = check_key("k", [
        op(1, "set", 0, 1, value=1),
        op(1, "set", 2, 3, value=2),
        op(2, "get", 4, 5, 1),
    ])
    assert result.verdict is Verdict.VIOLATION
    # the explanation names the read no order explains and where the model was
    assert "p2 get 'k' -> 1 ok [4.000000, 5.000000]" in result.explanation
    assert "could be in: 2" in result.explanation


def test_a_read_of_a_value_only_a_failed_write_wrote() -> None:
    history = History([
        op(1, "set", 0, 1, value=9, outcome=FAIL),
        op(2, "get", 2, 3, 9),
    ])
    assert verdict_of(*history) is Verdict.VIOLATION
    assert check(history, {"k": None}).phantom_reads == 1


def test_cas_stored_on_a_stale_token() -> None:
    assert verdict_of(
        op(1, "set", 0, 1, value=1),
        op(1, "gets", 2, 3, (1, 10)),
        op(2, "set", 4, 5, value=2),
        op(1, "cas", 6, 7, "STORED", value=3, token=10),
    ) is Verdict.VIOLATION


def test_a_token_read_with_two_values() -> None:
    result = check_key("k", [
        op(1, "set", 0, 1, value=1),
        op(1, "gets", 2, 3, (1, 10)),
        op(1, "set", 4, 5, value=2),
        op(1, "gets", 6, 7, (2, 10)),
    ])
    assert result.verdict is Verdict.VIOLATION
    assert "token 10" in result.explanation


def test_an_incr_result_that_skips_a_concurrent_acknowledged_incr() -> None:
    # both acknowledged and overlapping: one of them must have seen the other's increment
    assert verdict_of(
        op(1, "set", 0, 1, value=100),
        op(1, "incr", 2, 5, 101, value=1),
        op(2, "incr", 3, 4, 102, value=2),
    ) is Verdict.VIOLATION


def test_a_delete_that_found_nothing_after_an_acknowledged_set() -> None:
    assert verdict_of(
        op(1, "set", 0, 1, value=1),
        op(2, "delete", 2, 3, False),
    ) is Verdict.VIOLATION


def test_keys_are_checked_apart() -> None:
    verdicts = check_linearizability([
        op(1, "set", 0, 1, value=1, key="a"),
        op(1, "get", 2, 3, 1, key="a"),
        op(2, "set", 0, 1, value=2, key="b"),
        op(2, "get", 2, 3, 1, key="b"),  # a's value, read from b
    ])
    assert verdicts["a"].verdict is Verdict.LINEARIZABLE
    assert verdicts["b"].verdict is Verdict.VIOLATION


# ---- direct anomalies and the report ---------------------------------------------------

def test_a_lost_acknowledged_fresh_write_and_a_dirty_read() -> None:
    history = History([
        op(1, "set", 0, 1, value=5, key="fresh:a"),
        op(2, "get", 2, 3, 5, key="fresh:a"),  # saw the write the final read does not
        op(3, "set", 0, 1, value=6, key="fresh:b"),
        op(4, "gets", 2, 3, (6, 1), key="fresh:b"),
        op(5, "set", 0, None, value=7, key="fresh:c", outcome=INFO),  # not acknowledged
    ])
    report = check(history, {"fresh:a": None, "fresh:b": 6, "fresh:c": None})
    assert (report.lost, report.dirty_reads, report.phantom_reads) == (1, 1, 0)
    assert report.acknowledged_writes == 2
    assert report.outcomes == {OK: 4, INFO: 1}
    assert not report.ok
    # the checker does not see the final read: each key alone is linearizable
    assert report.violations == [] and report.keys_checked == 3
    text = "\n".join(report.lines())
    assert "lost writes: 1; dirty reads: 1" in text
    assert "ANOMALIES FOUND" in text


def test_a_clean_run_reports_ok() -> None:
    history = History([
        op(1, "set", 0, 1, value=5, key="fresh:a"),
        op(1, "incr", 2, 3, 8, value=3, key="n"),
        op(2, "set", 0, 1, value=5, key="n"),
        op(2, "delete", 4, 5, True, key="n"),
        op(2, "cas", 6, 7, "STORED", value=9, token=1, key="n", outcome=FAIL),
    ])
    report = check(history, {"fresh:a": 5, "n": None})
    assert report.ok and report.acknowledged_writes == 4  # not the FAIL cas
    assert report.lines()[-1] == "verdict: OK"


def test_a_run_saved_as_json_lines_is_checked_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    history = History([
        op(1, "set", 0.5, 1.25, value=1),
        op(2, "gets", 2, 3, (1, 10)),
        op(3, "cas", 4, None, value=2, token=10, outcome=INFO),
        op(3, "get", 5, 6, 1, outcome=FAIL),
        op(1, "get", 7, 8, 7),  # a phantom: nothing wrote 7
    ])
    path = tmp_path / "run.jsonl"
    history.save(path, final={"k": 2})
    run = RecordedRun.load(path)
    assert run.history == history and run.final == {"k": 2}
    assert check_command.main([str(path)]) == 1
    printed = capsys.readouterr().out
    assert "phantom reads: 1" in printed and "key 'k' is not linearizable" in printed


def test_the_budget_gives_unknown_rather_than_searching_on() -> None:
    # twelve overlapping writes, then a read of a value none wrote: a full search must try
    # every order of the writes before it can say VIOLATION
    history = [op(p, "set", 0, 10, value=p) for p in range(12)]
    history.append(op(99, "get", 11, 12, 1234))
    assert check_key("k", history, budget=100_000).verdict is Verdict.VIOLATION
    small = check_key("k", history, budget=50)
    assert small.verdict is Verdict.UNKNOWN
    assert small.configurations == 51
    assert "gave up after 50 configurations" in small.explanation


# ---- simulated concurrent histories ----------------------------------------------------

plans = st.builds(
    SimulationPlan,
    ops=st.integers(1, 150),
    keys=st.integers(1, 3),
    processes=st.integers(1, 12),
    stretch=st.floats(0.1, 6.0),
    info_rate=st.sampled_from([0.0, 0.05, 0.2]),
    fail_rate=st.sampled_from([0.0, 0.05]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans, st.randoms(use_true_random=False))
def test_histories_stretched_around_a_sequential_run_are_linearizable(
        plan: SimulationPlan, rng: random.Random) -> None:
    history = simulate_history(rng, plan)
    verdicts = check_linearizability(history)
    assert {key: v.verdict for key, v in verdicts.items()} == \
        dict.fromkeys(verdicts, Verdict.LINEARIZABLE), [v.explanation for v in verdicts.values()]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans, st.randoms(use_true_random=False), st.data())
def test_one_read_of_a_value_the_key_never_held_is_a_violation(
        plan: SimulationPlan, rng: random.Random, data: st.DataObject) -> None:
    history = simulate_history(rng, plan)
    reads = [i for i, o in enumerate(history)
             if o.outcome is OK and o.kind in ("get", "gets")]
    assume(reads)
    index = data.draw(st.sampled_from(reads))
    read = history[index]
    never_held = -1  # every value the simulation writes or increments to is positive
    history[index] = dataclasses.replace(
        read, result=never_held if read.kind == "get" else (never_held, -1))
    verdicts = check_linearizability(history)
    assert verdicts[read.key].verdict is Verdict.VIOLATION
    assert check(history, {}).phantom_reads == 1
