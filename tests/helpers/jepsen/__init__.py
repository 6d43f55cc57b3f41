"""The sans-I/O half of a Jepsen-style test: a history model (history), a per-key
linearizability checker for memcached items (register, liveness, linearizability), direct
anomaly counts and the run's report (anomalies), and a command to re-check a saved run
(`python -m tests.helpers.jepsen.check run.jsonl`); and the I/O half: the cluster under test
(deployment, relay), its clients (workload), the faults (nemesis), one run (run) and the
totals per fault type (summary), used by tests/chaos/test_jepsen.py and bench/jepsen.py.

`check(history, final)` is imported from `.anomalies`: the package's `check` is that command's
module."""

from .anomalies import Report
from .history import History, Op, Outcome, RecordedRun
from .linearizability import DEFAULT_BUDGET, KeyVerdict, Verdict, check_key, check_linearizability

__all__ = [
    "DEFAULT_BUDGET",
    "History",
    "KeyVerdict",
    "Op",
    "Outcome",
    "RecordedRun",
    "Report",
    "Verdict",
    "check_key",
    "check_linearizability",
]
