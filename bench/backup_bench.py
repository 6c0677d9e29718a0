"""`warta backup` and `warta restore` against `pg_dump -Fc` and `pg_restore` of the same database.

One PostgreSQL (the test suite's throwaway server), seeded with subscribers, a ledger of
`sends` rows spread over campaigns of the whole list, and an MTA spool of queued messages
(written by the real spool, ~5 KB each). In the same run:

* `pg_dump -Fc` of the database alone (the floor a backup of it cannot beat), then
  `pg_restore` of that dump into an empty database;
* `warta backup FILE` (database, spool, keys, secret) and `warta verify-backup FILE`;
* `warta restore FILE` into an empty database and an empty var directory (including its
  migration step and putting the spool back).

Targets: backup and restore within 1.3x of pg_dump and pg_restore. The default size (500,000
subscribers, 2,500,000 ledger rows, 5,000 messages) runs in about two minutes on a quiet
machine; the issue's size (1,000,000 subscribers, 5,000,000 ledger rows, a 10,000-
message spool) is

    python -m bench.backup_bench --subscribers 1000000 --ledger 5000000 --spool 10000

    python -m bench.backup_bench [--subscribers N] [--ledger N] [--spool N] [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.campaign import HTML, stack
from bench.processes import ROOT, warta
from bench.results import Row

SUBSCRIBERS, LEDGER, SPOOL = 500_000, 2_500_000, 5_000
QUICK = (20_000, 100_000, 200)
TARGET = 1.3


async def _seed(sessionmaker: object, subscribers: int, ledger: int) -> None:
    """Subscribers by the product's bulk insert; ledger rows by INSERT … SELECT per campaign."""
    import sqlalchemy as sa

    from tests.helpers.seeding import seed_campaign

    started = time.perf_counter()
    campaign_id, _ = await seed_campaign(sessionmaker, subscribers, html=HTML)  # type: ignore[arg-type]
    async with sessionmaker() as session:  # type: ignore[operator]
        left, copy = ledger, 0
        while left > 0:
            if copy:
                campaign_id = await session.scalar(
                    sa.text(
                        "INSERT INTO campaigns (name, subject, from_email, html, text, status, "
                        "tracking, status_reason, audience_size, ledger_base, created_at, "
                        "updated_at) SELECT name || :n, subject, from_email, html, text, "
                        "'finished', tracking, '', audience_size, 0, now(), now() "
                        "FROM campaigns WHERE id = :id RETURNING id"
                    ),
                    {"n": str(copy), "id": campaign_id},
                )
            await session.execute(
                sa.text(
                    "INSERT INTO sends (campaign_id, subscriber_id, email, status, attempts, "
                    "last_reply, sent_at, updated_at) SELECT :c, id, email, 'delivered', 1, "
                    "'250 2.0.0 OK queued as 0123456789abcdef', now(), now() FROM subscribers "
                    "ORDER BY id LIMIT :n"
                ),
                {"c": campaign_id, "n": min(left, subscribers)},
            )
            left -= subscribers
            copy += 1
        await session.commit()
        await session.execute(sa.text("ANALYZE"))
    print(
        f"  seeded {subscribers:,} subscribers and {ledger:,} ledger rows in "
        f"{time.perf_counter() - started:.1f} s"
    )


async def _spool(directory: Path, messages: int) -> int:
    """Queue `messages` through the real spool; their total bytes."""
    from workers.mta.spool import Envelope, Spool

    body = (
        "From: news@example.com\r\nSubject: News\r\nContent-Type: text/html\r\n\r\n"
        + HTML.replace("\n", "\r\n")
    ).encode()
    async with Spool(directory) as spool:
        spool.recover()
        for start in range(0, messages, 500):
            await asyncio.gather(
                *(
                    spool.accept(
                        Envelope(
                            "bounce@bounces.example.com",
                            [f"user{i}@example.com"],
                            message_id=f"<{i}.bench@example.com>",
                        ),
                        body,
                    )
                    for i in range(start, min(messages, start + 500))
                )
            )
    return messages * len(body)


async def _create_database(url: str, name: str) -> str:
    """An empty database `name` on the server of `url`; its URL."""
    import asyncpg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    connection = await asyncpg.connect(
        host=parsed.host, port=parsed.port, user=parsed.username, database=parsed.database
    )
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return parsed.set(database=name).render_as_string(hide_password=False)


