"""Draw a benchmark JSON (from backend_vs_memcached.py --json) as an SVG bar chart.

Standard library only, so `make bench` needs no plotting package:
    python bench/plot_svg.py docs/bench/backend-vs-memcached.json docs/bench/backend-vs-memcached.svg
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]


def bars(title: str, unit: str, values: dict[str, float], x0: int, width: int = 300) -> str:
    top = max(values.values()) or 1.0
    parts = [f'<text x="{x0 + width // 2}" y="20" text-anchor="middle" font-size="14">'
             f"{title}</text>"]
    slot = width // max(len(values), 1)
    for i, (name, value) in enumerate(values.items()):
        height = 200 * value / top
        x = x0 + i * slot + 10
        y = 230 - height
        parts.append(f'<rect x="{x}" y="{y:.1f}" width="{slot - 20}" height="{height:.1f}" '
                     f'fill="{COLOURS[i % len(COLOURS)]}"/>')
        parts.append(f'<text x="{x + (slot - 20) / 2:.0f}" y="{y - 4:.0f}" '
                     f'text-anchor="middle" font-size="11">{value:,.0f} {unit}</text>')
        parts.append(f'<text x="{x + (slot - 20) / 2:.0f}" y="248" text-anchor="middle" '
                     f'font-size="11">{name}</text>')
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: plot_svg.py RESULTS.json OUT.svg", file=sys.stderr)
        return 2
    median = json.loads(Path(argv[0]).read_text())["median"]
    svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="980" height="260" '
           'font-family="sans-serif">',
           bars("throughput (ops/s)", "", {k: v["ops_per_s"] for k, v in median.items()}, 0),
           bars("p50 latency (µs)", "", {k: v["p50_us"] for k, v in median.items()}, 330),
           bars("p99 latency (µs)", "", {k: v["p99_us"] for k, v in median.items()}, 660),
           "</svg>"]
    Path(argv[1]).write_text("\n".join(svg) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
