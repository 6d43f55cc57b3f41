"""The short, seeded form of the Jepsen run (`make jepsen` runs the long ones): ~60 s of mixed
faults against 2 shards x 3 sync replicas on a 3-member etcd, through 2 proxies, then the
history is checked. What must hold in sync mode: every acknowledged write survives, no read
returns a write that was later lost or never made, every key's history is linearizable, and no
election goes unclean while a complete copy is alive (faults here come one at a time).
"""

from __future__ import annotations

import pytest
import trio

from tests.helpers.jepsen.nemesis import FAULTS
from tests.helpers.jepsen.run import RunConfig, run
from tests.helpers.jepsen.summary import FaultTotals

pytestmark = [pytest.mark.chaos, pytest.mark.requires_etcd]

SECONDS = 60.0
SEED = 12


def test_mixed_faults_keep_sync_mode_linearizable() -> None:
    result = trio.run(run, RunConfig(seconds=SECONDS, faults=sorted(FAULTS), seed=SEED))
    totals = FaultTotals("mixed")
    report = totals.add(result)
    summary = "\n".join(report.lines()) + f"\nhistory: {result.workdir}"
    assert report.acknowledged_writes > 1000, summary  # the clients did work through the faults
    assert len(result.faults) >= 8, summary
    assert report.lost == 0, summary
    assert report.dirty_reads == 0, summary
    assert report.phantom_reads == 0, summary
    assert not report.violations, summary
    assert not report.unknown_keys, summary
    assert result.unclean_elections == 0, summary
    assert result.not_whole == 0, summary
