"""libmemcached's memaslap (Debian's `memcaslap`) as a second load generator, C and not CPU-bound.

The Python load generator (loadgen.py) spends about as much CPU per request as a fast
server, so against memcached it is the limit; memaslap, one C thread with epoll, drives
memcached to ~200k ops/s from one core. Run here with the same shape of load as
loadgen's spec: `--concurrency` connections with one request in flight each, the spec's
get/set proportion and value size, pinned to the spec's CPU. What differs is memaslap's
own: keys are 16 bytes (its minimum) from its own key space, `-w 1k` keys per connection,
which it sets before it gets them (so gets hit); there is no warmup inside a run, so a
`spec.warmup` of a second or more is a separate, discarded memaslap run first.

Latency comes from its log2 histogram (bucket k holds (2^(k-1), 2^k] µs, ceil(log2) in
ms_stats.c): percentiles are interpolated linearly inside the bucket, so read them as
good to a factor of two; `avg_us` is exact. The result has LoadResult's `summary()`
keys, so the benchmark tables take either generator.
"""

from __future__ import annotations

import argparse
import math
import re
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from loadgen import LoadError, LoadResult, LoadSpec, run_load

KEY_SIZE = 16  # memaslap refuses shorter keys
WINDOW = "1k"  # keys per connection: 50 connections -> 50,000 keys
BINARY_NAMES = ("memcaslap", "memaslap")
RUN_TIME = re.compile(r"Run time: ([\d.]+)s Ops: (\d+) TPS: (\d+)")


def binary() -> str:
    """The memaslap binary (Debian names it memcaslap), or LoadError saying how to get it."""
    for name in BINARY_NAMES:
        if (path := shutil.which(name)) is not None:
            return path
    raise LoadError("memaslap is not installed: `apt-get install libmemcached-tools` (Debian "
                    "calls it memcaslap; `make debian-deps` installs it)")


def config_text(spec: LoadSpec) -> str:
    """memaslap's -F file: fixed key and value sizes, the spec's set/get proportion."""
    return (f"key\n{KEY_SIZE} {KEY_SIZE} 1\nvalue\n{spec.value_size} {spec.value_size} 1\n"
            f"cmd\n0 {1 - spec.get_ratio:g}\n1 {spec.get_ratio:g}\n")


@dataclass
class MemaslapResult:
    """One memaslap run's figures, as LoadResult's summary() needs them."""

    label: str
    spec: LoadSpec
    window_s: float
    ops: int
    misses: int
    avg_us: float
    max_us: float
    buckets: dict[int, int] = field(repr=False)  # log2 bucket -> requests
    load_cpu_s: float = 0.0
    server_cpu_s: float | None = None
    errors: int = 0  # memaslap counts none; a server error shows as fewer ops
    stuck: int = 0
    error_sample: bytes = b""

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.window_s if self.window_s > 0 else 0.0

    def percentile_us(self, p: float) -> float:
        """The p-th percentile, interpolated inside its (2^(k-1), 2^k] µs bucket."""
        total = sum(self.buckets.values())
        if total == 0:
            return math.nan
        rank = max(1.0, p / 100.0 * total)
        seen = 0
        for k in sorted(self.buckets):
            count = self.buckets[k]
            if count and seen + count >= rank:
                low, high = (1 << (k - 1) if k else 0), 1 << k
                return low + (high - low) * (rank - seen) / count
            seen += count
        return self.max_us

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ops": self.ops,
            "window_s": round(self.window_s, 3),
            "ops_per_s": round(self.ops_per_s, 1),
            "p50_us": self.percentile_us(50),
            "p99_us": self.percentile_us(99),
            "p999_us": self.percentile_us(99.9),
            "avg_us": self.avg_us,
            "max_us": self.max_us,
            "misses": self.misses,
            "errors": self.errors,
            "stuck": self.stuck,
            "load_cpu_pct": round(100.0 * self.load_cpu_s / self.window_s, 1),
        }
        if self.server_cpu_s is not None:
            out["server_cpu_pct"] = round(100.0 * self.server_cpu_s / self.window_s, 1)
        return out


