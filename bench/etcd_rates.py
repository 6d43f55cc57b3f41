"""How hard a memring cluster works its etcd: client requests per second and watchers, read
from etcd's own /metrics before and after an interval.

What is counted, per member and summed over the members (each client talks to one member):

- `grpc_server_msg_received_total`: every message a client sent, unary requests (Range, Txn,
  Put, LeaseGrant, ...) and the messages on streams (a LeaseKeepAlive each renewal, a Watch
  create/cancel); the "requests per second" of docs/scaling.md.
- `grpc_server_handled_total` of unary calls: the request/response calls alone.
- `etcd_debugging_mvcc_put_total` and `_txn_total`: writes that reached the store (raft
  proposals: the part that costs every member a disk write), per member.
- `etcd_debugging_mvcc_watcher_total` and `_watch_stream_total` (gauges): the watch fan-out.

many_failovers.py calls `sample` around its intervals (idle with backends alone, idle with a
proxy, during the failovers); run alone it watches a running cluster for a while:

    .venv/bin/python bench/etcd_rates.py --etcd http://127.0.0.1:2379 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
_METHOD = re.compile(r'grpc_method="([^"]+)"')
WATCH_GAUGES = ("etcd_debugging_mvcc_watcher_total", "etcd_debugging_mvcc_watch_stream_total")


@dataclass
class Sample:
    """One scrape of every member: counters summed over the members, at `when`."""

    when: float
    received: dict[str, float] = field(default_factory=dict)  # by gRPC method
    unary: float = 0.0
    puts: float = 0.0
    txns: float = 0.0
    watchers: float = 0.0
    watch_streams: float = 0.0
    members: int = 0  # members that answered
    unanswered: list[str] = field(default_factory=list)  # members that gave no metrics


def _scrape(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as response:
            return str(response.read().decode())
    except (OSError, urllib.error.URLError):
        return None


def sample(urls: list[str], timeout: float = 1.0) -> Sample:
    """The counters of every member in `urls` (a paused member is skipped and named)."""
    out = Sample(time.monotonic())
    for url in urls:
        text = _scrape(url, timeout)
        if text is None:
            out.unanswered.append(url)
            continue
        out.members += 1
        for line in text.splitlines():
            found = _LINE.match(line)
            if found is None:
                continue
            name, labels, value = found.group(1), found.group(2) or "", float(found.group(3))
            if name == "grpc_server_msg_received_total":
                method = _METHOD.search(labels)
                key = method.group(1) if method else "?"
                out.received[key] = out.received.get(key, 0.0) + value
            elif name == "grpc_server_handled_total" and 'grpc_type="unary"' in labels:
                out.unary += value
            elif name == "etcd_debugging_mvcc_put_total":
                out.puts += value
            elif name == "etcd_debugging_mvcc_txn_total":
                out.txns += value
            elif name == WATCH_GAUGES[0]:
                out.watchers += value
            elif name == WATCH_GAUGES[1]:
                out.watch_streams += value
    return out


def rates(before: Sample, after: Sample) -> dict[str, object]:
    """Per-second rates between two samples, and the watch gauges at the end. A member
    that did not answer either time makes the figures a lower bound (`partial`)."""
    seconds = max(after.when - before.when, 1e-9)
    by_method = {m: round((after.received.get(m, 0.0) - before.received.get(m, 0.0))
                          / seconds, 2) for m in after.received}
    return {
        "seconds": round(seconds, 2),
        "requests_per_s": round(sum(by_method.values()), 1),
        "unary_per_s": round((after.unary - before.unary) / seconds, 1),
        # every member applies every write: per member, the cluster's write rate
        "store_writes_per_s": round((after.puts + after.txns - before.puts - before.txns)
                                    / max(1, after.members) / seconds, 1),
        "by_method_per_s": {m: r for m, r in sorted(by_method.items(), key=lambda i: -i[1])
                            if r > 0},
        "watchers": after.watchers,
        "watch_streams": after.watch_streams,
        "partial": sorted(set(before.unanswered) | set(after.unanswered)),
    }


def measure(urls: list[str], seconds: float) -> dict[str, object]:
    """Rates over the next `seconds`."""
    first = sample(urls)
    time.sleep(seconds)
    return rates(first, sample(urls))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--etcd", required=True, help="member client URLs, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="interval (%(default)s)")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 600:
        parser.error("--seconds must be in (0, 600]")
    print(json.dumps(measure(args.etcd.split(","), args.seconds), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
