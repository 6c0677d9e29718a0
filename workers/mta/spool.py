"""The MTA's durable queue: every accepted message is on disk and fsynced before its 250.

Layout under the spool directory::

    msg/<queue id>.eml      the message bytes as received
    env/<queue id>.json     the envelope: sender, recipients and their delivery state
    tmp/<shard>/            files being written; emptied on recovery
    spare/                  files of removed messages and replaced envelopes, written over
                            by later ones instead of creating new files (see `spares`)
    corrupt/                envelopes whose message is missing, kept for a person to read
    message-ids.log         accepted Message-IDs with their time, one JSON object a line
    snapshot.lock           commits hold it shared, a backup's snapshot exclusive (``snapshot``)

A message is acknowledged only when its envelope exists, so the envelope is renamed into
place after the message: an ``.eml`` without its ``.json`` was never acknowledged and is
dropped on recovery, a ``.json`` without its ``.eml`` is a corruption and is quarantined.

Group commit (as Postfix and databases do it): concurrent ``accept`` calls queue their
files; one committer writes a whole batch, fsyncs each file and each directory once,
then resolves every waiter. Nobody is answered before their files are durable, and many
sessions share the cost of one fsync pass. Envelope rewrites (after a deferral) and removals
are grouped the same way.

The committer, not the accepting session, tells the spool's listeners (the delivery agent)
that a message is durable: a session cancelled while its commit completes (the client
disconnected) must not leave a queued message that nobody will deliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, NewType, Self

from workers.mta import snapshot_lock
from workers.mta.spares import SparePool, exchange, stage_parallel, write_new

logger = logging.getLogger(__name__)

QueueId = NewType("QueueId", str)
"""Sortable unique id of a spooled message: nanosecond time in hex, then random hex."""

DEFAULT_DEDUPE_WINDOW = 7 * 24 * 3600.0
"""Seconds a Message-ID stays known after its message was accepted."""
MAX_BATCH = 512
"""Most messages committed in one fsync pass, so one batch cannot delay the next forever."""
IO_THREADS = 16
"""Files of one batch are written, then fsynced, in parallel: the filesystem folds the fsyncs
into one journal commit (on ext4 twenty 5 KB files take ~2 ms so, ~15 ms one after another)."""
MESSAGE_IDS_LOG = "message-ids.log"


class RecipientStatus(StrEnum):
    """Where delivery to one recipient stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(slots=True)
class RecipientState:
    """Delivery state of one recipient: status, the last remote reply and attempts made."""

    status: RecipientStatus = RecipientStatus.PENDING
    last_reply: str | None = None
    attempts: int = 0