def parse_output(text: str) -> tuple[float, int, int, float, float, dict[int, int]]:
    """(seconds, ops, get misses, avg µs, max µs, log2 buckets) from memaslap's report."""
    found = RUN_TIME.search(text)
    misses = re.search(r"^get_misses: (\d+)", text, re.M)
    total = text.rfind("Total Statistics (")
    if found is None or misses is None or total < 0:
        raise LoadError("memaslap's report has no `Run time:`, `get_misses:` or `Total "
                        f"Statistics (` line:\n{text[-1500:]}")
    block = text[total:]
    avg = re.search(r"Avg:\s+(\d+)", block)
    peak = re.search(r"Max:\s+(\d+)", block)
    buckets: dict[int, int] = {}
    rows = block.split("Log2 Dist:", 1)[1].splitlines()[1:] if "Log2 Dist:" in block else []
    for line in rows:
        head, _, counts = line.partition(":")
        if not head.strip().isdigit():
            break
        for offset, count in enumerate(counts.split()):
            buckets[int(head) + offset] = int(count)
    return (float(found.group(1)), int(found.group(2)), int(misses.group(1)),
            float(avg.group(1)) if avg else math.nan, float(peak.group(1)) if peak else math.nan,
            buckets)


def _run_once(argv: list[str], seconds: int, label: str,
              progress: Callable[[str], None] | None) -> tuple[str, float]:
    """Run memaslap to its end (bounded), with a progress line; (its output, CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT)
        started = time.monotonic()
        try:
            while process.poll() is None:
                elapsed = time.monotonic() - started
                if elapsed > seconds + 30:
                    raise LoadError(f"memaslap did not finish within {seconds + 30}s: is the "
                                    "server answering?")
                if progress is not None:
                    progress(f"{label}: memaslap {elapsed:.0f}/{seconds}s")
                time.sleep(min(1.0, max(0.05, seconds - elapsed)))
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if process.returncode != 0:
        raise LoadError(f"memaslap exited with status {process.returncode}:\n{text[-1500:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return text, cpu


def run_memaslap(host: str, port: int, spec: LoadSpec, label: str = "",
                 progress: Callable[[str], None] | None = None,
                 server_cpu: Callable[[], float] | None = None) -> MemaslapResult:
    """Run `spec`'s mix with memaslap against host:port (same signature as loadgen.run_load)."""
    spec.check()
    if spec.multiget != 1 or spec.tls_ca or spec.auth:
        raise LoadError("memaslap runs only the single-key get/set mix, plain, no auth")
    seconds = max(1, round(spec.duration))
    pin = ["taskset", "-c", str(spec.cpu)] if spec.cpu is not None else []
    with tempfile.TemporaryDirectory(prefix="memaslap-") as tmp:
        config = Path(tmp) / "load.cfg"
        config.write_text(config_text(spec))

        def argv(run_seconds: int) -> list[str]:
            return [*pin, binary(), "-s", f"{host}:{port}", "-F", str(config),
                    "-t", f"{run_seconds}s", "-S", f"{run_seconds}s", "-T", "1",
                    "-c", str(spec.connections), "-n", "1", "-w", WINDOW]

        if spec.warmup >= 1:
            _run_once(argv(round(spec.warmup)), round(spec.warmup), f"{label} warmup",
                      progress)
        srv0 = server_cpu() if server_cpu else None
        text, cpu = _run_once(argv(seconds), seconds, label, progress)
        srv1 = server_cpu() if server_cpu else None
    window, ops, misses, avg, peak, buckets = parse_output(text)
    return MemaslapResult(label=label, spec=spec, window_s=window, ops=ops, misses=misses,
                          avg_us=avg, max_us=peak, buckets=buckets, load_cpu_s=cpu,
                          server_cpu_s=(srv1 - srv0) if srv0 is not None and srv1 is not None
                          else None)


class LoadRunner(Protocol):
    """loadgen.run_load or run_memaslap: one load against host:port, with a summary()."""

    def __call__(self, host: str, port: int, spec: LoadSpec, label: str = "",
                 progress: Callable[[str], None] | None = None,
                 server_cpu: Callable[[], float] | None = None) -> LoadResult | MemaslapResult:
        ...


RUNNERS: dict[str, LoadRunner] = {"python": run_load, "memaslap": run_memaslap}


def add_loadgen_argument(parser: argparse.ArgumentParser, default: str = "both") -> None:
    parser.add_argument("--loadgen", choices=("python", "memaslap", "both"), default=default,
                        help="load generator: loadgen.py (exact percentiles), libmemcached's "
                             "memaslap (C, not CPU-bound; log2-bucket percentiles), or both "
                             "in the same rounds (%(default)s)")


def loadgens(choice: str) -> list[str]:
    """--loadgen's value as the generators to run, python first."""
    return ["python", "memaslap"] if choice == "both" else [choice]
