"""CSV import throughput and memory: a generated file of email, name and 3 attributes.

The target case is the plain import (an upsert by email) of 100,000 rows; the same file
imported onto one list is measured beside it, since each membership is a second insert
with two foreign-key checks. Each case runs in a fresh child process and reports its own
peak RSS (VmHWM): the import is flat in memory when the 100,000-row peak is no higher than
the 20,000-row one. PostgreSQL runs with fsync and synchronous_commit on, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.results import Row

ROOT = Path(__file__).resolve().parent.parent
ROWS = (20_000, 100_000)
QUICK_ROWS = (4_000, 20_000)
TARGETS = {"sqlite": 10_000, "postgresql": 20_000}
CITIES = ("Oslo", "Lagos", "Lima", "Hanoi", "Quito", "Perth", "Tunis", "Riga")
PLANS = ("free", "pro", "team")
DOMAINS = ("example.com", "mail.example.org", "example.net", "corp.example")


@dataclass(frozen=True)
class Result:
    """One measured import."""

    backend: str
    rows: int
    lists: int
    seconds: float
    rss_before_mb: float
    peak_rss_mb: float
    imported: int
    failed: int

    @property
    def rate(self) -> float:
        """Rows per second."""
        return self.rows / self.seconds


def generate(path: Path, rows: int) -> None:
    """A CSV like a real export: mixed-case addresses, names, three attribute columns."""
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["Email", "Name", "city", "plan", "signup_date"])
        for i in range(rows):
            writer.writerow(
                [
                    f"User.{i}.Name@{DOMAINS[i % len(DOMAINS)]}",
                    f"User Number {i}",
                    CITIES[i % len(CITIES)],
                    PLANS[i % len(PLANS)],
                    f"2024-{i % 12 + 1:02}-{i % 28 + 1:02}",
                ]
            )


def _memory_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process; unlike ru_maxrss, not inherited."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(backend: str, database_url: str, csv_path: Path, rows: int, lists: int) -> Result:
    """Migrate, create the lists, import the file; runs inside the child process."""
    from app.audience.imports import import_file
    from app.core.database import create_engine, create_sessionmaker, unit_of_work
    from app.core.migrate import upgrade
    from app.core.settings import Settings
    from app.models import ImportStatus, MailingList

    upgrade(database_url)
    settings = Settings(
        database_url=database_url,
        var_dir=csv_path.parent / "var",
        secret_key="bench-" + "x" * 40,
        _env_file=None,  # type: ignore[call-arg]
    )

    async def run() -> tuple[float, Any]:
        engine = create_engine(settings)
        async with unit_of_work(create_sessionmaker(engine)) as session:
            created = [MailingList(name=f"list {n}") for n in range(lists)]
            session.add_all(created)
            await session.flush()
            list_ids = [item.id for item in created]
        await engine.dispose()
        started = time.perf_counter()
        job = await import_file(settings, csv_path, list_ids, "subscribe", "confirmed", None)
        return time.perf_counter() - started, job

    rss_before = _memory_mb("VmRSS")
    seconds, job = asyncio.run(run())
    assert job.status is ImportStatus.finished, job.error
    return Result(
        backend,
        rows,
        lists,
        seconds,
        rss_before,
        _memory_mb("VmHWM"),
        job.rows_imported,
        job.rows_failed,
    )


def _child(backend: str, database_url: str, csv_path: Path, rows: int, lists: int) -> Result:
    arguments = [backend, database_url, str(csv_path), str(rows), str(lists)]
    output = subprocess.run(
        [sys.executable, "-m", "bench.import_bench", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if output.returncode != 0:
        raise RuntimeError(f"{backend} {rows} rows failed:\n{output.stdout}{output.stderr}")
    return Result(**json.loads(output.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> list[Row]:
    """Run every case, print the table, and return the summary's rows."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS} rows")
    args = parser.parse_args(argv if argv is not None else [])
    sizes = QUICK_ROWS if args.quick else ROWS
    # (rows, lists): the memory comparison, the target case, the target case onto a list.
    cases = ((sizes[0], 0), (sizes[1], 0), (sizes[1], 1))
    sys.path.insert(0, str(ROOT))
    from tests.helpers.servers import PostgresServer

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="warta-bench-") as tmp:
        workdir = Path(tmp)
        files = {rows: workdir / f"subscribers-{rows}.csv" for rows in sizes}
        for rows, path in files.items():
            generate(path, rows)
        for number, (rows, lists) in enumerate(cases):
            url = f"sqlite+aiosqlite:///{workdir / f'bench-{number}.db'}"
            results.append(_child("sqlite", url, files[rows], rows, lists))
        durable = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
        with PostgresServer(settings=durable) as server:
            for number, (rows, lists) in enumerate(cases):
                url = server.create_database(f"bench_{number}")
                results.append(_child("postgresql", url, files[rows], rows, lists))
    _print(results, sizes)
    return _rows(results, sizes)


