"""Charts as server-rendered SVG: no script, readable by screen readers (title, desc), and
always paired with a data table in the page. Colours come from classes in admin.css."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from markupsafe import Markup, escape

WIDTH, HEIGHT = 600, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 28


@dataclass(frozen=True)
class Series:
    """One line: a value per day (None where there is nothing to show, e.g. a rate of 0/0)."""

    label: str
    values: Sequence[float | None]


@dataclass(frozen=True)
class Threshold:
    """A horizontal line a series should stay under, e.g. the 0.3 % complaint limit."""

    label: str
    value: float
    soft: bool = False


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (a readable axis top)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def format_value(value: float, percent: bool) -> str:
    """A figure as the axis and the table show it."""
    if percent:
        return f"{value * 100:.2f} %".replace(".00 %", " %")
    return f"{value:,.0f}"


def line_chart(
    chart_id: str,
    title: str,
    description: str,
    days: Sequence[date],
    series: Sequence[Series],
    thresholds: Sequence[Threshold] = (),
    *,
    percent: bool = False,
) -> Markup:
    """An SVG line chart of `series` over `days`, with thresholds drawn as dashed lines."""
    plotted = [v for s in series for v in s.values if v is not None]
    top = nice_ceiling(max([*plotted, *(t.value * 1.25 for t in thresholds), 0.0]))
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = inner_w / max(len(days) - 1, 1)

    def x(i: int) -> float:
        return LEFT + i * step

    def y(value: float) -> float:
        return TOP + inner_h * (1 - min(value, top) / top)

    parts = [
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{chart_id}-title {chart_id}-desc" focusable="false">',
        f'<title id="{chart_id}-title">{escape(title)}</title>',
        f'<desc id="{chart_id}-desc">{escape(description)}</desc>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        level = y(top * fraction)
        parts.append(
            f'<line class="grid" x1="{LEFT}" y1="{level:.1f}" x2="{WIDTH - RIGHT}" y2="{level:.1f}"/>'
        )
        parts.append(
            f'<text class="label" x="{LEFT - 6}" y="{level + 4:.1f}" text-anchor="end">'
            f"{escape(format_value(top * fraction, percent))}</text>"
        )
    parts.append(
        f'<line class="axis" x1="{LEFT}" y1="{TOP + inner_h}" x2="{WIDTH - RIGHT}" '
        f'y2="{TOP + inner_h}"/>'
    )
    if days:
        for i in sorted({0, len(days) // 2, len(days) - 1}):
            anchor = "start" if i == 0 else ("end" if i == len(days) - 1 else "middle")
            parts.append(
                f'<text class="label" x="{x(i):.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">'
                f"{days[i].strftime('%d %b')}</text>"
            )
    for threshold in thresholds:
        level = y(threshold.value)
        css = "threshold-soft" if threshold.soft else "threshold"
        parts.append(
            f'<line class="{css}" x1="{LEFT}" y1="{level:.1f}" x2="{WIDTH - RIGHT}" '
            f'y2="{level:.1f}"><title>{escape(threshold.label)}</title></line>'
        )
        if len(thresholds) == 1:  # several close lines would overprint: the legend names them
            parts.append(
                f'<text class="threshold-label" x="{WIDTH - RIGHT - 4}" y="{level - 4:.1f}" '
                f'text-anchor="end">{escape(threshold.label)}</text>'
            )
    for index, line in enumerate(series):
        for run in _runs(line.values):
            points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in run)
            if len(run) == 1:
                i, v = run[0]
                parts.append(
                    f'<circle class="s{index % 4}" cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5"/>'
                )
            else:
                parts.append(f'<polyline class="line s{index % 4}" points="{points}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text part above is escaped


def _runs(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """Consecutive days with a value; a gap (None) breaks the line."""
    runs: list[list[tuple[int, float]]] = [[]]
    for i, value in enumerate(values):
        if value is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((i, value))
    return [run for run in runs if run]
