"""A binary mget through the proxy: libmemcached's getkq...noop batched into one `gets` per
shard (proxy/binary_batches.py) beside one request per frame, and beside the text `get`
of the same keys; two proxies over the same shards, alternated rounds, medians.

    .venv/bin/python bench/binary_proxy_mget.py [--keys 100] [--shards 2] [--rounds 8]

The unbatched proxy is the same code with MAX_BATCH set to 1 in its process.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memring.protocol.binary_frames import Opcode
from tests.helpers import servers, wire
from tests.helpers.binary_cases import SENTINEL, SENTINEL_REPLY, get

BATCHES_PER_ROUND = 40


def proxy_argv(config: str, max_batch: int) -> list[str]:
    code = (f"import sys, memring.proxy.binary_batches as b; b.MAX_BATCH = {max_batch}; "
            "from memring.proxy.cli import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", code, "--listen", servers.HOST + ":{port}",
            "--config", config]


def per_key_us(proxy: servers.RunningServer, request: bytes, end: bytes, keys: int) -> float:
    with wire.connect(proxy) as sock:
        started = time.perf_counter()
        for _ in range(BATCHES_PER_ROUND):
            got = wire.drive(sock, [request], until=end, timeout=10)
            assert not got.timed_out
        return (time.perf_counter() - started) / BATCHES_PER_ROUND / keys * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    keys = [b"key-%d" % i for i in range(args.keys)]
    with contextlib.ExitStack() as stack:
        backends = [[stack.enter_context(servers.backend())] for _ in range(args.shards)]
        config = stack.enter_context(tempfile.NamedTemporaryFile("w", suffix=".toml"))
        config.write(servers.proxy_config(backends))
        config.flush()
        batched = stack.enter_context(servers.running("batched", proxy_argv(config.name, 32)))
        single = stack.enter_context(servers.running("single", proxy_argv(config.name, 1)))
        wire.store(batched, {k: b"v" * 100 for k in keys})
        mget = b"".join(get(k, Opcode.GETKQ, i) for i, k in enumerate(keys)) + SENTINEL
        text = b"get " + b" ".join(keys) + b"\r\n" + wire.SENTINEL
        runs = {"binary getkq, batched": (batched, mget, SENTINEL_REPLY),
                "binary getkq, one request per frame": (single, mget, SENTINEL_REPLY),
                "text get of the same keys": (batched, text, wire.SENTINEL_REPLY)}
        figures: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, (proxy, request, end) in runs.items():
                figures[name].append(per_key_us(proxy, request, end, len(keys)))
    for name, values in figures.items():
        print(f"{name}: median {statistics.median(values):.1f} us a key "
              f"(min {min(values):.1f}, max {max(values):.1f})")


if __name__ == "__main__":
    main()
