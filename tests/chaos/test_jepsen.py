"""The short, seeded form of the Jepsen run: each fault kind once, in a seeded order, held
past the 2 s lease TTL (so each forces the failover or fencing path it is there for), against
2 shards x 3 sync replicas on a 3-member etcd, through 2 proxies, then the history is checked.
What must hold in sync mode: every acknowledged write survives, no read returns a write that
was later lost or never made, every key's history is linearizable, and no election goes
unclean while a complete copy is alive (faults here come one at a time).

The long form (`make jepsen`, bench/jepsen.py) runs every kind alone and all mixed, drawn at
random for 120 s per run with holds of 1-4 s, twice each: the repetitions, the short holds
that heal before a failover and the faults that follow each other closely are its part.
"""

from __future__ import annotations

import pytest
import trio

from tests.helpers.jepsen.nemesis import FAULTS
from tests.helpers.jepsen.run import RunConfig, run
from tests.helpers.jepsen.summary import FaultTotals

pytestmark = [pytest.mark.chaos, pytest.mark.requires_etcd]

SECONDS = 90.0  # a bound: the eight faults and their recoveries take ~30 s
SEED = 12
HOLD = (2.2, 2.8)  # past the deployment's 2 s lease TTL
QUIET = (0.2, 0.5)


def test_mixed_faults_keep_sync_mode_linearizable() -> None:
    config = RunConfig(seconds=SECONDS, faults=sorted(FAULTS), seed=SEED, hold=HOLD,
                       quiet=QUIET, each_fault_once=True)
    result = trio.run(run, config)
    totals = FaultTotals("mixed")
    report = totals.add(result)
    summary = "\n".join(report.lines()) + f"\nhistory: {result.workdir}"
    assert report.acknowledged_writes > 1000, summary  # the clients did work through the faults
    assert sorted(f.kind for f in result.faults) == sorted(FAULTS), summary
    assert report.lost == 0, summary
    assert report.dirty_reads == 0, summary
    assert report.phantom_reads == 0, summary
    assert not report.violations, summary
    assert not report.unknown_keys, summary
    assert result.unclean_elections == 0, summary
    assert result.not_whole == 0, summary
