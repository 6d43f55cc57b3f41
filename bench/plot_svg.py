"""Draw a benchmark JSON as an SVG bar chart: throughput, p50 and p99 per server.

Reads either backend_vs_memcached.py's --json (one row of panels) or proxy_bench.py's
(one row per load, then one per `--workers` scaling load). Standard library only, so
`make bench` needs no plotting package:
    python bench/plot_svg.py docs/bench/backend-vs-memcached.json docs/bench/backend-vs-memcached.svg
    python bench/plot_svg.py /tmp/proxy.json /tmp/proxy.svg
"""

from __future__ import annotations

import json
import sys
from html import escape
from pathlib import Path
from typing import Any

COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
ROW = 260  # height of one row of panels
TITLE = 24  # height of a row's caption, when it has one


def bars(title: str, unit: str, values: dict[str, float], x0: int, width: int = 300,
         y0: int = 0) -> str:
    top = max(values.values()) or 1.0
    parts = [f'<text x="{x0 + width // 2}" y="{y0 + 20}" text-anchor="middle" font-size="14">'
             f"{title}</text>"]
    slot = width // max(len(values), 1)
    for i, (name, value) in enumerate(values.items()):
        height = 200 * value / top
        x = x0 + i * slot + 10
        y = y0 + 230 - height
        parts.append(f'<rect x="{x}" y="{y:.1f}" width="{slot - 20}" height="{height:.1f}" '
                     f'fill="{COLOURS[i % len(COLOURS)]}"/>')
        parts.append(f'<text x="{x + (slot - 20) / 2:.0f}" y="{y - 4:.0f}" '
                     f'text-anchor="middle" font-size="11">{value:,.0f} {unit}</text>')
        parts.append(f'<text x="{x + (slot - 20) / 2:.0f}" y="{y0 + 248}" text-anchor="middle" '
                     f'font-size="11">{escape(name)}</text>')
    return "\n".join(parts)


def panels(median: dict[str, dict[str, Any]], width: int, y0: int) -> list[str]:
    gap = width // 10
    return [bars(title, "", {k: v[metric] for k, v in median.items()}, i * (width + gap),
                 width, y0)
            for i, (title, metric) in enumerate((("throughput (ops/s)", "ops_per_s"),
                                                  ("p50 latency (µs)", "p50_us"),
                                                  ("p99 latency (µs)", "p99_us")))]


def render(doc: dict[str, Any]) -> str:
    """The SVG for a results document; one row of panels per load (or just `median`)."""
    if "loads" not in doc:
        return "\n".join(['<svg xmlns="http://www.w3.org/2000/svg" width="980" height="260" '
                          'font-family="sans-serif">', *panels(doc["median"], 300, 0),
                          "</svg>"]) + "\n"
    rows = [(s["title"], s["median"]) for s in doc["loads"].values() if s.get("median")]
    rows += [("memring --workers scaling (proxy unpinned), " + s["title"], s["median"])
             for s in doc.get("scaling", {}).values()
             if isinstance(s, dict) and s.get("median")]
    width = 100 * max((len(m) for _, m in rows), default=1)
    parts: list[str] = []
    y = 0
    for title, median in rows:
        parts.append(f'<text x="4" y="{y + 16}" font-size="13" font-weight="bold">'
                     f"{escape(title)}</text>")
        parts += panels(median, width, y + TITLE)
        y += TITLE + ROW
    total_w = 3 * width + 2 * (width // 10)
    return "\n".join([f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" '
                      f'height="{y}" font-family="sans-serif">', *parts, "</svg>"]) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: plot_svg.py RESULTS.json OUT.svg", file=sys.stderr)
        return 2
    Path(argv[1]).write_text(render(json.loads(Path(argv[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
