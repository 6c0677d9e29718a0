"""`warta restore`: a backup back into an instance whose processes are stopped.

A damaged backup leaves the instance as it was. Into an empty PostgreSQL the dump streams
into pg_restore while the file is read and checked (one pass; what a backup failing the
check loaded is removed again); with --force, or for SQLite, the whole file is checked
before the database is replaced. Then the database is migrated to the current schema, and
the spools, keys and files, kept in a staging directory until then, are put in place.

The spools come back with a Message-ID memory that is the union of every instance's: the
Redis registry that shares them across instances at run time starts empty, and a worker
resubmitting a message after the restore may reach any instance.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from app.backup import database
from app.backup.bundle import Manifest, read_bundle
from app.backup.crypto import Secret
from app.backup.errors import BackupError, NotEmpty
from app.backup.snapshot import SECRET_MEMBER, Progress, Trees
from app.core.migrate import upgrade
from app.core.settings import Settings
from workers.mta.instances import instance_dir
from workers.mta.message_id_log import confirmed_lines
from workers.mta.snapshot import spool_directories
from workers.mta.spares import fsync_directory
from workers.mta.spool import IO_THREADS, MESSAGE_IDS_LOG


def restore(
    settings: Settings,
    source: BinaryIO,
    secret: Secret | None,
    *,
    force: bool,
    progress: Progress,
    size: int | None = None,
) -> tuple[Manifest, list[str]]:
    """Restore the backup read from `source`; the manifest and warnings for the operator."""
    progress.phase("checking the instance is empty")
    if not force:
        _refuse_if_not_empty(settings)
    staging = settings.ensure_var_dir() / f".restore-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        if database.backend(settings.database_url) == "postgresql" and not force:
            manifest = _load_while_verifying(settings, source, secret, staging, progress, size)
        else:
            manifest = _verify_then_load(settings, source, secret, staging, progress, size)
        progress.phase("migrating to the current schema")
        upgrade(settings.database_url)
        progress.phase("putting spools and files in place")
        placed = _place_spools(settings, staging / "spool", force=force)
        for prefix, directory in Trees.of(settings).items():
            placed += _place_tree(staging / prefix, directory)
        warnings = _place_secret(settings, staging / SECRET_MEMBER)
        _make_durable(placed)  # every file restored is on disk before we say so
        return manifest, warnings
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _staged(staging: Path, name: str) -> BinaryIO:
    if name.startswith(f"{database.PG_DUMP_MEMBER}."):  # the dump's parts, in order
        name = database.PG_DUMP_MEMBER
    path = staging / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")


def _database_member(manifest: Manifest) -> str:
    member = next((m.name for m in manifest.members if m.name.startswith("database/")), None)
    if member is None:
        raise BackupError("the backup holds no database")
    return database.PG_DUMP_MEMBER if member.startswith(database.PG_DUMP_MEMBER) else member


def _load_while_verifying(
    settings: Settings,
    source: BinaryIO,
    secret: Secret | None,
    staging: Path,
    progress: Progress,
    size: int | None,
) -> Manifest:
    """Into an empty PostgreSQL: one pass, the dump streamed into pg_restore as it is read.

    The manifest's check comes at the end; a backup that fails it has its database removed
    again, so a damaged backup leaves the instance empty, as it was.
    """
    progress.phase("loading the database, verifying", size)
    database.ensure_empty(settings.database_url, force=False)
    read: list[Manifest] = []

    def feed(into: IO[bytes]) -> None:
        def destination(name: str) -> BinaryIO:
            if name.startswith(f"{database.PG_DUMP_MEMBER}."):
                return _Unclosed(into)  # type: ignore[return-value]
            return _staged(staging, name)

        read.append(read_bundle(source, secret, destination, progress.advance))

    try:
        database.load_stream(settings.database_url, feed)
    except BackupError:
        with contextlib.suppress(BackupError):  # never keep what an unverified backup loaded
            database.ensure_empty(settings.database_url, force=True)
        if read:  # the file was intact: say so if it is the wrong kind of database
            database.check_kind(settings.database_url, _database_member(read[0]))
        raise
    return read[0]


def _verify_then_load(
    settings: Settings,
    source: BinaryIO,
    secret: Secret | None,
    staging: Path,
    progress: Progress,
    size: int | None,
) -> Manifest:
    """Verify the whole backup, then replace the database: for --force and for SQLite.

    From a file the PostgreSQL dump is read a second time into pg_restore; from a pipe,
    which cannot be read twice, it is staged.
    """
    progress.phase("reading and verifying the backup", size)
    stream_dump = source.seekable() and database.backend(settings.database_url) != "sqlite"

    def destination(name: str) -> BinaryIO | None:
        if stream_dump and name.startswith(f"{database.PG_DUMP_MEMBER}."):
            return None
        return _staged(staging, name)

    start = source.tell() if stream_dump else 0
    manifest = read_bundle(source, secret, destination, progress.advance)
    progress.phase("loading the database", size if stream_dump else None)
    member = _database_member(manifest)
    database.check_kind(settings.database_url, member)
    database.ensure_empty(settings.database_url, force=True)
    if stream_dump:
        source.seek(start)
        database.load_stream(
            settings.database_url, lambda into: _dump_into(source, secret, into, progress)
        )
    else:
        database.load(settings.database_url, member, staging / member)
    return manifest


class _Unclosed:
    """pg_restore's input, handed out once per dump part: closing a part must not close it."""

    def __init__(self, into: IO[bytes]) -> None:
        self.into = into

    def write(self, data: bytes) -> int:
        return self.into.write(data)

    def close(self) -> None:
        """The part ends; the stream goes on."""


