"""The MTA's durable queue: every accepted message is on disk and fsynced before its 250.

Layout (2) under the spool directory::

    msg/<queue id>.eml      one file a message: the envelope as accepted on its first line,
                            the message bytes as received, then each changed envelope
                            (after a deferral) appended (see `spool_format`)
    env/<queue id>.json     the envelope of a message changed more than ``TAIL_LIMIT``
                            allows appending, or of layout 1; it wins over the message file
    tmp/<shard>/            files being written; emptied on recovery
    spare/                  files of removed messages and replaced envelopes, written over
                            by later ones instead of creating new files, but only once
                            their removal is durable (see `spares`)
    corrupt/                files that could not be read, kept for a person to read
    message-ids.log         accepted messages' dedupe keys with their time, one JSON a line
    snapshot.lock           commits hold it shared, a backup's snapshot exclusive (``snapshot``)

A message is acknowledged only once its file is renamed into ``msg/``, after it was written
and fsynced whole under ``tmp/``: a message file in place is a queued message. Accepting
costs one file, one fsync and one rename a message, one directory fsync a batch; a deferral
one append and one fsync, no file created, renamed or rewritten.

Layout 1 (before) wrote every envelope to ``env/`` at acceptance and the bare bytes to
``msg/``. Recovery still reads it, so a spool queued by an older version is delivered after
an upgrade: a message file without the first-line marker is queued when its ``env/`` file
exists, and dropped as never acknowledged when not (as layout 1 did). The delivery paths
treat both alike, because the envelope is always ``env/<id>.json`` if present, else the
last one appended to the message file, else its first line.

Group commit (`group_commit`): concurrent ``accept`` calls queue their files; one committer
writes a whole batch, fsyncs each file and the directory once (the Message-ID log alongside),
then resolves every waiter. Nobody is answered before their files are durable, and many
sessions share the cost of one fsync pass. Envelope changes (after a deferral) and removals
are grouped the same way.

Every envelope names its queue id, and a file whose envelope names another is quarantined
(recovery and every read check): whatever goes wrong, a queue id is never delivered with
another message's bytes or recipients.

Layout 2 cannot be read by a version before it (it would drop the messages as never
acknowledged): the upgrade is one way, see docs/mta.md.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

from workers.mta import message_id_log, spool_format
from workers.mta.group_commit import IO_THREADS as IO_THREADS
from workers.mta.group_commit import MAX_BATCH, GroupCommit
from workers.mta.group_commit import SpoolStats as SpoolStats
from workers.mta.message_id_index import MessageIdIndex
from workers.mta.message_id_log import MESSAGE_IDS_LOG as MESSAGE_IDS_LOG
from workers.mta.message_id_log import envelope_key, legacy_key
from workers.mta.spares import (
    SparePool,
    exchange,
    fsync_directory,
    in_lanes,
    stage_parallel,
    write_all,
    write_new,
)
from workers.mta.spool_format import Envelope as Envelope
from workers.mta.spool_format import QueueId as QueueId
from workers.mta.spool_format import RecipientState as RecipientState
from workers.mta.spool_format import RecipientStatus as RecipientStatus

logger = logging.getLogger(__name__)

DEFAULT_DEDUPE_WINDOW = 7 * 24 * 3600.0
"""Seconds a Message-ID stays known after its message was accepted."""
TAIL_LIMIT = 32 * 1024
"""Bytes of changed envelopes appended to a message file at most; then env/ takes over."""
CHANGE_LINGER = 0.002
"""Seconds the updater and the remover wait for more changes before writing a batch: one
hand-over to a thread and one fsync pass for several deliveries (no 250 waits on them)."""


CommitListener = Callable[[Envelope], None]
"""Called by the committer with each envelope as soon as its message is durable."""


class MisfiledMessage(ValueError):
    """A queued file holds the envelope of another queue id; it was moved to corrupt/."""


_QUEUE_ID_SEQUENCE = itertools.count(secrets.randbits(32))
"""Tie-breakers of this process's queue ids: a random start, then counted (no syscall each)."""


def new_queue_id() -> QueueId:
    """A queue id that sorts by creation time and does not collide."""
    return QueueId(f"{time.time_ns():016x}{next(_QUEUE_ID_SEQUENCE) & 0xFFFFFFFF:08x}")