def _timed(command: list[str], env: dict[str, str] | None = None) -> float:
    """Wall seconds of `command`; its CPU seconds (user + system) are printed beside."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {result.stderr.strip()[-500:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    print(f"    {Path(command[0]).name} {command[1]}: {elapsed:.1f} s wall, {cpu:.1f} s CPU")
    for line in result.stderr.splitlines():  # the steps of a warta command, timed
        if "app.backup" in line:
            print(f"      {line.split(': ', 1)[-1]}")
    return elapsed


async def _run(args: argparse.Namespace, tmp: Path) -> list[Row]:
    from sqlalchemy.engine import make_url

    from app.backup.database import pg_program, server_major

    async with stack(tmp) as st:
        await _seed(st.sessionmaker, args.subscribers, args.ledger)
        spool_bytes = await _spool(tmp / "source" / "spool", args.spool)
        url = make_url(st.database_url)
        major = await asyncio.to_thread(server_major, st.database_url)
        pg_dump, _ = pg_program("pg_dump", major)
        pg_restore, _ = pg_program("pg_restore", major)
        libpq = ["--no-password", f"--host={url.host}", f"--port={url.port}", "--username=postgres"]
        base = {k: v for k, v in os.environ.items() if not k.startswith("WARTA_")}

        dump = tmp / "pg.dump"
        dump_s = _timed([pg_dump, *libpq, "--format=custom", f"--file={dump}", str(url.database)])
        pg_target = make_url(await _create_database(st.database_url, "bench_pg_restore"))
        restore_options = ["--no-owner", "--no-privileges", "--exit-on-error"]
        pg_restore_s = _timed(
            [pg_restore, *libpq, *restore_options, f"--dbname={pg_target.database}", str(dump)]
        )

        def env(instance: str, database_url: str) -> dict[str, str]:
            var = tmp / instance
            return base | {
                "WARTA_DATABASE_URL": database_url,
                "WARTA_VAR_DIR": str(var),
                "WARTA_MTA_SPOOL_DIR": str(var / "spool"),
                "WARTA_DKIM_DIR": str(var / "dkim"),
                "WARTA_ARCHIVE_DIR": str(var / "archive"),
            }

        source = env("source", st.database_url) | {"WARTA_SECRET_KEY": "bench-" + "s" * 40}
        backup = tmp / "warta.tar.zst"
        backup_s = _timed([*warta("backup", str(backup))], source)
        verify_s = _timed([*warta("verify-backup", str(backup))], source)
        phrase = tmp / "passphrase"
        phrase.write_text("a bench passphrase\n")
        encrypted = tmp / "warta-encrypted.tar.zst"
        encrypted_s = _timed(
            [*warta("backup", str(encrypted), "--passphrase-file", str(phrase))], source
        )
        target = await _create_database(st.database_url, "bench_warta_restore")
        restore_s = _timed([*warta("restore", str(backup))], env("restored", target))

    mb = 1e6
    dump_mb, backup_mb = dump.stat().st_size / mb, backup.stat().st_size / mb
    what = (
        f"{args.subscribers:,} subscribers, {args.ledger:,} ledger rows, "
        f"{args.spool:,}-message spool ({spool_bytes / mb:.0f} MB)"
    )
    print(f"  pg_dump -Fc {dump_s:.1f} s, {dump_mb:.1f} MB; pg_restore {pg_restore_s:.1f} s")
    print(f"  warta backup {backup_s:.1f} s, {backup_mb:.1f} MB; restore {restore_s:.1f} s")
    print(f"  verify-backup {verify_s:.1f} s; encrypted backup {encrypted_s:.1f} s")
    return [
        Row(
            f"`warta backup` of {what}",
            f"≤ {TARGET}x pg_dump -Fc",
            f"{backup_s:.1f} s ({backup_s / dump_s:.2f}x), {backup_mb:.1f} MB",
            f"pg_dump {dump_s:.1f} s, {dump_mb:.1f} MB",
            backup_s <= TARGET * dump_s,
        ),
        Row(
            f"`warta restore` of {what} (with migrate and the spool)",
            f"≤ {TARGET}x pg_restore",
            f"{restore_s:.1f} s ({restore_s / pg_restore_s:.2f}x)",
            f"pg_restore {pg_restore_s:.1f} s",
            restore_s <= TARGET * pg_restore_s,
        ),
        Row(
            "`warta verify-backup` / `warta backup --passphrase-file` of the same",
            "—",
            f"verify {verify_s:.1f} s; encrypted backup {encrypted_s:.1f} s",
        ),
    ]


def main(argv: list[str] | None = None) -> list[Row]:
    """Parse arguments, run once, return the rows for `bench/run.py`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int)
    parser.add_argument("--ledger", type=int)
    parser.add_argument("--spool", type=int)
    parser.add_argument("--quick", action="store_true", help="a small run, for development")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv if argv is not None else [])
    defaults = QUICK if args.quick else (SUBSCRIBERS, LEDGER, SPOOL)
    args.subscribers = args.subscribers or defaults[0]
    args.ledger = args.ledger if args.ledger is not None else defaults[1]
    args.spool = args.spool if args.spool is not None else defaults[2]
    sys.path.insert(0, str(ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="warta-backup-bench-"))
    try:
        return asyncio.run(_run(args, tmp))
    finally:
        if args.keep:
            print(f"  kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