def _dump_into(
    source: BinaryIO, secret: Secret | None, into: IO[bytes], progress: Progress
) -> None:
    """Read the (already verified) backup again, writing the dump's parts into `into`."""

    def destination(name: str) -> BinaryIO | None:
        if name.startswith(f"{database.PG_DUMP_MEMBER}."):
            return _Unclosed(into)  # type: ignore[return-value]
        return None

    read_bundle(source, secret, destination, progress.advance)


def _refuse_if_not_empty(settings: Settings) -> None:
    if full := database.tables_with_rows(settings.database_url):
        raise NotEmpty(
            f"the database holds data ({len(full)} tables with rows, e.g. {full[0]}); "
            "restore into an empty instance, or pass --force to replace it"
        )
    for spool in spool_directories(settings.mta_spool_dir):
        queued = os.listdir(spool / "msg") if (spool / "msg").is_dir() else []
        if any(name.endswith(".eml") for name in queued):
            raise NotEmpty(f"the spool {spool} holds queued mail; pass --force to replace it")
    if settings.dkim_dir.is_dir() and any(p.is_file() for p in settings.dkim_dir.rglob("*")):
        raise NotEmpty(f"{settings.dkim_dir} holds DKIM keys; pass --force to replace them")


def _place_spools(settings: Settings, staged: Path, *, force: bool) -> list[Path]:
    root = settings.mta_spool_dir
    if force:  # the replaced instance's queue and memory go: the backup's come instead
        for spool in spool_directories(root):
            for folder in ("env", "msg"):
                shutil.rmtree(spool / folder, ignore_errors=True)
            (spool / MESSAGE_IDS_LOG).unlink(missing_ok=True)
    known = _union_of_message_ids(staged)  # before the messages move: it looks at them
    restored: list[Path] = []
    placed: list[Path] = []
    if staged.is_dir():
        spools = {log.parent for log in staged.rglob(MESSAGE_IDS_LOG)}
        spools |= {p.parent for p in staged.rglob("*") if p.name in ("env", "msg") and p.is_dir()}
        for spool in sorted(spools):
            target = root / spool.relative_to(staged)
            for folder in ("msg", "env"):
                placed += _move_files(spool / folder, target / folder)
            restored.append(target)
    count = settings.mta_processes
    owners = [root] if count == 1 else [instance_dir(root, i) for i in range(count)]
    for spool in sorted({*restored, *owners}):
        spool.mkdir(parents=True, exist_ok=True)
        (spool / MESSAGE_IDS_LOG).write_bytes(known)
        placed.append(spool / MESSAGE_IDS_LOG)
    return placed


def _union_of_message_ids(staged: Path) -> bytes:
    """Every instance's Message-ID log in one, each id once: any instance knows them all.

    The entries that count, without their batch marks: confirmed ones, and those of messages
    in the snapshot's spool (a completed batch not yet confirmed). A snapshot can hold the
    batch of a commit that failed: its ids are left out.
    """
    entries: dict[str, bytes] = {}
    for log in sorted(staged.rglob(MESSAGE_IDS_LOG)) if staged.is_dir() else []:
        queued = {path.stem for path in (log.parent / "msg").glob("*.eml")}
        for key, line in confirmed_lines(log, queued):
            entries.setdefault(key, line)
    return b"".join(entries.values())


def _move_files(source: Path, target: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    placed = []
    if source.is_dir():
        for path in source.iterdir():
            placed.append(Path(shutil.move(path, target / path.name)))
    return placed


def _place_tree(staged: Path, directory: Path) -> list[Path]:
    if not staged.is_dir():
        return []
    placed = []
    for path in sorted(staged.rglob("*")):
        if path.is_file():
            relative = PurePosixPath(path.relative_to(staged).as_posix())
            target = directory.joinpath(*relative.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            placed.append(Path(shutil.move(path, target)))
    return placed


def _make_durable(paths: list[Path]) -> None:
    """fsync every file, in parallel (the filesystem folds them into few journal commits),
    then every directory holding one; the spool's envelopes are durable like its own."""

    def sync(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    with ThreadPoolExecutor(IO_THREADS) as pool:
        list(pool.map(sync, paths))
    for directory in sorted({path.parent for path in paths}):
        fsync_directory(directory)


def _place_secret(settings: Settings, staged: Path) -> list[str]:
    if not staged.exists():
        return ["the backup holds no secret key: links signed before it will not verify"]
    secret = staged.read_bytes().strip()
    if settings.secret_key:
        if settings.secret_key.encode() != secret:
            return [
                "WARTA_SECRET_KEY differs from the backed-up secret: unsubscribe and "
                "tracking links sent before the backup will not verify; set it to the "
                "backup's secret (in the backup as member secret_key)"
            ]
        return []
    path = settings.ensure_var_dir() / "secret_key"
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(secret)
    return []
