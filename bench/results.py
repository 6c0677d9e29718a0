"""What a benchmark hands back to `bench/run.py`: one `Row` per figure, for the summary table.

The Performance issue's figures carry a `key` (see `ISSUE_FIGURES`) so that the summary lists
them first and in the issue's order, whichever benchmark ran first; every other figure
follows in the order it was measured.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from bench.machine import cores

ISSUE_FIGURES = {
    "campaign": "campaign end to end through `warta mta` vs Postfix (bench.pipeline_bench)",
    "acceptance": "MTA acceptance with fsync, 10 sessions, vs Postfix (bench.mta_bench)",
    "relay": "MTA relay to smtp-sink with DKIM vs Postfix unsigned (bench.mta_bench)",
    "transactional-rate": "`POST /messages` accepted/s (bench.transactional_bench)",
    "transactional-latency": "202 → sink p99 under a campaign (bench.transactional_bench)",
    "cpu": "CPU per campaign message (bench.pipeline_bench)",
    "rss": "worker and MTA peak RSS (bench.pipeline_bench)",
    "resume": "SIGKILLed workers' batches resumed (bench.resume_bench)",
    "embedded": "the embedded defaults, `make run` (bench.embedded_bench)",
}
"""The Performance issue's table, row by row (acceptance has two rows), in its order."""


def load_average() -> float:
    """The machine's 1-minute load average now."""
    return os.getloadavg()[0]


@dataclass
class Row:
    """One figure: what was measured, its target, the peer's figure from the same run, met?"""

    figure: str
    target: str
    value: str
    peer: str = "—"
    met: bool | None = None
    """None when the figure has no target (informational)."""
    key: str = ""
    """One of ISSUE_FIGURES for the issue's rows, else empty."""
    load: tuple[float, float] = field(default=(0.0, 0.0))
    """1-minute load average when the benchmark that measured it started and ended."""

    @property
    def verdict(self) -> str:
        """met / NOT met / — for the table."""
        return "—" if self.met is None else ("met" if self.met else "**NOT met**")


def _rank(row: Row, position: int) -> tuple[int, int]:
    keys = list(ISSUE_FIGURES)
    return (keys.index(row.key) if row.key in keys else len(keys)), position


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def summary(rows: Iterable[Row], load: tuple[float, float], machine: str = "") -> str:
    """The summary as a Markdown table (so it can be pasted into docs/performance.md).

    Every figure of the issue's table gets a row: one that was not measured (its benchmark
    failed or was left out) says so.
    """
    listed = list(rows)
    measured = {row.key for row in listed}
    listed += [
        Row(name, "—", "not measured in this run", key=key)
        for key, name in ISSUE_FIGURES.items()
        if key not in measured
    ]
    ordered = [r for _, r in sorted(enumerate(listed), key=lambda item: _rank(item[1], item[0]))]
    lines = [
        f"load average (1 min): {load[0]:.2f} at the start, {load[1]:.2f} at the end; "
        f"{cores()} cores",
        *([f"machine: {machine}"] if machine else []),
        "",
        "| figure | target | value | peer, same run | met | load (start → end) |",
        "|---|---|---|---|---|---|",
    ]
    for row in ordered:
        load_cell = f"{row.load[0]:.1f} → {row.load[1]:.1f}" if any(row.load) else "—"
        cells = (row.figure, row.target, row.value, row.peer, row.verdict, load_cell)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)
