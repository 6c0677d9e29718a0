"""Content preflight time per campaign: Warta's own rules alone, and with a real spamd.

Each run is the whole schedule-time check of one stored campaign: load and compile its
content, build the real message for a sample recipient (a ~25 KB tracked newsletter with
40 links), run Warta's rules, ask spamd (when there is one), and store the report. Targets
(the Content safety issue): under 50 ms without spamd, under 1 s with it. spamd runs with
Debian's stock rules and no network tests, as in the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.results import Row

TARGET_RULES = 0.050
TARGET_SPAMD = 1.0
PARAGRAPH = (
    "<p>After months of debate the council approved the plan on Tuesday. Residents along "
    'the route welcome the quieter streets; <a href="https://news.example/story/{n}">read '
    'the whole story</a> or the <a href="https://news.example/archive/{n}">archive</a>.</p>\n'
)
FOOTER = (
    "<p>Warta News, 1 Example Street, Springfield</p>"
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
)


def newsletter() -> str:
    """A ~25 KB HTML newsletter with 40 distinct links and an unsubscribe footer."""
    body = "".join(PARAGRAPH.format(n=n) for n in range(20)) * 3
    return f"<html><body><h1>Hello {{{{ subscriber.name }}}}</h1>{body}{FOOTER}</body></html>"


async def timings(
    directory: Path, runs: int, spamd: str, *, schedule: str = ""
) -> tuple[list[float], list[float]]:
    """(wall, this process's CPU) seconds per preflight of one campaign, `runs` times.

    The CPU figure does not count spamd's work (another process) but, unlike the wall
    time, does not grow when other programs share the cores. With `schedule`, each run is
    the schedule route's content checks: the render check, then the preflight, which
    reuses the render check's compiled campaign (`once`) or compiles it again (`twice`,
    as before).
    """
    from app.core.database import create_engine, create_sessionmaker
    from app.core.migrate import upgrade_async
    from app.core.settings import Settings
    from app.models import Campaign, CampaignList, MailingList
    from campaigns import content, preflight

    url = f"sqlite+aiosqlite:///{directory / f'bench-{uuid.uuid4().hex}.db'}"
    await upgrade_async(url)
    settings = Settings(
        database_url=url,
        var_dir=directory / "var",
        secret_key="bench-" + "x" * 40,
        spamd=spamd,
        _env_file=None,  # type: ignore[call-arg]
    )
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session:
        news = MailingList(name="bench")
        campaign = Campaign(
            name="bench", subject="This week in the city", from_email="news@news.example",
            html=newsletter(), text="", tracking=True,
        )  # fmt: skip
        session.add_all([news, campaign])
        await session.flush()
        session.add(CampaignList(campaign_id=campaign.id, list_id=news.id))
        await session.commit()
        campaign_id = campaign.id
    seconds, cpu = [], []
    for _ in range(runs):
        async with sessionmaker() as session:
            loaded = await session.get(Campaign, campaign_id)
            assert loaded is not None
            started, cpu_started = time.perf_counter(), time.process_time()
            prepared = None
            if schedule:
                prepared = await content.check_renders(session, settings, loaded)
            report = await preflight.check(
                session,
                settings,
                loaded,
                "check",
                prepared=prepared if schedule == "once" else None,
            )
            await session.commit()
            seconds.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
    assert report.spamd == ("scored" if spamd else "not configured"), report.spamd
    await engine.dispose()
    return seconds, cpu


def tree_cpu(root: int) -> float:
    """CPU seconds used so far by process `root` and its live children (spamd's workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        pid, parent = int(stat.parent.name), int(fields[1])
        if root in (pid, parent):
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _row(figure: str, measured: tuple[list[float], list[float]], target: float) -> Row:
    seconds, cpu = measured
    median = statistics.median(seconds)
    p95 = sorted(seconds)[max(0, int(len(seconds) * 0.95) - 1)]
    value = (
        f"{median * 1000:.1f} ms median, {p95 * 1000:.1f} ms p95, "
        f"{statistics.median(cpu) * 1000:.1f} ms CPU in Warta ({len(seconds)} runs)"
    )
    return Row(figure, f"< {target * 1000:.0f} ms", value, met=median < target)


def main(argv: list[str] | None = None) -> list[Row]:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    args = parser.parse_args(argv)
    runs = 10 if args.quick else 50
    rows = []
    with tempfile.TemporaryDirectory(prefix="warta-preflight-bench-") as tmp:
        rules_only = asyncio.run(timings(Path(tmp), runs, ""))
        rows.append(_row("preflight per campaign, Warta's rules only", rules_only, TARGET_RULES))
        print(rows[-1].figure, rows[-1].value, flush=True)
        # The schedule route's render check + preflight, compiled twice (as before) and once,
        # alternating so that both see the same load.
        twice: tuple[list[float], list[float]] = ([], [])
        once: tuple[list[float], list[float]] = ([], [])
        for _ in range(max(1, runs // 10)):
            for mode, into in (("twice", twice), ("once", once)):
                wall, cpu = asyncio.run(timings(Path(tmp), 10, "", schedule=mode))
                into[0].extend(wall)
                into[1].extend(cpu)
        for mode, measured in (("twice", twice), ("once", once)):
            figure = f"schedule content checks (render check + preflight), compiled {mode}"
            rows.append(_row(figure, measured, TARGET_RULES))
            print(rows[-1].figure, rows[-1].value, flush=True)
        try:
            # The throwaway spamd the tests use: stock rules, no network tests.
            from tests.helpers.daemons import SpamdServer

            server = SpamdServer()
            server.start()
        except Exception as exc:
            rows.append(Row("preflight per campaign, with spamd", "< 1000 ms", f"skipped: {exc}"))
        else:
            spamd_runs = max(5, runs // 2)
            try:
                asyncio.run(timings(Path(tmp), 1, server.address))  # spamd's children warm up
                cpu_before = tree_cpu(server.pid)
                with_spamd = asyncio.run(timings(Path(tmp), spamd_runs, server.address))
                spamd_cpu = (tree_cpu(server.pid) - cpu_before) / spamd_runs
            finally:
                server.stop()
            rows.append(_row("preflight per campaign, with spamd", with_spamd, TARGET_SPAMD))
            rows[-1].value += f", {spamd_cpu * 1000:.0f} ms CPU in spamd"
            print(rows[-1].figure, rows[-1].value, flush=True)
    return rows


if __name__ == "__main__":
    for row in main():
        print(row)
