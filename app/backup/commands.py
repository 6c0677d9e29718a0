"""The CLI of backups: `warta backup`, `warta verify-backup`, `warta restore`."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO

import typer
from pydantic import ValidationError

from app.backup.bundle import Manifest, read_bundle
from app.backup.crypto import Secret
from app.backup.errors import BackupError
from app.backup.restore import restore
from app.backup.snapshot import make_backup
from app.core.logging import configure_logging
from app.core.settings import Settings, get_settings
from app.core.terminal import console
from workers.mta.spares import fsync_directory

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

logger = logging.getLogger(__name__)
DEFAULT_TARGET = "var/backups"
PREFIX = "warta-"
SUFFIXES = (".tar.zst", ".tar.zst.enc")

PassphraseFile = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        exists=True,
        dir_okay=False,
        help="Encrypt/decrypt with the passphrase on this file's first line (scrypt).",
    ),
]
KeyFile = Annotated[
    Path | None,
    typer.Option(
        "--key-file",
        exists=True,
        dir_okay=False,
        help="Encrypt/decrypt with this file's bytes as the key (at least 32 random bytes).",
    ),
]


class _Bar:
    """Progress on stderr: one line per step, a bar where the step's size is known.

    Each step's duration is logged too (INFO), for logs where no bar is drawn (cron).
    """

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None
        self.current = ("", time.monotonic())

    def phase(self, description: str, total: int | None = None) -> None:
        self.end()
        self.task = self.progress.add_task(description, total=total)
        self.current = (description, time.monotonic())

    def end(self) -> None:
        """Close the current step."""
        if self.task is not None:
            total = next(t.total for t in self.progress.tasks if t.id == self.task)
            self.progress.update(self.task, completed=total or 0)
            description, started = self.current
            logger.info("%s: %.1f s", description, time.monotonic() - started)
            self.task = None

    def advance(self, done: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, done)


@contextlib.contextmanager
def _progress() -> Iterator[_Bar]:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description:<34}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console()) as progress:
        bar = _Bar(progress)
        yield bar
        bar.end()


def _settings() -> Settings:
    try:
        settings = get_settings()
    except ValidationError as exc:
        raise BackupError(f"configuration error: {exc.errors()[0]['msg']}") from None
    configure_logging(settings.log_level, settings.log_format)
    return settings


def backup(
    target: Annotated[
        str,
        typer.Argument(
            help="A directory (a dated file is made in it), a file name, or - for stdout."
        ),
    ] = DEFAULT_TARGET,
    keep: Annotated[
        int | None,
        typer.Option(min=1, help="Keep only the newest N backups in the target directory."),
    ] = None,
    passphrase_file: PassphraseFile = None,
    key_file: KeyFile = None,
) -> None:
    """Back up the database, spools, DKIM keys, secret, uploads and archive into one file."""
    settings = _settings()
    secret = Secret.from_files(passphrase_file, key_file)
    if target == "-":
        if keep is not None:
            raise BackupError("--keep needs a target directory, not standard output")
        if sys.stdout.isatty():
            raise BackupError("refusing to write a backup to a terminal; redirect or pipe it")
        with _progress() as bar:
            manifest = make_backup(
                settings, sys.stdout.buffer, secret, Path(tempfile.gettempdir()), bar
            )
        sys.stdout.buffer.flush()
        console().print(f"[green]backup written[/green] to standard output: {_summary(manifest)}")
        return
    path = Path(target)
    directory = path if keep is not None or target.endswith("/") or path.is_dir() else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        path = _new_name(directory, secret is not None)
    partial = path.with_name(path.name + ".partial")
    try:
        with _progress() as bar, partial.open("wb") as out:
            manifest = make_backup(settings, out, secret, path.parent, bar)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
        fsync_directory(path.parent)
    finally:
        partial.unlink(missing_ok=True)
    console().print(
        f"[green]backup written[/green]: {path} ({path.stat().st_size:,} bytes), "
        f"{_summary(manifest)}"
    )
    if directory is not None and keep is not None:
        for old in rotate(directory, keep):
            console().print(f"removed old backup {old}")


def _new_name(directory: Path, encrypted: bool) -> Path:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = SUFFIXES[1] if encrypted else SUFFIXES[0]
    path = directory / f"{PREFIX}{stamp}{suffix}"
    counter = 1
    while path.exists():
        path = directory / f"{PREFIX}{stamp}-{counter}{suffix}"
        counter += 1
    return path


def rotate(directory: Path, keep: int) -> list[Path]:
    """Remove all but the newest `keep` backups in `directory`; the removed files."""
    backups = sorted(
        (p for p in directory.iterdir() if p.name.startswith(PREFIX) and p.name.endswith(SUFFIXES)),
        key=lambda p: (p.stat().st_mtime, p.name),
    )
    removed = backups[: max(0, len(backups) - keep)]
    for path in removed:
        path.unlink()
    return removed


def _summary(manifest: Manifest) -> str:
    queued = sum(spool["queued_messages"] for spool in manifest.spools)
    return (
        f"{len(manifest.members)} files, {manifest.total_bytes:,} bytes before compression, "
        f"{manifest.database.get('backend')} database at revision {manifest.schema_revision}, "
        f"{queued} queued messages in {len(manifest.spools)} spools"
        + (", encrypted" if manifest.encrypted else "")
    )


@contextlib.contextmanager
def _open(file: str) -> Iterator[tuple[BinaryIO, int | None]]:
    if file == "-":
        yield sys.stdin.buffer, None
        return
    path = Path(file)
    if not path.is_file():
        raise BackupError(f"{file}: no such backup file")
    with path.open("rb") as source:
        yield source, path.stat().st_size


def verify_backup(
    file: Annotated[str, typer.Argument(help="The backup file, or - for standard input.")],
    passphrase_file: PassphraseFile = None,
    key_file: KeyFile = None,
) -> None:
    """Read a whole backup and check every file against its manifest, restoring nothing."""
    configure_logging()
    secret = Secret.from_files(passphrase_file, key_file)
    with _open(file) as (source, size), _progress() as bar:
        bar.phase("verifying", size)
        manifest = read_bundle(source, secret, None, bar.advance)
    console().print(
        f"[green]backup OK[/green]: made {manifest.created_at} by Warta "
        f"{manifest.warta_version}, {_summary(manifest)}"
    )


def restore_command(
    file: Annotated[str, typer.Argument(help="The backup file, or - for standard input.")],
    force: Annotated[
        bool, typer.Option(help="Replace an instance that holds data (its data is lost).")
    ] = False,
    passphrase_file: PassphraseFile = None,
    key_file: KeyFile = None,
) -> None:
    """Restore a backup into this (stopped, empty) instance, then migrate its schema."""
    settings = _settings()
    secret = Secret.from_files(passphrase_file, key_file)
    with _open(file) as (source, size), _progress() as bar:
        manifest, warnings = restore(settings, source, secret, force=force, progress=bar, size=size)
    for warning in warnings:
        console().print(f"[yellow]warning:[/yellow] {warning}")
    console().print(
        f"[green]restored[/green] the backup made {manifest.created_at}: {_summary(manifest)}; "
        "start the processes now"
    )


def register(cli: typer.Typer) -> None:
    """Add the backup commands to the `warta` CLI."""
    cli.command("backup")(backup)
    cli.command("verify-backup")(verify_backup)
    cli.command("restore")(restore_command)
