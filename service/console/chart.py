"""The dashboard's chart: assignments and sales per minute, as inline SVG.

Drawn on the server from ``domain.activity.per_minute``: no chart library, no
script, nothing loaded; the page's policy allows it as it is (SVG presentation
attributes, no style attributes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..domain.activity import Minute

WIDTH, HEIGHT = 640, 190
LEFT, RIGHT, TOP, BOTTOM = 44, 24, 12, 30
PLOT_W = WIDTH - LEFT - RIGHT
PLOT_H = HEIGHT - TOP - BOTTOM


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    kind: str  # "assigned" or "sold"
    label: str  # e.g. "14:05 UTC: 4 assigned"


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    assigned: int
    sold: int
    summary: str
    busy_minutes: list[Minute]


def nice_top(value: int) -> int:
    """A round top for the axis: 1, 2, 5, 10, 20, 50..."""
    candidate = 1
    while True:
        for factor in (1, 2, 5):
            if candidate * factor >= value:
                return candidate * factor
        candidate *= 10


def draw(minutes: Sequence[Minute]) -> Chart:
    count = max(len(minutes), 1)
    top = nice_top(max([m.assigned for m in minutes] + [m.sold for m in minutes] + [1]))
    slot = PLOT_W / count
    bar_width = max(slot / 2 - 0.5, 1.0)
    bars: list[Bar] = []
    for index, minute in enumerate(minutes):
        stamp = minute.start.strftime("%H:%M UTC")
        for offset, kind, value in ((0.0, "assigned", minute.assigned), (1.0, "sold", minute.sold)):
            if not value:
                continue
            height = PLOT_H * value / top
            bars.append(
                Bar(
                    x=round(LEFT + index * slot + offset * bar_width + 0.25, 2),
                    y=round(TOP + PLOT_H - height, 2),
                    width=round(bar_width, 2),
                    height=round(height, 2),
                    kind=kind,
                    label=f"{stamp}: {value} {kind}",
                )
            )
    y_ticks = [
        Tick(round(TOP + PLOT_H - PLOT_H * value / top, 2), str(value))
        for value in sorted({0, top // 2, top} if top > 1 else {0, 1})
    ]
    x_ticks = [
        Tick(round(LEFT + (count - ago) * slot + slot / 2, 2), "now" if ago == 1 else f"−{ago} min")
        for ago in (count, 45, 30, 15, 1)
        if ago <= count
    ]
    assigned = sum(m.assigned for m in minutes)
    sold = sum(m.sold for m in minutes)
    summary = f"In the last {count} minutes: {assigned} assigned, {sold} sold."
    busiest = max(minutes, key=lambda m: m.assigned + m.sold, default=None)
    if busiest is not None and busiest.assigned + busiest.sold:
        summary += (
            f" Busiest minute: {busiest.start.strftime('%H:%M UTC')}, with"
            f" {busiest.assigned} assigned and {busiest.sold} sold."
        )
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        top=TOP,
        plot_width=PLOT_W,
        plot_height=PLOT_H,
        bars=bars,
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        assigned=assigned,
        sold=sold,
        summary=summary,
        busy_minutes=[m for m in minutes if m.assigned or m.sold],
    )
