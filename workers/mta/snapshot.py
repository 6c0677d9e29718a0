"""A point-in-time copy of a spool while its MTA runs, for `warta backup`.

The spool's group commit makes a batch durable in steps: files, renames of the message files
into ``msg/``, and the Message-ID log alongside. A copy taken between two of those steps could
hold a Message-ID whose message it missed: after a restore that message would be refused as a
duplicate and never delivered. So every commit holds a shared `flock` on ``snapshot.lock``
in the spool directory, and the snapshot takes it exclusively for its short phase: listing
the queued messages and noting how long the Message-ID log is. The listed messages (and the
changed envelopes of those deferred) are then hard-linked, with the lock released, into a
directory of the snapshot's own. Hard links cost no copy, and they stay valid while the MTA
goes on: it replaces env/ files by renaming new files over them and removes messages by
unlinking or keeping the file as a spare, and a spare still linked by a snapshot is never
written over (`SparePool.write`). A deferral appends a changed envelope to a message file,
so a linked message may show a newer state than at the listing, as if linked a moment later
(one torn by reading mid-append is skipped on recovery). The log is appended to as well, and
only the length noted under the lock belongs to the snapshot. A commit that failed can have
its batch in it, never confirmed: restore takes the confirmed entries only
(`message_id_log.confirmed_lines`).

Commits wait only for one directory listing; deliveries and removals never wait: a listed
message delivered and removed before it is linked is left out, as delivered.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from workers.mta.snapshot_lock import exclusive, open_lock
from workers.mta.spool import MESSAGE_IDS_LOG

SNAPSHOT_PREFIX = ".snapshot-"
"""Directories of hard links under a spool; a crashed backup's are removed by the next."""


@dataclass
class SpoolSnapshot:
    """Hard links to one spool's queued messages, and the part of its Message-ID log."""

    spool: Path
    directory: Path
    taken_at: float
    messages: int
    message_ids_bytes: int
    """Bytes of ``message-ids.log`` (linked in `directory`) that belong to the snapshot."""

    def files(self) -> Iterator[tuple[str, Path, int]]:
        """(path relative to the spool, file, size to read) of everything in the snapshot."""
        for folder in ("msg", "env"):
            for path in sorted((self.directory / folder).iterdir()):
                yield f"{folder}/{path.name}", path, path.stat().st_size
        log = self.directory / MESSAGE_IDS_LOG
        if log.exists():
            yield MESSAGE_IDS_LOG, log, self.message_ids_bytes

    def discard(self) -> None:
        """Remove the links (the spool's own files are untouched)."""
        shutil.rmtree(self.directory, ignore_errors=True)


def spool_directories(root: Path) -> list[Path]:
    """Every spool under the configured spool directory: itself and each `instance-<i>`."""
    if not root.is_dir():
        return []
    found = [root] if (root / "env").is_dir() else []
    found += sorted(
        path
        for path in root.iterdir()
        if path.name.startswith("instance-") and (path / "env").is_dir()
    )
    return found


def take(spool: Path) -> SpoolSnapshot:
    """Snapshot `spool`: under the lock list the queue and note the log; then hard-link."""
    for stale in spool.glob(f"{SNAPSHOT_PREFIX}*"):
        if not _alive(stale.name.removeprefix(SNAPSHOT_PREFIX).split("-")[0]):
            shutil.rmtree(stale, ignore_errors=True)  # a crashed backup's; a running one's stays
    directory = spool / f"{SNAPSHOT_PREFIX}{os.getpid()}-{time.time_ns():x}"
    (directory / "msg").mkdir(parents=True)
    (directory / "env").mkdir()
    fd = open_lock(spool)
    try:
        with exclusive(fd):
            taken_at = time.time()
            queued = os.listdir(spool / "msg")
            log = spool / MESSAGE_IDS_LOG
            try:
                log_bytes = log.stat().st_size
                os.link(log, directory / MESSAGE_IDS_LOG)
            except FileNotFoundError:
                log_bytes = 0
    finally:
        os.close(fd)
    # Linked after the lock is released: the listing fixed which messages belong to the
    # snapshot. One delivered meanwhile has its files removed and is left out, as it would
    # be a moment later; an envelope changed meanwhile is linked in its newer state.
    messages = _link_queued(spool, directory, queued)
    return SpoolSnapshot(spool, directory, taken_at, messages, log_bytes)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _link_queued(spool: Path, into: Path, names: list[str]) -> int:
    linked = 0
    for name in names:
        if not name.endswith(".eml"):
            continue
        try:
            os.link(spool / "msg" / name, into / "msg" / name)
        except FileNotFoundError:
            continue  # delivered and removed while we listed: not queued any more
        # After the message: its changed envelope is then at least as new as the message's
        # state when linked (a removal takes the message file first).
        envelope = f"{name.removesuffix('.eml')}.json"
        with contextlib.suppress(FileNotFoundError):
            os.link(spool / "env" / envelope, into / "env" / envelope)
        linked += 1
    return linked
