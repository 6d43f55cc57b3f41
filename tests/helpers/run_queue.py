"""How long processes were kept from running on a loaded machine: the kernel counts, for each
thread, the time it spent runnable but waiting for a CPU (schedstat's run_delay). A test that
bounds how long the code waits (a timeout, an attempt) takes that time off what it measured:
the machine's load is not the code's waiting. On a quiet machine it is ~0, the bound unchanged.
Summed over threads it over-counts (threads wait side by side): an allowance that only grows
with the load.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def run_queue_wait(pid: int | None = None) -> float:
    """Seconds the live threads of `pid` (default: this process) have waited, runnable, for a
    CPU, summed over threads; 0.0 where the kernel does not count it (not Linux)."""
    total = 0
    for stat in Path(f"/proc/{pid or os.getpid()}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
        except (OSError, IndexError, ValueError):  # a thread that exited meanwhile
            continue
    return total / 1e9


class Stopwatch:
    """Time since it was made, and that time less the run-queue wait of this process and of
    `pids` meanwhile (`elapsed_less_load`): what a bound on the code's own waiting checks."""

    def __init__(self, *pids: int) -> None:
        self.pids = (os.getpid(), *pids)
        self.started = time.monotonic()
        self.waited_before = self._waited()

    def _waited(self) -> float:
        return sum(map(run_queue_wait, self.pids))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def load_wait(self) -> float:
        """Seconds (summed over threads) the processes waited for a CPU since the start."""
        return self._waited() - self.waited_before

    def elapsed_less_load(self) -> float:
        elapsed = self.elapsed()
        return max(0.0, elapsed - self.load_wait())

    def __repr__(self) -> str:
        return f"{self.elapsed():.3f} s, of which the load explains {self.load_wait():.3f} s"
