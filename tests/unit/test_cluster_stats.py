"""How the proxy merges the shard leaders' `stats` lines (proxy/cluster_stats.py)."""

from __future__ import annotations

import pytest

from memring.protocol.responses import Stat
from memring.proxy.cluster_stats import SUMMED_STATS, by_class, leaders_stats

pytestmark = pytest.mark.unit


def stats(*pairs: tuple[str, str]) -> list[Stat]:
    return [Stat(name.encode(), value.encode()) for name, value in pairs]


def test_general_counters_are_summed_in_memcacheds_order() -> None:
    one = stats(("pid", "10"), ("curr_items", "3"), ("cmd_get", "7"), ("version", "1.6.18"),
                ("bytes", "100"))
    two = stats(("pid", "20"), ("bytes", "50"), ("cmd_get", "1"), ("curr_items", "2"),
                ("threads", "4"))
    merged = leaders_stats([one, two], SUMMED_STATS)
    assert merged == [("cmd_get", 8), ("bytes", 150), ("curr_items", 5)]  # SUMMED_STATS order
    assert leaders_stats([], SUMMED_STATS) == []  # no leader answered: no figure invented


def test_per_class_lines_sum_but_constants_and_ages_take_the_maximum() -> None:
    one = stats(("items:1:number", "2"), ("items:1:age", "30"), ("items:12:number", "1"),
                ("items:12:evicted_time", "5"))
    two = stats(("items:2:number", "4"), ("items:1:number", "3"), ("items:1:age", "10"))
    assert by_class([one, two]) == [
        ("items:1:number", 5), ("items:1:age", 30), ("items:2:number", 4),
        ("items:12:number", 1), ("items:12:evicted_time", 5)]
    slabs = by_class([stats(("1:chunk_size", "96"), ("1:used_chunks", "2"),
                            ("active_slabs", "1"), ("total_malloced", "1048576")),
                      stats(("1:chunk_size", "96"), ("1:used_chunks", "5"),
                            ("active_slabs", "1"), ("total_malloced", "1048576"))])
    assert slabs == [("1:chunk_size", 96), ("1:used_chunks", 7), ("active_slabs", 2),
                     ("total_malloced", 2097152)]


def test_sizes_sum_per_size_and_text_lines_are_the_first_leaders() -> None:
    assert by_class([stats(("sizes_status", "disabled"))] * 2) == [("sizes_status", "disabled")]
    assert by_class([stats(("96", "2"), ("128", "1")), stats(("64", "1"), ("96", "1"))]) == \
        [("64", 1), ("96", 3), ("128", 1)]
