"""In-process cost of the hot path, compiled (mypyc, `make compiled`) vs pure Python.

Each child process times CPU (process_time) per request along one path (--path): `store`,
`set`/`get` lines through RequestParser applied to a Store; `commands`, the same lines
through the backend's CommandHandler, reply bytes included; `proxy`, what the proxy's codec
does per request (parse the client's line, encode it for the backend, its reply shape, the
ketama lookup, parse the backend's reply and check it against the shape). Rounds alternate
the source trees so drift cancels, and the table shows medians and the ratios. No network.

    flock /tmp/memring-bench.lock .venv/bin/python bench/hot_modules_micro.py \
        --tree pure=/work/wt-base --tree compiled=. --path commands
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
SETUP = r"""
import json, sys, time
import memring.protocol.request_parser as parser_module
from memring.protocol.request_parser import NEED_DATA, RequestParser
requests = int(sys.argv[1])
keys = [b"key:%06d" % i for i in range(1000)]
chunk = b"".join(b"set %s 0 0 32\r\n%s\r\nget %s\r\n" % (k, b"v" * 32, k) for k in keys)
parser = RequestParser()
done = hits = 0
start = time.process_time()
"""
REPORT = r"""
elapsed = time.process_time() - start
print(json.dumps({"us_per_request": elapsed / done * 1e6, "hits": hits,
                  "compiled": parser_module.__file__.endswith(".so")}))
"""
PATHS = {
    "store": r"""
from memring.protocol.requests import Get, Store as StoreRequest
from memring.backend.store import Store
store = Store()
while done < requests:
    parser.receive_data(chunk)
    while (event := parser.next_event()) is not NEED_DATA:
        if type(event) is StoreRequest:
            store.store(event.command, event.key, event.value, event.flags, event.exptime)
        elif type(event) is Get:
            for key in event.keys:
                hits += store.fetch(key) is not None
        done += 1
""",
    "commands": r"""
from memring.backend.commands import CommandHandler
from memring.backend.settings import BackendSettings
from memring.backend.stats import ServerCounters, StatsReport
from memring.backend.store import Store
store = Store()
handler = CommandHandler(store, StatsReport(BackendSettings(), store, ServerCounters()))
while done < requests:
    parser.receive_data(chunk)
    out = []
    while (event := parser.next_event()) is not NEED_DATA:
        handler.handle(event, out)
        done += 1
    hits += sum(reply.startswith(b"VALUE ") for reply in out)
""",
    "proxy": r"""
from memring.protocol.request_encoder import encode_request
from memring.protocol.reply_shapes import reply_shape
from memring.protocol.response_parser import ResponseParser
from memring.proxy.ketama import KetamaRing
ring = KetamaRing([(f"127.0.0.1:{11211 + i}", 1) for i in range(3)])
replies = {k: (b"VALUE %s 0 32\r\n%s\r\nEND\r\n" % (k, b"v" * 32)) for k in keys}
backend = ResponseParser()
while done < requests:
    parser.receive_data(chunk)
    while (event := parser.next_event()) is not NEED_DATA:
        encoded = encode_request(event)
        shape = reply_shape(encoded)
        key = event.keys[0] if hasattr(event, "keys") else event.key
        ring.server_for(key)
        backend.receive_data(replies[key] if hasattr(event, "keys") else b"STORED\r\n")
        while (reply := backend.next_event()) is not NEED_DATA:
            hits += shape.accepts(reply)
        done += 1
""",
}


def run_child(tree: Path, requests: int, path: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # -P: not this checkout first; PYTHONPATH puts `tree` there.
    child = SETUP + PATHS[path] + REPORT
    out = subprocess.run([sys.executable, "-P", "-c", child, str(requests)], env=env,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=400_000)
    parser.add_argument("--path", choices=sorted(PATHS), default="store",
                        help="what each request goes through (store)")
    args = parser.parse_args()
    trees = {name: Path(path).resolve() for name, path in (t.split("=", 1) for t in args.tree)}
    figures: dict[str, list[float]] = {name: [] for name in trees}
    for round_number in range(args.rounds):
        order = list(trees) if round_number % 2 == 0 else list(reversed(trees))
        for name in order:
            result = run_child(trees[name], args.requests, args.path)
            figures[name].append(result["us_per_request"])
            print(f"round {round_number + 1} {name}: {result['us_per_request']:.3f} µs/request "
                  f"(compiled: {result['compiled']}, hits {int(result['hits'])})")
    medians = {name: statistics.median(values) for name, values in figures.items()}
    print(f"\n{args.path}: median CPU µs per request over {args.rounds} rounds:")
    for name, value in medians.items():
        print(f"  {name:12} {value:.3f}")
    names = list(trees)
    for name in names[1:]:
        print(f"{name}/{names[0]}: {medians[name] / medians[names[0]]:.2f}x CPU per request")
    print("load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
