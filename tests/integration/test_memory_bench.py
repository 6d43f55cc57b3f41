"""bench/memory.py's fill and figures on a small scale: both servers keep every item offered
and report the same `bytes` for them (memring's accounting follows memcached's item size, so
the benchmark's items-kept and `bytes` columns compare like with like), and RSS is read."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench" / "memory.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("memory_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("value_size", [10, 10_000])
def test_same_items_same_bytes(value_size: int) -> None:
    bench = load_bench()
    count = 2_000
    results = {kind: bench.measure(kind, "test", value_size, count, 64, flush_wait=0)
               for kind in ("memcached", "memring")}
    for m in results.values():
        assert m.kept == count
        assert m.evictions == 0
        assert m.full_rss > m.idle_rss > 0
    assert results["memring"].bytes == results["memcached"].bytes
