"""The settings memcached lets a client change at run time, as `stats settings` reports them.

memring keeps one LRU and no slab pages, so the LRU segments, the crawler's pacing and the
slab mover tune nothing here: the values are kept so that `lru`, `lru_crawler` and `slabs
automove` answer as memcached 1.6.18 does and `stats settings` shows what a client set.
Defaults are memcached's (memcached.c settings_init with its default -o options).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RuntimeSettings:
    lru_crawler: bool = True  # `lru_crawler enable|disable`; off: crawl and metadump refused
    lru_crawler_sleep: int = 100
    lru_crawler_tocrawl: int = 0
    lru_segmented: bool = True  # `lru mode flat|segmented`
    hot_lru_pct: int = 20  # `lru tune`
    warm_lru_pct: int = 40
    hot_max_factor: float = 0.2
    warm_max_factor: float = 2.0
    temp_lru: bool = False  # `lru temp_ttl` (negative: off)
    temporary_ttl: int = 61
    slab_automove: int = 1  # `slabs automove 0|1|2`
    slab_automove_ratio: float = 0.8
