"""The overview's chart of jobs finished per minute, as numbers: where each bar and tick goes.

The SVG itself is written by a template (admin/jobs/queuestate/chart.svg.html), which
escapes whatever text goes in; this module only does the geometry, so it can be read
and tested as plain numbers. Stacked bars per minute (successful below, failed on top),
a y axis of round steps, a label under every tenth minute counted back from now.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

WIDTH, HEIGHT = 720, 180
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 24  # margins: the y labels on the left, the x labels below
LABEL_EVERY = 10  # minutes between two x labels


def axis(peak: int) -> tuple[int, int]:
    """(tick step, top) for a y axis: 1, 2 or 5 times a power of ten, at most 5 ticks, some headroom."""
    target = max(peak * 1.1, 4)
    magnitude = 1
    while True:
        for step in (magnitude, 2 * magnitude, 5 * magnitude):
            ticks = math.ceil(target / step)
            if ticks <= 5:
                return step, ticks * step
        magnitude *= 10


@dataclass(frozen=True)
class Tick:
    value: int
    y: float  # the grid line
    label_y: float  # the baseline of its label, centred on the line


@dataclass(frozen=True)
class Bar:
    minute: datetime
    successful: int
    failed: int
    slot_x: float  # the hover area: the whole slot, full height
    x: float
    ok_y: float  # top of the successful part; its height is ok_height
    ok_height: float
    bad_y: float  # top of the failed part, stacked on the successful one
    bad_height: float
    minutes_ago: int | None  # the x label under this bar (0: "now"), every LABEL_EVERY minutes
    label_x: float


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    right: int  # x of the plot's right edge
    tick_label_x: int  # where the y labels end (they are right-aligned)
    top: int
    plot_height: int
    base_y: float  # the zero line
    label_y: int  # baseline of the x labels
    slot_width: float
    bar_width: float
    ticks: tuple[Tick, ...]
    bars: tuple[Bar, ...]


def throughput_chart(minutes: list[tuple[datetime, int, int]], *, width: int = WIDTH,
                     height: int = HEIGHT) -> Chart:
    """The chart of ``minutes`` (``(minute, successful, failed)``, oldest first, the last one now)."""
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    step, ceiling = axis(max((ok + bad for _, ok, bad in minutes), default=0))
    n = max(len(minutes), 1)
    slot = plot_w / n
    bar_w = max(slot - 2, 1)

    def y(value: float) -> float:
        return round(TOP + plot_h - value / ceiling * plot_h, 1)

    bars = []
    for index, (minute, ok, bad) in enumerate(minutes):
        x = LEFT + index * slot + 1
        back = n - 1 - index
        bars.append(Bar(minute=minute, successful=ok, failed=bad, slot_x=round(x - 1, 1), x=round(x, 1),
                        ok_y=y(ok), ok_height=round(y(0) - y(ok), 1),
                        bad_y=y(ok + bad), bad_height=round(y(ok) - y(ok + bad), 1),
                        minutes_ago=back if back % LABEL_EVERY == 0 else None, label_x=round(x + bar_w / 2, 1)))
    ticks = tuple(Tick(value, y(value), round(y(value) + 4, 1)) for value in range(0, ceiling + 1, step))
    return Chart(width=width, height=height, left=LEFT, right=width - RIGHT, tick_label_x=LEFT - 6, top=TOP,
                 plot_height=plot_h, base_y=y(0), label_y=height - 6, slot_width=round(slot, 1),
                 bar_width=round(bar_w, 1), ticks=ticks, bars=tuple(bars))
