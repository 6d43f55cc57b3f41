"""Sweep KetamaRing against twemproxy: every pool size 1..60, both key hashes, 10,000 keys.

For each pool, keys are stored through a real nutcracker (`distribution: ketama`) in front
of real memcacheds, each memcached is asked which keys it holds, and every key must sit
where KetamaRing puts it. The harness is the compat test's
(tests/compat/test_ketama_nutcracker.py); this script is the long sweep that does not
belong in `make test`. It prints a progress line per pool and a final table, exits 1 on
any mismatch, and stops every process it started, also on Ctrl-C, SIGTERM or its deadline.

    .venv/bin/python bench/ketama_placement.py
    .venv/bin/python bench/ketama_placement.py --sizes 1-10 --keys 2000 --weights 1,2,3
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memring.proxy.ketama import KetamaRing
from tests.helpers import servers
from tests.helpers.nutcracker import (
    PoolServer,
    compare_placement,
    nutcracker_binary,
    sample_keys,
)


@dataclass
class Row:
    size: int
    hash_name: str
    points: int
    compared: int
    mismatches: int
    seconds: float


def parse_sizes(text: str) -> list[int]:
    sizes: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        sizes += range(int(lo), int(hi or lo) + 1)
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"bad pool sizes {text!r}")
    return sizes


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds the ExitStack, which stops every server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes("1-60"),
                        help="pool sizes, e.g. 1-60 or 1,2,25,50 (default 1-60)")
    parser.add_argument("--keys", type=int, default=10_000, help="keys per pool (10000)")
    parser.add_argument("--hashes", default="md5,fnv1a_64", help="key hashes (md5,fnv1a_64)")
    parser.add_argument("--weights", default="1",
                        help="weights cycled over each pool's servers, e.g. 1,2,3 (default 1)")
    parser.add_argument("--deadline", type=float, default=900.0,
                        help="stop the sweep after this many seconds (900)")
    args = parser.parse_args()
    hashes = args.hashes.split(",")
    weights = [int(w) for w in args.weights.split(",")]
    try:
        nutcracker_binary()
    except RuntimeError as exc:
        print(f"ketama_placement: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    started = time.monotonic()
    deadline = started + args.deadline
    keys = sample_keys(args.keys, seed=2024, prefix="sweep/")
    rows: list[Row] = []
    total = len(args.sizes) * len(hashes)
    stopped = ""
    with contextlib.ExitStack() as stack:
        print(f"starting {max(args.sizes)} memcacheds ...", flush=True)
        mcs = [stack.enter_context(servers.memcached("-m", "16"))
               for _ in range(max(args.sizes))]
        try:
            for size in args.sizes:
                pool = [PoolServer(m.port, weights[i % len(weights)])
                        for i, m in enumerate(mcs[:size])]
                for hash_name in hashes:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    t0 = time.monotonic()
                    result = compare_placement(pool, hash_name, keys, timeout=min(remaining, 300))
                    ring = KetamaRing([(s.point, s.weight) for s in pool], hash_name)
                    row = Row(size, hash_name, len(ring), result.compared,
                              len(result.mismatches), time.monotonic() - t0)
                    rows.append(row)
                    print(f"[{len(rows):3}/{total}] pool {size:2} {hash_name:8} points {row.points:5}"
                          f"  keys {row.compared}  mismatches {row.mismatches}"
                          f"  ({row.seconds:.1f}s, total {time.monotonic() - started:.0f}s)",
                          flush=True)
                    for key, expected, actual in result.mismatches[:3]:
                        print(f"      {key!r}: ring says {expected}, memcacheds hold it on {actual}")
        except TimeoutError:
            stopped = f"stopped at the {args.deadline:.0f}s deadline"
        except KeyboardInterrupt:
            stopped = "interrupted"

    print()
    print(f"{'pool':>4}  {'hash':8}  {'points':>6}  {'keys compared':>13}  {'mismatches':>10}")
    for row in rows:
        print(f"{row.size:>4}  {row.hash_name:8}  {row.points:>6}  {row.compared:>13}"
              f"  {row.mismatches:>10}")
    compared = sum(r.compared for r in rows)
    mismatched = sum(r.mismatches for r in rows)
    print(f"\n{len(rows)} pools (sizes {min(args.sizes)}..{max(args.sizes)}, weights "
          f"{args.weights}, hashes {args.hashes}): {compared} keys compared, {mismatched} "
          f"mismatches, {time.monotonic() - started:.0f}s"
          + (f"; {stopped} after {len(rows)} of {total} pools" if stopped else ""))
    if mismatched:
        return 1
    return 1 if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
