"""Draw docs/scaling.md's figures as an SVG from many_failovers.py's --json: etcd's request
rate at idle and during the failovers, per node at idle, and each victim shard's time from
the fault to its first acknowledged write. Uses plot_svg.py's bars (standard library only):

    python bench/plot_scaling.py docs/bench/many-failovers.json docs/bench/scaling.svg
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from plot_svg import bars

WIDTH = 300


def render(doc: dict[str, Any]) -> str:
    etcd = doc["etcd"]
    backends = doc["nodes"]
    idle, proxy = etcd["idle_backends"]["requests_per_s"], etcd["idle_with_proxy"]["requests_per_s"]
    shards = len(doc["other_shards_gap_ms"]) + len(doc["victims"])
    panels = [
        bars("etcd requests/s (all members)", "", {
            f"idle, {backends} backends": idle,
            "idle, + 1 proxy": proxy,
            f"{len(doc['victims'])} failovers": etcd["during_failovers"]["requests_per_s"],
        }, 0, WIDTH),
        bars("etcd requests/min per node, idle", "", {
            "backend": round(idle / backends * 60), "proxy": round((proxy - idle) * 60)},
            WIDTH + 30, WIDTH),
        bars("fault -> first write (ms)", "", {
            r["shard"]: r["first_write_ms"] for r in doc["victims"]}, 2 * (WIDTH + 30), WIDTH),
    ]
    caption = (f"{shards} shards x {doc['settings']['replicas']}, "
               f"{doc['settings']['etcd_members']} etcd member(s); load average at the fault "
               f"{doc['load_average_fault']}")
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{3 * WIDTH + 60}" height="290" '
        'font-family="sans-serif">', *panels,
        f'<text x="4" y="284" font-size="11">{caption}</text>', "</svg>"]) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: plot_scaling.py MANY_FAILOVERS.json OUT.svg", file=sys.stderr)
        return 2
    Path(argv[1]).write_text(render(json.loads(Path(argv[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
