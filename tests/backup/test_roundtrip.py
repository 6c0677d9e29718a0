"""`warta backup` then `warta restore` into a fresh instance: everything comes back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.backup.database import tables_with_rows
from app.core.database import create_engine
from app.core.migrate import alembic_config
from app.mail.dkim import generate_key
from tests.helpers.backup_instances import Instance
from tests.helpers.seeding import seed_campaign
from workers.mta.message_id_log import dedupe_key
from workers.mta.spool import Envelope, Spool


async def _populate(instance: Instance, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    await seed_campaign(sessionmaker, 120)
    async with Spool(instance.spool) as spool:
        spool.recover()
        for index in range(5):
            envelope = Envelope(
                "bounce@bounces.localhost",
                [f"queued{index}@example.com"],
                message_id=f"<queued{index}@warta.test.example>",
            )
            await spool.accept(envelope, b"Subject: hi\r\n\r\nbody %d\r\n" % index)
            if index == 0:
                await spool.update(envelope)  # deferred once: appended to its message file
    generate_key(instance.dkim, "example.com", "sel1", "ed25519")
    (instance.var / "imports").mkdir(parents=True)
    (instance.var / "imports" / "upload.csv").write_text("email\nsomeone@example.com\n")
    (instance.var / "archive").mkdir()
    (instance.var / "archive" / "2026-12-01.warc").write_bytes(b"archived bytes" * 100)
    for folder, name in (("new", "1.delivered"), ("tmp", "2.being-written")):
        (instance.var / "inbound" / folder).mkdir(parents=True)
        (instance.var / "inbound" / folder / name).write_bytes(b"Subject: a DSN\r\n\r\n")


async def _counts(url: str, instance: Instance) -> dict[str, int]:
    engine = create_engine(instance.settings().model_copy(update={"database_url": url}))
    try:
        async with engine.connect() as connection:
            return {
                table: int(await connection.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)
                for table in ("subscribers", "campaigns", "lists", "subscriptions", "sends")
            } | {
                "revision": 0
                if await connection.scalar(sa.text("SELECT version_num FROM alembic_version"))
                == _head()
                else 1
            }
    finally:
        await engine.dispose()


def _head() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def _files(directory: Path) -> dict[str, bytes]:
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


async def test_backup_then_restore_into_a_fresh_instance_brings_everything_back(
    source: Instance,
    fresh: Instance,
    sessionmaker: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    await _populate(source, sessionmaker)
    made = await asyncio.to_thread(source.warta, "backup", str(tmp_path / "backups"), "--keep", "3")
    assert made.returncode == 0, made.stderr.decode()
    [backup] = list((tmp_path / "backups").iterdir())
    assert backup.name.startswith("warta-") and backup.name.endswith(".tar.zst")

    restored = await asyncio.to_thread(fresh.warta, "restore", str(backup))
    assert restored.returncode == 0, restored.stderr.decode()

    expected = await _counts(source.database_url, source)
    assert expected["subscribers"] == 120
    assert await _counts(fresh.database_url, fresh) == expected
    queued = {k: v for k, v in _files(source.spool).items() if k.split("/")[0] in ("env", "msg")}
    assert len(queued) == 5  # one file a message, the envelope inside
    assert {
        k: v for k, v in _files(fresh.spool).items() if k.split("/")[0] in ("env", "msg")
    } == queued
    known = (fresh.spool / "message-ids.log").read_text()
    assert all(f"queued{index}@warta.test.example" in known for index in range(5))
    assert _files(fresh.dkim) == _files(source.dkim)
    assert _files(fresh.var / "imports") == _files(source.var / "imports")
    assert _files(fresh.var / "archive") == _files(source.var / "archive")
    # Acknowledged inbound mail comes back; a file still being written is no message yet.
    assert list(_files(fresh.var / "inbound")) == ["new/1.delivered"]
    # The fresh instance has no WARTA_SECRET_KEY: the backed-up one becomes its generated key.
    assert (fresh.var / "secret_key").read_text() == source.secret_key

    # The restored spool is one the MTA recovers: every envelope finds its message.
    async with Spool(fresh.spool) as spool:
        assert len(spool.recover()) == 5
        key = dedupe_key("<queued3@warta.test.example>", ["queued3@example.com"])
        assert await spool.seen(key) is not None


async def test_keep_rotates_the_target_directory(source: Instance, tmp_path: Path) -> None:
    target = tmp_path / "backups"
    for _ in range(3):
        made = await asyncio.to_thread(source.warta, "backup", str(target), "--keep", "2")
        assert made.returncode == 0, made.stderr.decode()
    names = sorted(path.name for path in target.iterdir())
    assert len(names) == 2, names
    assert "removed old backup" in made.stderr.decode()


async def test_restore_refuses_an_instance_holding_data_unless_forced(
    source: Instance, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await seed_campaign(sessionmaker, 10)
    backup = tmp_path / "one.tar.zst"
    made = await asyncio.to_thread(source.warta, "backup", str(backup))
    assert made.returncode == 0, made.stderr.decode()

    refused = await asyncio.to_thread(source.warta, "restore", str(backup))
    assert refused.returncode == 1
    assert "holds data" in refused.stderr.decode()
    assert "--force" in refused.stderr.decode()

    forced = await asyncio.to_thread(source.warta, "restore", str(backup), "--force")
    assert forced.returncode == 0, forced.stderr.decode()
    assert (await _counts(source.database_url, source))["subscribers"] == 10


async def test_backup_streams_to_stdout_and_restores_from_stdin(
    source: Instance, fresh: Instance, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await seed_campaign(sessionmaker, 40)
    made = await asyncio.to_thread(source.warta, "backup", "-")
    assert made.returncode == 0, made.stderr.decode()
    assert made.stdout[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
    verified = await asyncio.to_thread(fresh.warta, "verify-backup", "-", stdin=made.stdout)
    assert verified.returncode == 0, verified.stderr.decode()
    assert "backup OK" in verified.stderr.decode()
    # From a pipe the dump cannot be read twice: it is staged, then loaded.
    restored = await asyncio.to_thread(fresh.warta, "restore", "-", stdin=made.stdout)
    assert restored.returncode == 0, restored.stderr.decode()
    assert (await _counts(fresh.database_url, fresh))["subscribers"] == 40


async def test_a_damaged_backup_leaves_an_empty_instance_empty(
    source: Instance,
    fresh: Instance,
    sessionmaker: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    await seed_campaign(sessionmaker, 60)
    backup = tmp_path / "whole.tar.zst"
    made = await asyncio.to_thread(source.warta, "backup", str(backup))
    assert made.returncode == 0, made.stderr.decode()
    cut = tmp_path / "cut.tar.zst"
    data = await asyncio.to_thread(backup.read_bytes)
    # The manifest's end is gone: on PostgreSQL the dump was already streamed into
    # pg_restore when the damage shows, and what it loaded must be removed again.
    await asyncio.to_thread(cut.write_bytes, data[:-64])

    refused = await asyncio.to_thread(fresh.warta, "restore", str(cut))
    assert refused.returncode == 1
    assert "truncated" in refused.stderr.decode()
    assert await asyncio.to_thread(tables_with_rows, fresh.database_url) == []

    restored = await asyncio.to_thread(fresh.warta, "restore", str(backup))
    assert restored.returncode == 0, restored.stderr.decode()
    assert (await _counts(fresh.database_url, fresh))["subscribers"] == 60
