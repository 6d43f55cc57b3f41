"""In-process cost of the hot path, compiled (mypyc, `make compiled`) vs pure Python.

Each child process parses `set`/`get` lines with RequestParser and applies them to a Store,
timing CPU (process_time) per request; rounds alternate the two source trees so drift
cancels, and the table shows medians and the ratio. No network, no servers.

    flock /tmp/memring-bench.lock .venv/bin/python bench/hot_modules_micro.py \
        --tree pure=/work/wt-base --tree compiled=.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

# Runs in the child: 1000 keys, each round one pipelined set then get per key, repeated.
CHILD = r"""
import json, sys, time
import memring.protocol.request_parser as parser_module
from memring.protocol.request_parser import NEED_DATA, RequestParser
from memring.protocol.requests import Get, Store as StoreRequest
from memring.backend.store import Store
requests = int(sys.argv[1])
store = Store()
keys = [b"key:%06d" % i for i in range(1000)]
chunk = b"".join(b"set %s 0 0 32\r\n%s\r\nget %s\r\n" % (k, b"v" * 32, k) for k in keys)
parser = RequestParser()
done = hits = 0
start = time.process_time()
while done < requests:
    parser.receive_data(chunk)
    while (event := parser.next_event()) is not NEED_DATA:
        if type(event) is StoreRequest:
            store.store(event.command, event.key, event.value, event.flags, event.exptime)
        elif type(event) is Get:
            for key in event.keys:
                hits += store.fetch(key) is not None
        done += 1
elapsed = time.process_time() - start
print(json.dumps({"us_per_request": elapsed / done * 1e6, "hits": hits,
                  "compiled": parser_module.__file__.endswith(".so")}))
"""


def run_child(tree: Path, requests: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # -P: not this checkout first; PYTHONPATH puts `tree` there.
    out = subprocess.run([sys.executable, "-P", "-c", CHILD, str(requests)], env=env,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=400_000)
    args = parser.parse_args()
    trees = {name: Path(path).resolve() for name, path in (t.split("=", 1) for t in args.tree)}
    figures: dict[str, list[float]] = {name: [] for name in trees}
    for round_number in range(args.rounds):
        order = list(trees) if round_number % 2 == 0 else list(reversed(trees))
        for name in order:
            result = run_child(trees[name], args.requests)
            figures[name].append(result["us_per_request"])
            print(f"round {round_number + 1} {name}: {result['us_per_request']:.3f} µs/request "
                  f"(compiled: {result['compiled']}, hits {int(result['hits'])})")
    medians = {name: statistics.median(values) for name, values in figures.items()}
    print(f"\nmedian CPU µs per request over {args.rounds} rounds:")
    for name, value in medians.items():
        print(f"  {name:12} {value:.3f}")
    names = list(trees)
    for name in names[1:]:
        print(f"{name}/{names[0]}: {medians[name] / medians[names[0]]:.2f}x CPU per request")
    print("load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