@dataclass(slots=True)  # slots: the agent holds one per message it schedules
class Envelope:
    """The SMTP envelope of a spooled message and the delivery state of each recipient.

    ``mail_from`` is ``""`` for the null sender (bounces, DSNs). ``queue_id`` and
    ``received_at`` are assigned by ``Spool.accept``.
    """

    mail_from: str
    recipients: list[str]
    message_id: str | None = None
    queue_id: QueueId = QueueId("")
    received_at: float = 0.0
    next_attempt_at: float = 0.0
    first_attempt_at: float | None = None
    states: dict[str, RecipientState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for recipient in self.recipients:
            self.states.setdefault(recipient, RecipientState())

    def pending(self) -> list[str]:
        """Recipients still to be delivered to."""
        return [r for r in self.recipients if self.states[r].status is RecipientStatus.PENDING]

    def to_json(self) -> bytes:
        """Serialise for ``env/<queue id>.json``."""
        # Built by hand: dataclasses.asdict deep-copies every field, several times slower.
        data = {
            "mail_from": self.mail_from,
            "recipients": self.recipients,
            "message_id": self.message_id,
            "queue_id": self.queue_id,
            "received_at": self.received_at,
            "next_attempt_at": self.next_attempt_at,
            "first_attempt_at": self.first_attempt_at,
            "states": {
                address: {
                    "status": state.status.value,
                    "last_reply": state.last_reply,
                    "attempts": state.attempts,
                }
                for address, state in self.states.items()
            },
        }
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Envelope:
        """Parse what ``to_json`` wrote; raises ``ValueError`` on anything else."""
        data: dict[str, Any] = json.loads(raw)
        try:
            states = {
                address: RecipientState(
                    status=RecipientStatus(state["status"]),
                    last_reply=state["last_reply"],
                    attempts=int(state["attempts"]),
                )
                for address, state in data["states"].items()
            }
            return cls(
                mail_from=str(data["mail_from"]),
                recipients=[str(r) for r in data["recipients"]],
                message_id=data["message_id"],
                queue_id=QueueId(str(data["queue_id"])),
                received_at=float(data["received_at"]),
                next_attempt_at=float(data["next_attempt_at"]),
                first_attempt_at=data["first_attempt_at"],
                states=states,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed envelope: {exc}") from exc


CommitListener = Callable[[Envelope], None]
"""Called by the committer with each envelope as soon as its message is durable."""


@dataclass
class SpoolStats:
    """Group-commit figures for the metrics endpoint (spool fsync latency)."""

    commits: int = 0
    accepted: int = 0
    fsync_seconds_total: float = 0.0
    last_fsync_seconds: float = 0.0
    last_batch_size: int = 0

    @property
    def mean_fsync_seconds(self) -> float:
        """Mean duration of one fsync pass."""
        return self.fsync_seconds_total / self.commits if self.commits else 0.0


@dataclass
class _Pending:
    envelope: Envelope
    data: bytes
    future: asyncio.Future[QueueId]


def new_queue_id() -> QueueId:
    """A queue id that sorts by creation time and does not collide."""
    return QueueId(f"{time.time_ns():016x}{secrets.token_hex(4)}")


def normalise_message_id(message_id: str) -> str:
    return message_id.strip().removeprefix("<").removesuffix(">")


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        # Seconds the committer lingers before writing a batch, gathering more messages
        # (PostgreSQL's commit_delay). 0 in production; tests widen it to hold a commit open.
        self.commit_delay = commit_delay
        self.stats = SpoolStats()
        self._temp_dirs = [self.temp / str(shard) for shard in range(IO_THREADS)]
        for folder in (self.messages, self.envelopes, self.corrupt, *self._temp_dirs):
            folder.mkdir(parents=True, exist_ok=True)
        self._known: dict[str, tuple[QueueId, float]] = {}
        self._unlogged: list[Envelope] = []  # accepted, their ids not yet in the log
        self._inflight: dict[str, asyncio.Future[QueueId]] = {}
        self._pending: list[_Pending] = []
        # Accepted but not yet durable and announced: on disk perhaps, not yet queued.
        self._uncommitted: set[QueueId] = set()
        self._listeners: list[CommitListener] = []
        self._wakeup = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self._removals: list[tuple[QueueId, asyncio.Future[None]]] = []
        self._remover: asyncio.Task[None] | None = None
        self._updates: list[tuple[QueueId, bytes, asyncio.Future[None]]] = []
        self._updater: asyncio.Task[None] | None = None
        self._closing = False
        self._io_pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="spool-io")
        self._snapshot_lock = snapshot_lock.open_lock(directory)  # see _commit_unless_snapshot

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- paths -----------------------------------------------------------------------

    def message_path(self, queue_id: QueueId) -> Path:
        """Where the message bytes of ``queue_id`` live."""
        return self.messages / f"{queue_id}.eml"

    def envelope_path(self, queue_id: QueueId) -> Path:
        """Where the envelope of ``queue_id`` lives."""
        return self.envelopes / f"{queue_id}.json"

    # -- accepting -------------------------------------------------------------------

    def add_listener(self, listener: CommitListener) -> None:
        """Call `listener` with every envelope once it is durable, whoever accepted it."""
        self._listeners.append(listener)

    @property
    def waiting(self) -> int:
        """Messages accepted whose commit has not completed yet."""
        return len(self._uncommitted)

    async def accept(self, envelope: Envelope, data: bytes) -> QueueId:
        """Spool a message; return its queue id once message and envelope are durable.

        A Message-ID accepted within the dedupe window returns the earlier queue id and
        writes nothing: the sender resubmitted after a crash, the message is already here.
        """
        if self._closing:
            raise RuntimeError("spool is closed")
        key = normalise_message_id(envelope.message_id) if envelope.message_id else None
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
        future: asyncio.Future[QueueId] = asyncio.get_running_loop().create_future()
        if key is not None:
            self._inflight[key] = future
            future.add_done_callback(lambda _: self._inflight.pop(key, None))
        self._pending.append(_Pending(envelope, data, future))
        self._uncommitted.add(envelope.queue_id)
        self._wakeup.set()
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_forever(), name="spool-committer")
        return await asyncio.shield(future)

    async def seen(self, message_id: str) -> QueueId | None:
        """The queue id under which ``message_id`` was accepted within the window, if any."""
        entry = self._known.get(normalise_message_id(message_id))
        if entry is None or entry[1] < self.clock() - self.dedupe_window:
            return None
        return entry[0]

    async def close(self) -> None:
        """Commit what is queued, then stop the committer."""
        self._closing = True
        self._wakeup.set()
        if self._committer is not None:
            await self._committer
            self._committer = None
        if self._updater is not None:
            await self._updater
        if self._remover is not None:
            await self._remover
        self._io_pool.shutdown()
        if self._snapshot_lock >= 0:
            os.close(self._snapshot_lock)
            self._snapshot_lock = -1

    async def _commit_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self.commit_delay > 0 and not self._closing:
                await asyncio.sleep(self.commit_delay)
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                try:
                    await asyncio.to_thread(self._commit_unless_snapshot, batch)
                except Exception as exc:
                    logger.exception("spool commit of %d messages failed", len(batch))
                    for item in batch:
                        self._uncommitted.discard(item.envelope.queue_id)
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                for item in batch:
                    self._committed(item)
            if self._closing:
                return

    def _committed(self, item: _Pending) -> None:
        """Make a durable message known, announce it, then answer whoever waits for it."""
        envelope = item.envelope
        if envelope.message_id:
            key = normalise_message_id(envelope.message_id)
            self._known[key] = (envelope.queue_id, envelope.received_at)
        # Announced here, in the committer, before the waiter hears of it: the waiting
        # session may have been cancelled (its client gone) and would never pass it on.
        for listener in self._listeners:
            try:
                listener(envelope)
            except Exception:  # one listener's bug must not wedge every later commit
                logger.exception("spool listener failed for %s", envelope.queue_id)
        self._uncommitted.discard(envelope.queue_id)
        if not item.future.done():
            item.future.set_result(envelope.queue_id)

    def _commit_unless_snapshot(self, batch: list[_Pending]) -> None:
        """Commit while no backup snapshots the spool: it must never see half a batch."""
        with snapshot_lock.shared(self._snapshot_lock):
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        """Write a batch durably: files, one fsync pass, renames, directory fsyncs, ids log."""
        written = [
            (
                self._temp_dirs[i % IO_THREADS] / f"{item.envelope.queue_id}.eml",
                self.message_path(item.envelope.queue_id),
                self._temp_dirs[i % IO_THREADS] / f"{item.envelope.queue_id}.json",
                self.envelope_path(item.envelope.queue_id),
            )
            for i, item in enumerate(batch)
        ]
        started = time.perf_counter()
        # One task per message writes and fsyncs both its files: one hand-over to the pool
        # per message instead of four, and the concurrent fsyncs still fold into one journal
        # commit. Creating a file holds its directory's lock, so the temporary files are
        # spread over several directories and their creations run in parallel.
        sources = stage_parallel(
            self._io_pool,
            IO_THREADS,
            self.spares,
            [
                ((temp_message, item.data), (temp_envelope, item.envelope.to_json()))
                for item, (temp_message, _, temp_envelope, _) in zip(batch, written, strict=True)
            ],
        )
        # Messages before envelopes: an envelope on disk must always find its message.
        for (source_message, _), (_, message, _, _) in zip(sources, written, strict=True):
            os.replace(source_message, message)
        fsync_directory(self.messages)
        for (_, source_envelope), (_, _, _, envelope) in zip(sources, written, strict=True):
            os.replace(source_envelope, envelope)
        fsync_directory(self.envelopes)
        # The Message-ID log last: an id is never known unless its message is durable,
        # otherwise a resubmission after a crash would be acknowledged and then lost.
        entries = [item.envelope for item in batch if item.envelope.message_id]
        if entries or self._unlogged:
            self._log_message_ids(entries)
        elapsed = time.perf_counter() - started
        self.stats.commits += 1
        self.stats.accepted += len(batch)
        self.stats.fsync_seconds_total += elapsed
        self.stats.last_fsync_seconds = elapsed
        self.stats.last_batch_size = len(batch)

    def _log_message_ids(self, entries: list[Envelope]) -> None:
        """Append the batch's Message-IDs; if that fails the batch is still acknowledged.

        The messages are durably queued once renamed into place: answering 451 now would
        make the client resubmit and the message go out twice. Their ids stay known in
        memory, are appended with the next commit, and a restart rebuilds them from the
        queued envelopes.
        """
        pending = self._unlogged + entries
        try:
            self._append_message_ids(pending)
        except OSError as exc:
            logger.error(
                "spool: could not log %d Message-IDs (%s); they stay known in memory and "
                "are appended with the next commit",
                len(pending),
                exc,
            )
            self._unlogged = pending
        else:
            self._unlogged = []

    def _append_message_ids(self, envelopes: Iterable[Envelope]) -> None:
        lines = b"".join(
            json.dumps(
                {
                    "t": e.received_at,
                    "q": e.queue_id,
                    "m": normalise_message_id(e.message_id or ""),
                },
                separators=(",", ":"),
            ).encode()
            + b"\n"
            for e in envelopes
        )
        fd = os.open(self.message_ids_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, lines)
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- after acceptance ------------------------------------------------------------

    async def update(self, envelope: Envelope) -> None:
        """Atomically rewrite the envelope (after a delivery attempt); durable once it returns.

        Rewrites are grouped like commits: one updater writes and fsyncs a whole batch of
        envelopes in parallel, renames them into place and fsyncs the directory once.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Serialised now: the caller may change the envelope again before the batch runs.
        self._updates.append((envelope.queue_id, envelope.to_json(), future))
        if self._updater is None or self._updater.done():
            self._updater = asyncio.create_task(self._update_pending(), name="spool-updater")
        await asyncio.shield(future)

    async def _update_pending(self) -> None:
        while self._updates:
            batch, self._updates = self._updates[:MAX_BATCH], self._updates[MAX_BATCH:]
            try:
                await asyncio.to_thread(self._rewrite, [(q, raw) for q, raw, _ in batch])
            except Exception as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, _, future in batch:
                if not future.done():
                    future.set_result(None)

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
        # Swapped rather than renamed over: the old envelope's inode becomes a spare.
        for source, (_, queue_id, _) in zip(sources, moves, strict=True):
            if exchange(source, self.envelope_path(queue_id)):
                self.spares.retire(source)
            else:
                os.replace(source, self.envelope_path(queue_id))
        fsync_directory(self.envelopes)

    async def remove(self, queue_id: QueueId) -> None:
        """Forget a message that was delivered or failed for good; its Message-ID stays known.

        Removals are grouped like commits: one remover unlinks a whole batch and fsyncs each
        directory once, so delivering N messages costs two directory fsyncs, not 2N.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._removals.append((queue_id, future))
        if self._remover is None or self._remover.done():
            self._remover = asyncio.create_task(self._remove_pending(), name="spool-remover")
        await asyncio.shield(future)

    async def _remove_pending(self) -> None:
        while self._removals:
            batch, self._removals = self._removals[:MAX_BATCH], self._removals[MAX_BATCH:]
            try:
                await asyncio.to_thread(self._remove, [queue_id for queue_id, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    def _remove(self, queue_ids: list[QueueId]) -> None:
        # Envelopes first: a crash in between leaves unacknowledged-looking orphan messages,
        # which recovery drops, never an envelope without its message.
        # Moved to the spare files (or unlinked): gone from the spool either way.
        for queue_id in queue_ids:
            self.spares.retire(self.envelope_path(queue_id))
        fsync_directory(self.envelopes)
        for queue_id in queue_ids:
            self.spares.retire(self.message_path(queue_id))
        fsync_directory(self.messages)

    def load(self, queue_id: QueueId) -> bytes:
        """The message bytes of ``queue_id``."""
        return self.message_path(queue_id).read_bytes()

    async def queued(self) -> list[QueueId]:
        """Queue ids of every committed message on disk: a directory listing, nothing parsed."""
        names = await asyncio.to_thread(os.listdir, self.envelopes)
        # Checked after the listing, in the event loop: a message listed while its commit
        # was still being announced is either still uncommitted here or announced by now.
        return [
            queue_id
            for name in names
            if name.endswith(".json")
            and (queue_id := QueueId(name.removesuffix(".json"))) not in self._uncommitted
        ]

    async def oldest_queued(self, limit: int, skip: Callable[[str], bool]) -> list[QueueId]:
        """The ``limit`` oldest committed messages on disk that ``skip`` does not rule out.

        The directory is read as a stream and only ``limit`` ids are kept, so the memory
        this takes does not grow with the length of the queue.
        """

        def scan() -> list[QueueId]:
            with os.scandir(self.envelopes) as entries:
                names = (entry.name for entry in entries)
                ids = (QueueId(name[:-5]) for name in names if name.endswith(".json"))
                wanted = (q for q in ids if q not in self._uncommitted and not skip(q))
                return heapq.nsmallest(limit, wanted)

        return await asyncio.to_thread(scan) if limit > 0 else []

    async def read_envelope(self, queue_id: QueueId) -> Envelope | None:
        """The envelope of ``queue_id`` as on disk; None once the message is gone."""
        try:
            raw = await asyncio.to_thread(self.envelope_path(queue_id).read_bytes)
        except FileNotFoundError:
            return None
        return Envelope.from_json(raw)

    # -- start -----------------------------------------------------------------------

    def recover(self) -> list[Envelope]:
        """Clean up after a crash and return the queued envelopes, oldest first."""
        for leftover in self.temp.rglob("*"):
            if leftover.is_file():
                leftover.unlink()
        self.spares.load()
        envelopes: list[Envelope] = []
        for path in sorted(self.envelopes.glob("*.json")):
            queue_id = QueueId(path.stem)
            if not self.message_path(queue_id).exists():
                logger.error("spool: envelope %s has no message; quarantined", queue_id)
                self._quarantine(path)
                continue
            try:
                envelope = Envelope.from_json(path.read_bytes())
            except ValueError:
                logger.error("spool: envelope %s is unreadable; quarantined", queue_id)
                self._quarantine(path)
                self._quarantine(self.message_path(queue_id))
                continue
            envelopes.append(envelope)
        queued = {e.queue_id for e in envelopes}
        for path in self.messages.glob("*.eml"):
            if path.stem not in queued:
                logger.info("spool: dropping unacknowledged message %s", path.stem)
                path.unlink()
        for folder in (self.messages, self.envelopes, self.temp, self.corrupt):
            fsync_directory(folder)
        self._load_message_ids(envelopes)
        return envelopes

    def _quarantine(self, path: Path) -> None:
        if path.exists():
            os.replace(path, self.corrupt / path.name)

    def _load_message_ids(self, envelopes: list[Envelope]) -> None:
        """Rebuild the Message-ID index from the log and the spool, dropping expired ids."""
        horizon = self.clock() - self.dedupe_window
        known: dict[str, tuple[QueueId, float]] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in self.message_ids_log.read_bytes().splitlines():
                try:
                    entry = json.loads(line)
                    known[str(entry["m"])] = (QueueId(str(entry["q"])), float(entry["t"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line from a crash: its batch was never answered
        for envelope in envelopes:
            if envelope.message_id:
                key = normalise_message_id(envelope.message_id)
                known.setdefault(key, (envelope.queue_id, envelope.received_at))
        self._known = {k: v for k, v in known.items() if v[1] >= horizon}
        lines = b"".join(
            json.dumps({"t": t, "q": q, "m": m}, separators=(",", ":")).encode() + b"\n"
            for m, (q, t) in self._known.items()
        )
        write_atomically(self.message_ids_log, self.temp / MESSAGE_IDS_LOG, lines)