def _write_file(path: Path, data: bytes) -> int:
    """Create ``path`` with ``data`` and return its still open descriptor (for the fsync)."""
    return write_new(path, data)


def write_atomically(path: Path, temp: Path, data: bytes) -> None:
    """Write `temp`, fsync, rename to `path`, fsync the directory: durable once it returns."""
    fd = _write_file(temp, data)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    fsync_directory(path.parent)


class Spool:
    """A durable message queue in one directory, owned by one MTA process.

    Call ``recover()`` once at start: it cleans up after a crash, returns the queued
    envelopes and loads the known Message-IDs. Call ``close()`` before exiting.
    """

    def __init__(
        self,
        directory: Path,
        *,
        clock: Callable[[], float] = time.time,
        dedupe_window: float = DEFAULT_DEDUPE_WINDOW,
        commit_delay: float = 0.0,
    ) -> None:
        self.directory = directory
        self.messages = directory / "msg"
        self.envelopes = directory / "env"
        self.temp = directory / "tmp"
        self.corrupt = directory / "corrupt"
        self.spares = SparePool(directory / "spare")
        self.message_ids_log = directory / MESSAGE_IDS_LOG
        self.clock = clock
        self.dedupe_window = dedupe_window
        self._temp_dirs = [self.temp / str(shard) for shard in range(IO_THREADS)]
        for folder in (self.messages, self.envelopes, self.corrupt, *self._temp_dirs):
            folder.mkdir(parents=True, exist_ok=True)
        self._known = MessageIdIndex(self.temp, horizon=self._horizon)  # off the heap
        self._legacy_keys = False  # keys by Message-ID alone in the log: looked up too
        self._inflight: dict[str, asyncio.Future[QueueId]] = {}
        self._listeners: list[CommitListener] = []
        self._removals: list[tuple[QueueId, asyncio.Future[None]]] = []
        self._remover: asyncio.Task[None] | None = None
        self._updates: list[tuple[QueueId, bytes, asyncio.Future[None]]] = []
        self._updater: asyncio.Task[None] | None = None
        # Queued messages with an env/ file (deferred once, or of layout 1): a removal
        # unlinks that file too, and only then fsyncs env/.
        self._changed: set[QueueId] = set()
        # Appends and removals never overlap: an append into a file a removal has just made
        # a spare could land in the next message written over that spare.
        self._append_lock = threading.Lock()
        self._closing = False
        self._io_pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="spool-io")
        self._commits = GroupCommit(
            directory, self.spares, self._io_pool, self._durable, commit_delay=commit_delay
        )
        self.stats = self._commits.stats

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- paths -----------------------------------------------------------------------

    def message_path(self, queue_id: QueueId) -> Path:
        """The one file of ``queue_id``: its envelope as accepted, then its bytes (``load``)."""
        return self.messages / f"{queue_id}.eml"

    def envelope_path(self, queue_id: QueueId) -> Path:
        """The file holding the envelope of ``queue_id`` as accepted; it exists while queued.

        Since layout 2 that is the message file (its first line); a changed envelope is
        in ``changed_envelope_path`` (``read_envelope`` reads whichever is current).
        """
        return self.message_path(queue_id)

    def changed_envelope_path(self, queue_id: QueueId) -> Path:
        """Where the envelope of ``queue_id`` is written once it changed (after a deferral)."""
        return self.envelopes / f"{queue_id}.json"

    # -- accepting -------------------------------------------------------------------

    def add_listener(self, listener: CommitListener) -> None:
        """Call `listener` with every envelope once it is durable, whoever accepted it."""
        self._listeners.append(listener)

    @property
    def waiting(self) -> int:
        """Messages accepted whose commit has not completed yet."""
        return len(self._commits.uncommitted)

    async def accept(self, envelope: Envelope, data: bytes) -> QueueId:
        """Spool a message; return its queue id once message and envelope are durable.

        A message accepted within the dedupe window (its `dedupe_key`: the same Message-ID
        to the same recipients) returns the earlier queue id and writes nothing: the sender
        resubmitted after a crash, the message is already here.
        """
        if self._closing:
            raise RuntimeError("spool is closed")
        key = envelope_key(envelope)
        if key is not None:
            earlier = await self.seen(key)
            if earlier is not None:
                return earlier
            inflight = self._inflight.get(key)
            if inflight is not None:
                return await asyncio.shield(inflight)
        now = self.clock()
        envelope.queue_id = new_queue_id()
        envelope.received_at = now
        envelope.next_attempt_at = envelope.next_attempt_at or now
        future = self._commits.submit(envelope, data)
        if key is not None:
            self._inflight[key] = future
            future.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(future)

    def _durable(self, envelope: Envelope) -> None:
        """Make a message just committed known, and announce it to the listeners."""
        if (key := envelope_key(envelope)) is not None:
            self._known[key] = (envelope.queue_id, envelope.received_at)
        for listener in self._listeners:
            try:
                listener(envelope)
            except Exception:  # one listener's bug must not wedge every later commit
                logger.exception("spool listener failed for %s", envelope.queue_id)

    @property
    def legacy_keys(self) -> bool:
        """Whether the log holds keys of a version before `dedupe_key` (bare Message-IDs)
        within the window: this instance ran such a version then, and looks them up too."""
        return self._legacy_keys

    async def seen(self, key: str) -> QueueId | None:
        """The queue id under which the message of `dedupe_key` ``key`` was accepted within
        the window, if any (or, accepted by a version before, its Message-ID)."""
        entry = self._known.get(key)
        if entry is None and self._legacy_keys and (legacy := legacy_key(key)) is not None:
            entry = self._known.get(legacy)
        if entry is None or entry[1] < self.clock() - self.dedupe_window:
            return None
        return entry[0]

    async def close(self) -> None:
        """Commit what is queued, then stop the committer."""
        self._closing = True
        await self._commits.close()
        if self._updater is not None:
            await self._updater
        if self._remover is not None:
            await self._remover
        self._io_pool.shutdown()

    # -- after acceptance ------------------------------------------------------------

    async def update(self, envelope: Envelope) -> None:
        """Write the changed envelope (after an attempt); durable once it returns.

        It is appended to the message file, after the bytes (`spool_format.record`): no
        file created, renamed or rewritten, one fsync. Beyond ``TAIL_LIMIT`` of appended
        envelopes it goes to ``env/<queue id>.json`` instead, replaced atomically from then
        on. Writes are grouped like commits: one updater writes a whole batch, its fsyncs
        run in parallel.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Serialised now: the caller may change the envelope again before the batch runs.
        self._updates.append((envelope.queue_id, envelope.to_json(), future))
        if self._updater is None or self._updater.done():
            self._updater = asyncio.create_task(self._update_pending(), name="spool-updater")
        await asyncio.shield(future)

    async def _update_pending(self) -> None:
        if not self._closing:
            await asyncio.sleep(CHANGE_LINGER)
        while self._updates:
            batch, self._updates = self._updates[:MAX_BATCH], self._updates[MAX_BATCH:]
            try:
                await asyncio.to_thread(self._write_changes, [(q, raw) for q, raw, _ in batch])
            except Exception as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, _, future in batch:
                if not future.done():
                    future.set_result(None)

    def _write_changes(self, changes: list[tuple[QueueId, bytes]]) -> None:
        """Append each changed envelope to its message file, or write its env/ file."""
        appended: list[int] = []
        rewrites: list[tuple[QueueId, bytes]] = []
        try:
            with self._append_lock:
                self._append_changes(changes, appended, rewrites)
            # In parallel: the concurrent fsyncs fold into fewer disk flushes.
            in_lanes(self._io_pool, IO_THREADS, appended, _fsync_each)
        finally:
            for fd in appended:
                os.close(fd)
        if rewrites:
            self._rewrite(rewrites)

    def _append_changes(
        self,
        changes: list[tuple[QueueId, bytes]],
        appended: list[int],
        rewrites: list[tuple[QueueId, bytes]],
    ) -> None:
        for queue_id, raw in changes:
            if queue_id in self._changed:
                rewrites.append((queue_id, raw))  # its env/ file wins: replace that
                continue
            fd = self._append_change(queue_id, raw)
            if fd is None:  # too long, or layout 1: `_rewrite` writes (and notes) its env/ file
                rewrites.append((queue_id, raw))
            elif fd >= 0:
                appended.append(fd)

    def _append_change(self, queue_id: QueueId, raw: bytes) -> int | None:
        """Append to the message file; its open descriptor, -1 if gone, None if it cannot."""
        try:
            fd = os.open(self.message_path(queue_id), os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            return -1  # removed meanwhile: nothing left to change
        try:
            end = spool_format.body_end(spool_format.head_line(fd))
            appended = spool_format.record(raw)
            if os.fstat(fd).st_size - end + len(appended) > TAIL_LIMIT:
                os.close(fd)
                return None
            write_all(fd, appended)
        except ValueError:  # not a message file of layout 2: use env/
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _rewrite(self, envelopes: list[tuple[QueueId, bytes]]) -> None:
        """Replace a batch of envelope files: temporaries written and fsynced, then renamed."""
        token = secrets.token_hex(4)
        moves = [
            (self._temp_dirs[i % IO_THREADS] / f"{queue_id}.{token}.{i}.json", queue_id, raw)
            for i, (queue_id, raw) in enumerate(envelopes)
        ]
        sources = [
            paths[0]
            for paths in stage_parallel(
                self._io_pool, IO_THREADS, self.spares, [((temp, raw),) for temp, _, raw in moves]
            )
        ]
        # In batch order, so the latest of two rewrites of one envelope is the one that stays.
        # Swapped rather than renamed over: the old envelope's inode becomes a spare, handed
        # out only once env/ is fsynced (until then a crash could bring it back as env/).
        retired: list[Path] = []
        for source, (_, queue_id, _) in zip(sources, moves, strict=True):
            target = self.changed_envelope_path(queue_id)
            if exchange(source, target):
                if (spare := self.spares.retire(source)) is not None:
                    retired.append(spare)
            else:
                os.replace(source, target)
            self._changed.add(queue_id)  # only now does its env/ file exist
        fsync_directory(self.envelopes)
        self.spares.release(retired)

    async def remove(self, queue_id: QueueId) -> None:
        """Forget a message that was delivered or failed for good; its Message-ID stays known.

        Removals are grouped like commits: one remover takes a whole batch and fsyncs msg/
        once (and env/ once if one of them had an env/ file), not once a message.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._removals.append((queue_id, future))
        if self._remover is None or self._remover.done():
            self._remover = asyncio.create_task(self._remove_pending(), name="spool-remover")
        await asyncio.shield(future)

    async def _remove_pending(self) -> None:
        if not self._closing:
            await asyncio.sleep(CHANGE_LINGER)
        while self._removals:
            batch, self._removals = self._removals[:MAX_BATCH], self._removals[MAX_BATCH:]
            queue_ids = [queue_id for queue_id, _ in batch]
            try:
                await asyncio.to_thread(
                    self._remove, queue_ids, self._commits.unconfirmed(queue_ids)
                )
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    def _remove(
        self, queue_ids: list[QueueId], unconfirmed: tuple[QueueId, list[Envelope]] | None
    ) -> None:
        if unconfirmed is not None:
            self._commits.confirm_logged(*unconfirmed)
        with self._append_lock:
            self._remove_files(queue_ids)

    def _remove_files(self, queue_ids: list[QueueId]) -> None:
        # Message files first: once one is gone its message is no longer queued. A crash
        # before its changed envelope follows leaves an env/ file alone, which recovery
        # quarantines; the other order could leave a message whose changed envelope is
        # lost, and it would be sent again to recipients already delivered.
        # Moved to the spare files (or unlinked): gone from the spool either way, with the
        # envelopes appended to it. A spare is written over only after the fsync that makes
        # its removal durable: before, a crash could bring the old queue id back, naming a
        # file by then holding another message.
        self._retire(self.messages, [self.message_path(queue_id) for queue_id in queue_ids])
        changed = [queue_id for queue_id in queue_ids if queue_id in self._changed]
        if changed:
            self._retire(self.envelopes, [self.changed_envelope_path(q) for q in changed])
            self._changed.difference_update(changed)

    def _retire(self, directory: Path, paths: list[Path]) -> None:
        """Take files out of ``directory`` into the spares; free to reuse once it is fsynced."""
        retired = [spare for path in paths if (spare := self.spares.retire(path)) is not None]
        fsync_directory(directory)
        self.spares.release(retired)

    def load(self, queue_id: QueueId) -> bytes:
        """The message bytes of ``queue_id``; ``MisfiledMessage`` if its file is another's."""
        raw = _read_file(self.message_path(queue_id))
        if not raw.startswith(spool_format.MARKER):
            return raw  # layout 1: the bytes alone, the envelope in env/
        line = raw[: raw.index(b"\n")]
        owner = spool_format.head_queue_id(line)
        if owner != queue_id:
            if self._quarantine_if_misfiled(queue_id):
                raise MisfiledMessage(f"the file of {queue_id} holds {owner}")
            return self.load(queue_id)  # changed while it was read: as it is now, or gone
        return raw[len(line) + 1 : spool_format.body_end(line)]

    async def queued(self) -> list[QueueId]:
        """Queue ids of every committed message on disk: a directory listing, nothing parsed."""
        names = await asyncio.to_thread(os.listdir, self.messages)
        # Checked after the listing, in the event loop: a message listed while its commit
        # was still being announced is either still uncommitted here or announced by now.
        return [
            queue_id
            for name in names
            if name.endswith(".eml")
            and (queue_id := QueueId(name.removesuffix(".eml"))) not in self._commits.uncommitted
        ]

    async def oldest_queued(self, limit: int, skip: Callable[[str], bool]) -> list[QueueId]:
        """The ``limit`` oldest committed messages on disk that ``skip`` does not rule out.

        The directory is read as a stream and only ``limit`` ids are kept, so the memory
        this takes does not grow with the length of the queue.
        """

        def scan() -> list[QueueId]:
            with os.scandir(self.messages) as entries:
                names = (entry.name for entry in entries)
                ids = (QueueId(name[:-4]) for name in names if name.endswith(".eml"))
                wanted = (q for q in ids if q not in self._commits.uncommitted and not skip(q))
                return heapq.nsmallest(limit, wanted)

        return await asyncio.to_thread(scan) if limit > 0 else []

    async def read_envelope(self, queue_id: QueueId) -> Envelope | None:
        """The current envelope of ``queue_id`` as on disk; None once the message is gone."""
        return await asyncio.to_thread(self._read_envelope, queue_id)

    async def read_envelopes(self, queue_ids: list[QueueId]) -> list[Envelope | None]:
        """`read_envelope` of each, in one hand-over to a thread (a sweep reads thousands:
        one each cost more CPU than the reading); None also for one unreadable (logged)."""
        return await asyncio.to_thread(lambda: [self._read_readable(q) for q in queue_ids])

    def _read_readable(self, queue_id: QueueId) -> Envelope | None:
        try:
            return self._read_envelope(queue_id)
        except ValueError:
            logger.exception("spool: envelope %s is unreadable", queue_id)
            return None

    def _read_envelope(self, queue_id: QueueId) -> Envelope | None:
        # The message file first: a removal takes it before the changed envelope.
        try:
            current = spool_format.read_current(self.message_path(queue_id))
        except FileNotFoundError:
            return None
        changed = spool_format.read_envelope_file(self.changed_envelope_path(queue_id))
        if _misfiled(queue_id, current, changed):
            if self._quarantine_if_misfiled(queue_id):
                return None  # nothing of it to deliver
            return self._read_envelope(queue_id)  # changed while it was read: as it is now
        if changed is not None:
            return changed
        if current is None:
            raise ValueError(f"message {queue_id} has no envelope")
        return current

    def _quarantine_if_misfiled(self, queue_id: QueueId) -> bool:
        """Move the files of ``queue_id`` to corrupt/ if they hold another message's envelope.

        Checked again under the lock removals take: a file read while its message was being
        removed, its inode then reused for another, is gone rather than misfiled. Returns
        whether it quarantined them.
        """
        with self._append_lock:
            message, changed = self.message_path(queue_id), self.changed_envelope_path(queue_id)
            try:
                found = (
                    spool_format.read_current(message),
                    spool_format.read_envelope_file(changed),
                )
            except FileNotFoundError:
                return False
            if not _misfiled(queue_id, *found):
                return False
            self._quarantine_misfiled(queue_id, found)
            self._changed.discard(queue_id)
            return True

    # -- start -----------------------------------------------------------------------

    def recover(self) -> list[Envelope]:
        """Clean up after a crash and return the queued envelopes, oldest first.

        Reads both layouts (see the module's docstring): a spool queued by an older
        version is delivered as it stands, nothing is converted.
        """
        for leftover in self.temp.rglob("*"):
            if leftover.is_file():
                leftover.unlink()
        self.spares.load()
        changed = {
            QueueId(name.removesuffix(".json"))
            for name in os.listdir(self.envelopes)
            if name.endswith(".json")
        }
        messages = sorted(
            QueueId(name.removesuffix(".eml"))
            for name in os.listdir(self.messages)
            if name.endswith(".eml")
        )
        envelopes: list[Envelope] = []
        for queue_id in messages:
            envelope = self._recover_one(queue_id, changed)
            if envelope is not None:
                envelopes.append(envelope)
        for queue_id in sorted(changed.difference(messages)):
            # Expected after a crash between a removal's two steps (see `_remove_files`).
            logger.info("spool: envelope %s has no message; quarantined", queue_id)
            self._quarantine(self.changed_envelope_path(queue_id))
        self._changed = changed.intersection(e.queue_id for e in envelopes)
        for folder in (self.messages, self.envelopes, self.temp, self.corrupt):
            fsync_directory(folder)
        self._load_message_ids(envelopes)
        return envelopes

    def _recover_one(self, queue_id: QueueId, changed: set[QueueId]) -> Envelope | None:
        """The envelope of one message file found on recovery, or None once dealt with."""
        message = self.message_path(queue_id)
        try:
            # The message file's envelope is read even when env/ wins: it says whose bytes
            # the file holds.
            current = spool_format.read_current(message)
            envelope = current
            if queue_id in changed:
                envelope = Envelope.from_json(self.changed_envelope_path(queue_id).read_bytes())
        except ValueError:
            logger.error("spool: envelope %s is unreadable; quarantined", queue_id)
            self._quarantine(self.changed_envelope_path(queue_id))
            self._quarantine(message)
            return None
        if envelope is None:
            # Layout 1's message without its envelope: it was never acknowledged.
            logger.info("spool: dropping unacknowledged message %s", queue_id)
            message.unlink()
            return None
        if _misfiled(queue_id, current, envelope):
            self._quarantine_misfiled(queue_id, (current, envelope))
            return None
        return envelope

    def _quarantine_misfiled(
        self, queue_id: QueueId, found: tuple[Envelope | None, Envelope | None]
    ) -> None:
        owners = sorted({e.queue_id for e in found if e is not None and e.queue_id != queue_id})
        logger.error(
            "spool: the files of %s hold the envelope of %s, not its own; quarantined",
            queue_id,
            ", ".join(owners),
        )
        self._quarantine(self.changed_envelope_path(queue_id))
        self._quarantine(self.message_path(queue_id))

    def _quarantine(self, path: Path) -> None:
        if path.exists():
            os.replace(path, self.corrupt / path.name)

    def _load_message_ids(self, envelopes: list[Envelope]) -> None:
        """Rebuild the Message-ID index from the log and the spool, dropping expired ids."""
        self._known.close()
        self._known = MessageIdIndex(self.temp, horizon=self._horizon)
        temp = self.temp / MESSAGE_IDS_LOG
        self._legacy_keys = message_id_log.load(
            self.message_ids_log, envelopes, self._horizon(), self._known, temp
        )

    def _horizon(self) -> float:
        """Message-IDs accepted before this are forgotten."""
        return self.clock() - self.dedupe_window


def _read_file(path: Path) -> bytes:
    """The file's bytes: open, fstat, read, close (``Path.read_bytes`` makes twice the calls).

    A deferral may append while this reads; what it appended lies after the message bytes.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        chunks = [os.read(fd, size)]
        read = len(chunks[0])
        while read < size and (chunk := os.read(fd, size - read)):
            chunks.append(chunk)
            read += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def _fsync_each(fds: list[int]) -> list[int]:
    """Fsync each descriptor, in order (one lane of `in_lanes`)."""
    for fd in fds:
        os.fsync(fd)
    return fds


def _misfiled(queue_id: QueueId, *envelopes: Envelope | None) -> bool:
    """Whether an envelope read from the files of ``queue_id`` names another queue id."""
    return any(envelope is not None and envelope.queue_id != queue_id for envelope in envelopes)
