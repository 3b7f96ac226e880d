"""The admin's queue overview: the shared snapshot (jobs/stats.py) and its SVG chart.

What the page shows is read by ``jobs.stats.snapshot`` in a handful of index-bounded
queries, the same snapshot ``manage.py jobs_status`` and the metrics view read; this
module adds only what is particular to the page. Nothing is cached: the page shows
the database as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from . import stats
from .stats import configured_queues, database_backends, stale_after  # noqa: F401  (the admin reads them here)

CHART_MINUTES = stats.THROUGHPUT_MINUTES
TOP_FAILING = 10


@dataclass
class Overview(stats.Snapshot):
    @property
    def top_failing(self) -> list[dict]:
        """The tasks failing most in the last 24 hours."""
        return self.failing[:TOP_FAILING]

    @property
    def chart(self) -> SafeString:
        return throughput_svg(self.minutes)


def build(now: datetime) -> Overview:
    return Overview(**vars(stats.snapshot(now)))


# -- the chart ---------------------------------------------------------------------------

def _axis(peak: int) -> tuple[int, int]:
    """(tick step, top) for a y axis: 1, 2 or 5 times a power of ten, at most 5 ticks, some headroom."""
    target = max(peak * 1.1, 4)
    magnitude = 1
    while True:
        for step in (magnitude, 2 * magnitude, 5 * magnitude):
            ticks = math.ceil(target / step)
            if ticks <= 5:
                return step, ticks * step
        magnitude *= 10


def throughput_svg(minutes: list[tuple[datetime, int, int]], *, width: int = 720, height: int = 180) -> SafeString:
    """Stacked bars per minute (successful below, failed on top), with axes and native tooltips.

    Plain SVG with classes that the admin stylesheet colours (light and dark themes),
    so it needs no JavaScript and no chart library. Only numbers and escaped text go in.
    """
    left, right, top, bottom = 44, 8, 10, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    step, ceiling = _axis(max((ok + bad for _, ok, bad in minutes), default=0))
    n = max(len(minutes), 1)
    slot = plot_w / n
    bar_w = max(slot - 2, 1)

    def y(value: float) -> float:
        return top + plot_h - value / ceiling * plot_h

    parts = [f'<svg class="jobs-chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Jobs finished per minute over the last hour">']
    for value in range(0, ceiling + 1, step):  # horizontal grid lines and the y axis labels
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(value):.1f}" y2="{y(value):.1f}"/>'
                     f'<text class="axis" x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value}</text>')
    for index, (minute, ok, bad) in enumerate(minutes):
        x = left + index * slot + 1
        label = escape(f"{minute:%H:%M}  {ok} successful, {bad} failed")
        parts.append(f'<g><title>{label}</title>'
                     f'<rect class="hover" x="{x - 1:.1f}" y="{top}" width="{slot:.1f}" height="{plot_h}"/>')
        if ok:
            parts.append(f'<rect class="ok" x="{x:.1f}" y="{y(ok):.1f}" width="{bar_w:.1f}" '
                         f'height="{y(0) - y(ok):.1f}"/>')
        if bad:
            parts.append(f'<rect class="bad" x="{x:.1f}" y="{y(ok + bad):.1f}" width="{bar_w:.1f}" '
                         f'height="{y(ok) - y(ok + bad):.1f}"/>')
        parts.append("</g>")
        back = n - 1 - index
        if back % 10 == 0:
            text = "now" if back == 0 else f"&#8722;{back} min"
            parts.append(f'<text class="axis" x="{x + bar_w / 2:.1f}" y="{height - 6}" '
                         f'text-anchor="middle">{text}</text>')
    parts.append(f'<line class="base" x1="{left}" x2="{width - right}" y1="{y(0):.1f}" y2="{y(0):.1f}"/></svg>')
    return mark_safe("".join(parts))
