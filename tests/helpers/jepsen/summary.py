"""Totals of Jepsen runs per fault type, and the table `make jepsen` prints."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from tests.helpers.jepsen.anomalies import Report, check
from tests.helpers.jepsen.history import History
from tests.helpers.jepsen.run import RunResult


@dataclass
class FaultTotals:
    kind: str
    runs: int = 0
    ops: int = 0
    acknowledged: int = 0
    lost: int = 0
    dirty: int = 0
    phantom: int = 0
    violations: int = 0
    unknown: int = 0
    unclean: int = 0
    faults: int = 0
    longest_gap: float = 0.0
    nemesis_seconds: float = 0.0

    def add(self, result: RunResult) -> Report:
        """Check one run's history and add it in; the history is saved beside its logs."""
        history = History(result.history)
        history.save(result.workdir / "history.jsonl", final=result.final)
        result.save_events(result.workdir / "events.txt")
        report = check(history, result.final)
        self.runs += 1
        self.ops += len(result.history)
        self.acknowledged += report.acknowledged_writes
        self.lost += report.lost
        self.dirty += report.dirty_reads
        self.phantom += report.phantom_reads
        self.violations += len(report.violations)
        self.unknown += len(report.unknown_keys)
        self.unclean += result.unclean_elections
        self.faults += len(result.faults)
        self.longest_gap = max(self.longest_gap, result.longest_write_gap())
        self.nemesis_seconds += result.config.seconds
        if self.clean_run(result, report):
            shutil.rmtree(result.workdir, ignore_errors=True)  # logs of a clean run: not kept
        return report

    @staticmethod
    def clean_run(result: RunResult, report: Report) -> bool:
        return not (report.lost or report.dirty_reads or report.phantom_reads
                    or report.violations or result.unclean_elections)

    def clean(self) -> bool:
        return not (self.lost or self.dirty or self.phantom or self.violations or self.unclean)


HEADER = ("fault", "runs", "faults", "ops", "acked writes", "lost", "dirty reads",
          "phantom reads", "lin. violations", "unknown keys", "unclean elections",
          "longest write gap (s)")


def table(totals: list[FaultTotals]) -> str:
    """A markdown table, one row per fault type and a total."""
    rows = [HEADER, tuple("---" for _ in HEADER)]
    for t in [*totals, _sum(totals)]:
        rows.append((t.kind, str(t.runs), str(t.faults), f"{t.ops:,}", f"{t.acknowledged:,}",
                     str(t.lost), str(t.dirty), str(t.phantom), str(t.violations),
                     str(t.unknown), str(t.unclean), f"{t.longest_gap:.2f}"))
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _sum(totals: list[FaultTotals]) -> FaultTotals:
    total = FaultTotals("**all**")
    for t in totals:
        for name in ("runs", "ops", "acknowledged", "lost", "dirty", "phantom", "violations",
                     "unknown", "unclean", "faults", "nemesis_seconds"):
            setattr(total, name, getattr(total, name) + getattr(t, name))
        total.longest_gap = max(total.longest_gap, t.longest_gap)
    return total
