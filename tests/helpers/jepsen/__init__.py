"""The sans-I/O half of a Jepsen-style test: a history model (history), a per-key
linearizability checker for memcached items (register, liveness, linearizability), direct
anomaly counts and the run's report (anomalies), and a command to re-check a saved run
(`python -m tests.helpers.jepsen.check run.jsonl`). Clients and faults live elsewhere.

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
