"""CSV import throughput and memory: 100,000 rows (email, name, 3 attributes) onto a list.

Each case runs in a fresh child process, so its peak RSS (ru_maxrss) is its own: the
import is flat in memory when the 100,000-row peak is no higher than the 20,000-row one.
PostgreSQL runs with fsync and synchronous_commit on, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ROWS = (20_000, 100_000)
TARGETS = {"sqlite": 10_000, "postgresql": 20_000}
CITIES = ("Oslo", "Lagos", "Lima", "Hanoi", "Quito", "Perth", "Tunis", "Riga")
PLANS = ("free", "pro", "team")
DOMAINS = ("example.com", "mail.example.org", "example.net", "corp.example")


@dataclass(frozen=True)
class Result:
    """One measured import."""

    backend: str
    rows: int
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


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(backend: str, database_url: str, csv_path: Path, rows: int) -> Result:
    """Migrate, create a list, import the file; runs inside the child process."""
    from app.database import create_engine, create_sessionmaker, unit_of_work
    from app.migrate import upgrade
    from app.models import ImportStatus, MailingList
    from app.services.imports import import_file
    from app.settings import Settings

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
            newsletter = MailingList(name="newsletter")
            session.add(newsletter)
            await session.flush()
            list_id = newsletter.id
        await engine.dispose()
        started = time.perf_counter()
        job = await import_file(settings, csv_path, [list_id], "subscribe", "confirmed", None)
        return time.perf_counter() - started, job

    rss_before = _rss_mb()
    seconds, job = asyncio.run(run())
    assert job.status is ImportStatus.finished, job.error
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return Result(backend, rows, seconds, rss_before, peak, job.rows_imported, job.rows_failed)


def _child(backend: str, database_url: str, csv_path: Path, rows: int) -> Result:
    output = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.import_bench",
            backend,
            database_url,
            str(csv_path),
            str(rows),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if output.returncode != 0:
        raise RuntimeError(f"{backend} {rows} rows failed:\n{output.stdout}{output.stderr}")
    return Result(**json.loads(output.stdout.strip().splitlines()[-1]))


def main() -> list[Result]:
    """Run every case and print the table."""
    sys.path.insert(0, str(ROOT))
    from tests.servers import PostgresServer

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="warta-bench-") as tmp:
        workdir = Path(tmp)
        files = {rows: workdir / f"subscribers-{rows}.csv" for rows in ROWS}
        for rows, path in files.items():
            generate(path, rows)
        for rows, path in files.items():
            url = f"sqlite+aiosqlite:///{workdir / f'bench-{rows}.db'}"
            results.append(_child("sqlite", url, path, rows))
        durable = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
        with PostgresServer(settings=durable) as server:
            for rows, path in files.items():
                url = server.create_database(f"bench_{rows}")
                results.append(_child("postgresql", url, path, rows))
    _print(results)
    return results


def _print(results: list[Result]) -> None:
    print("CSV import (email, name, 3 attributes; onto one list; batch 5,000 rows)")
    print(
        f"{'backend':<11} {'rows':>8} {'seconds':>8} {'rows/s':>8} {'target':>8} "
        f"{'RSS before':>11} {'peak RSS':>9} {'growth':>7}"
    )
    for r in results:
        verdict = "ok" if r.rate >= TARGETS[r.backend] else "MISSED"
        print(
            f"{r.backend:<11} {r.rows:>8,} {r.seconds:>8.2f} {r.rate:>8,.0f} "
            f"{TARGETS[r.backend]:>7,}{verdict[0]} {r.rss_before_mb:>9.1f}MB "
            f"{r.peak_rss_mb:>7.1f}MB {r.peak_rss_mb - r.rss_before_mb:>5.1f}MB"
        )
    for backend in TARGETS:
        peaks = {r.rows: r.peak_rss_mb for r in results if r.backend == backend}
        if len(peaks) == 2:
            small, large = (peaks[rows] for rows in ROWS)
            print(
                f"{backend}: peak RSS {small:.1f} MB at {ROWS[0]:,} rows, {large:.1f} MB at "
                f"{ROWS[1]:,} rows ({large - small:+.1f} MB for {ROWS[1] // ROWS[0]}x the rows)"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="One import case (used by main()).")
    parser.add_argument("backend")
    parser.add_argument("database_url")
    parser.add_argument("csv_path", type=Path)
    parser.add_argument("rows", type=int)
    args = parser.parse_args()
    result = measure(args.backend, args.database_url, args.csv_path, args.rows)
    print(json.dumps(result.__dict__))
