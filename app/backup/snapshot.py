"""Making a backup while Warta runs: what goes in, in which order, and why that order.

The order is what keeps a restore from sending twice. The database is dumped first, the
spools are snapshot after it. A message the dumped ledger calls sent was accepted by the
MTA before the dump, so the later spool snapshot has it queued or remembers its
Message-ID; a message accepted between dump and snapshot is remembered by the spool while
the ledger still calls it unsent, and after a restore the worker resubmits it, with the
same Message-ID, and the MTA acknowledges it without queueing it again. The other way
round, a ledger row marked sent after a spool snapshot would be a message neither sent
again nor in the restored spool: lost. The files that do not change in step with the
database (DKIM keys, the secret, uploads, the message archive) come last.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import BinaryIO, Protocol

from app.backup import database
from app.backup.bundle import BundleWriter, Manifest
from app.backup.crypto import Secret
from app.core.settings import Settings
from workers.mta.snapshot import SpoolSnapshot, spool_directories, take

SECRET_MEMBER = "secret_key"
UPLOADS = "imports"
"""Under WARTA_VAR_DIR: uploaded CSV files (`POST /subscribers/import`)."""
INBOUND = "inbound"
"""Under WARTA_VAR_DIR: the Maildir of acknowledged inbound mail (DSNs, complaints, replies)."""


class Progress(Protocol):
    """What a long backup or restore tells the person waiting for it."""

    def phase(self, description: str, total: int | None = None) -> None:
        """A new step begins; `total` bytes if it is measured."""

    def advance(self, done: int) -> None:
        """`done` more bytes of the current step are processed."""


@dataclass(frozen=True)
class Trees:
    """Where an instance keeps the files a backup holds, by member prefix."""

    dkim: Path
    uploads: Path
    archive: Path
    inbound: Path

    @classmethod
    def of(cls, settings: Settings) -> Trees:
        """The directories the settings name."""
        var = settings.var_dir
        return cls(settings.dkim_dir, var / UPLOADS, archive_dir(settings), var / INBOUND)

    def items(self) -> list[tuple[str, Path]]:
        """(member prefix, directory) pairs."""
        return [
            ("dkim", self.dkim),
            ("uploads", self.uploads),
            ("archive", self.archive),
            ("inbound", self.inbound),
        ]


def archive_dir(settings: Settings) -> Path:
    """The message archive's directory (WARTA_ARCHIVE_DIR, default var/archive)."""
    configured = getattr(settings, "archive_dir", None)  # the archive's own setting, if merged
    return Path(configured or os.environ.get("WARTA_ARCHIVE_DIR") or "var/archive")


def warta_version() -> str:
    """The installed package's version."""
    try:
        return metadata.version("warta")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        return "unknown"


def spool_member(root: Path, spool: Path, relative: str) -> str:
    """The member name of a spool file: `spool/[instance-<i>/]<relative>`."""
    inner = spool.relative_to(root).as_posix()
    return f"spool/{relative}" if inner == "." else f"spool/{inner}/{relative}"


def make_backup(
    settings: Settings,
    out: BinaryIO,
    secret: Secret | None,
    staging: Path,
    progress: Progress,
) -> Manifest:
    """Write a backup of the instance `settings` describe to `out`; the manifest written."""
    work = Path(tempfile.mkdtemp(prefix="warta-backup-", dir=staging))
    snapshots: list[SpoolSnapshot] = []
    dump: database.Dump | None = None
    try:
        progress.phase("dumping the database")
        revision = database.schema_revision(settings.database_url)
        dump = database.start_dump(settings.database_url, work)
        writer = BundleWriter(out, secret, progress.advance)
        if dump.sqlite_copy is not None:
            writer.add_file(database.SQLITE_MEMBER, dump.sqlite_copy)
        else:
            for name, part in dump.parts():
                writer.add_bytes(name, part)
        progress.phase("snapshotting the spools")  # after the dump: see the module docstring
        root = settings.mta_spool_dir
        snapshots = [take(spool) for spool in spool_directories(root)]
        files = []
        for snapshot in snapshots:
            files += [
                (spool_member(root, snapshot.spool, relative), path, size)
                for relative, path, size in snapshot.files()
            ]
        for prefix, directory in Trees.of(settings).items():
            files += [(f"{prefix}/{name}", path, size) for name, path, size in _tree(directory)]
        secret_key = _secret_key(settings)
        progress.phase("writing spools and files", sum(size for _, _, size in files))
        for name, path, size in files:
            with contextlib.suppress(FileNotFoundError):  # an upload or archive file deleted
                writer.add_file(name, path, size)  # since the listing; opened before written
        if secret_key is not None:
            writer.add_bytes(SECRET_MEMBER, secret_key)
        manifest = Manifest(
            created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            warta_version=warta_version(),
            schema_revision=revision,
            database=dump.facts,
            spools=[
                {
                    "path": spool_member(root, s.spool, "").removesuffix("/"),
                    "taken_at": s.taken_at,
                    "queued_messages": s.messages,
                    "message_ids_bytes": s.message_ids_bytes,
                }
                for s in snapshots
            ],
            encrypted=secret is not None,
        )
        return writer.finish(manifest)
    finally:
        if dump is not None:
            dump.stop()
        for snapshot in snapshots:
            snapshot.discard()
        shutil.rmtree(work, ignore_errors=True)


def _tree(directory: Path) -> Iterator[tuple[str, Path, int]]:
    """(relative name, path, size now) of every regular file under `directory`."""
    if not directory.is_dir():
        return
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if relative.parts[0] == "tmp":  # a Maildir's files being written, not yet delivered
            continue
        with contextlib.suppress(FileNotFoundError):  # removed while we walk: not backed up
            if path.is_file() and not path.is_symlink():
                yield relative.as_posix(), path, path.stat().st_size


def _secret_key(settings: Settings) -> bytes | None:
    if settings.secret_key:
        return settings.secret_key.encode()
    generated = settings.var_dir / "secret_key"
    return generated.read_bytes().strip() if generated.exists() else None