def _rows(results: list[Result], sizes: tuple[int, int]) -> list[Row]:
    rows: list[Row] = []
    for backend, target in TARGETS.items():
        plain = next(
            r for r in results if r.backend == backend and r.rows == sizes[1] and not r.lists
        )
        listed = next(r for r in results if r.backend == backend and r.lists)
        small = next(r for r in results if r.backend == backend and r.rows == sizes[0])
        rows.append(
            Row(
                f"CSV import, {sizes[1]:,} rows (email, name, 3 attributes), {backend}",
                f"≥ {target:,} rows/s",
                f"{plain.rate:,.0f} rows/s; {listed.rate:,.0f} rows/s onto a list; peak RSS "
                f"{small.peak_rss_mb:.0f} MB at {sizes[0]:,} rows, {plain.peak_rss_mb:.0f} MB "
                f"at {sizes[1]:,}",
                "—",
                plain.rate >= target,
            )
        )
    return rows


def _print(results: list[Result], sizes: tuple[int, int]) -> None:
    print("CSV import: email, name, 3 attributes; upsert by email; chunks of 5,000 rows")
    print(
        f"{'backend':<11} {'rows':>8} {'lists':>5} {'seconds':>8} {'rows/s':>8} "
        f"{'target':>15} {'RSS before':>10} {'peak RSS':>9} {'growth':>8}"
    )
    for r in results:
        target = "-"
        if not r.lists:
            met = "ok" if r.rate >= TARGETS[r.backend] else "MISSED"
            target = f">={TARGETS[r.backend]:,} {met}"
        print(
            f"{r.backend:<11} {r.rows:>8,} {r.lists:>5} {r.seconds:>8.2f} {r.rate:>8,.0f} "
            f"{target:>15} {r.rss_before_mb:>7.1f} MB {r.peak_rss_mb:>6.1f} MB "
            f"{r.peak_rss_mb - r.rss_before_mb:>5.1f} MB"
        )
    for backend in TARGETS:
        peaks = {r.rows: r.peak_rss_mb for r in results if r.backend == backend and not r.lists}
        if len(peaks) == len(sizes):
            small, large = (peaks[rows] for rows in sizes)
            print(
                f"{backend}: peak RSS {small:.1f} MB at {sizes[0]:,} rows, {large:.1f} MB at "
                f"{sizes[1]:,} rows ({large - small:+.1f} MB for {sizes[1] // sizes[0]}x the rows)"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="One import case (used by main()).")
    parser.add_argument("backend")
    parser.add_argument("database_url")
    parser.add_argument("csv_path", type=Path)
    parser.add_argument("rows", type=int)
    parser.add_argument("lists", type=int)
    args = parser.parse_args()
    result = measure(args.backend, args.database_url, args.csv_path, args.rows, args.lists)
    print(json.dumps(asdict(result)))
