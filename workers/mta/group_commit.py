"""The spool's group commit: concurrent acceptances written, fsynced and answered together.

Concurrent ``submit`` calls queue their messages; one committer task writes a whole batch
(in a thread), fsyncs each file and ``msg/`` once, then resolves every waiter: nobody is
answered before their message is durable, and many sessions share the cost of one fsync
pass (as Postfix and databases do it).

The batch's Message-IDs are appended to the log and fsynced *alongside* the files and the
directory, not after them, so a 250 waits for two fsyncs in a row (files, then directory),
not three. What the 250 vouches for is still on disk before it: the message and its id. A
crash can now leave an id logged whose message never became durable (nobody was answered);
the log counts such an id only once a later line confirms the batch, written after its
commit completed (see `message_id_log`), and `confirm_logged` does so before a message of
the latest batch is removed.

The committer, not the accepting session, announces that a message is durable: a session
cancelled while its commit completes (the client disconnected) must not leave a queued
message that nobody will deliver.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from workers.mta import message_id_log, snapshot_lock, spool_format
from workers.mta.spares import SparePool, fsync_directory, stage_parallel
from workers.mta.spool_format import Envelope, QueueId

logger = logging.getLogger(__name__)

MAX_BATCH = 512
"""Most messages committed in one fsync pass, so one batch cannot delay the next forever."""
IO_THREADS = 16
"""Files of one batch are written, then fsynced, in parallel: the filesystem folds the fsyncs
into one journal commit (on ext4 twenty 5 KB files take ~2 ms so, ~15 ms one after another)."""


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


class GroupCommit:
    """The committer of one spool: ``submit`` a message, await it durable (see the module)."""

    def __init__(
        self,
        directory: Path,
        spares: SparePool,
        io_pool: ThreadPoolExecutor,
        announce: Callable[[Envelope], None],
        *,
        commit_delay: float = 0.0,
    ) -> None:
        self.messages = directory / "msg"
        self.message_ids_log = directory / message_id_log.MESSAGE_IDS_LOG
        self.spares = spares
        # Seconds the committer lingers before writing a batch, gathering more messages
        # (PostgreSQL's commit_delay). 0 in production; tests widen it to hold a commit open.
        self.commit_delay = commit_delay
        self.stats = SpoolStats()
        self._temp_dirs = [directory / "tmp" / str(shard) for shard in range(IO_THREADS)]
        self._io_pool = io_pool
        self._announce = announce  # called with each envelope once durable, before its waiter
        self._pending: list[_Pending] = []
        # Accepted but not yet durable and announced: on disk perhaps, not yet queued.
        self.uncommitted: set[QueueId] = set()
        self._wakeup = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self._closing = False
        self._unlogged: list[Envelope] = []  # accepted, their ids not yet in the log
        # The latest batch of ids logged whose commit completed, and its envelopes, until a
        # later line confirms it (see `message_id_log`); None when there is none.
        self._logged: tuple[QueueId, dict[QueueId, Envelope]] | None = None
        self._confirmed = QueueId("")  # the batch `confirm_logged` confirmed last
        self._snapshot_lock = snapshot_lock.open_lock(directory)  # see _commit_unless_snapshot

    def submit(self, envelope: Envelope, data: bytes) -> asyncio.Future[QueueId]:
        """Queue a message for the next batch; the future resolves once it is durable."""
        future: asyncio.Future[QueueId] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(envelope, data, future))
        self.uncommitted.add(envelope.queue_id)
        self._wakeup.set()
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_forever(), name="spool-committer")
        return future

    async def close(self) -> None:
        """Commit what is queued, then stop the committer."""
        self._closing = True
        self._wakeup.set()
        if self._committer is not None:
            await self._committer
            self._committer = None
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
                        self.uncommitted.discard(item.envelope.queue_id)
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                for item in batch:
                    self._committed(item)
            if self._closing:
                return

    def _committed(self, item: _Pending) -> None:
        """Announce a durable message, then answer whoever waits for it."""
        # Announced here, in the committer, before the waiter hears of it: the waiting
        # session may have been cancelled (its client gone) and would never pass it on.
        self._announce(item.envelope)
        self.uncommitted.discard(item.envelope.queue_id)
        if not item.future.done():
            item.future.set_result(item.envelope.queue_id)

    def _commit_unless_snapshot(self, batch: list[_Pending]) -> None:
        """Commit while no backup snapshots the spool: it must never see half a batch."""
        with snapshot_lock.shared(self._snapshot_lock):
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        """Write a batch durably: files, one fsync pass, renames, one directory fsync; the
        Message-ID log appended and fsynced alongside (its batch confirmed by a later line)."""
        written = [
            (
                self._temp_dirs[i % IO_THREADS] / f"{item.envelope.queue_id}.eml",
                self.messages / f"{item.envelope.queue_id}.eml",
            )
            for i, item in enumerate(batch)
        ]
        started = time.perf_counter()
        # The ids are logged while the files are written: three fsyncs in a row (files,
        # directory, log) would make every 250 wait for all three. A crash can then leave an
        # id logged whose message is not durable, so the log's line counts only once a later
        # line confirms the batch, written after this commit completed (`message_id_log`).
        entries = [item.envelope for item in batch if item.envelope.message_id]
        carried = self._unlogged
        log = self._io_pool.submit(self._log_message_ids, entries) if entries or carried else None
        try:
            # One file a message, envelope inside: one inode, one fsync, one rename. The
            # files are written and fsynced by several threads, so that the concurrent fsyncs
            # fold into fewer disk flushes; creating a file holds its directory's lock, so
            # the temporary files are spread over several directories and their creations
            # run in parallel.
            sources = stage_parallel(
                self._io_pool,
                IO_THREADS,
                self.spares,
                [
                    ((temp, spool_format.encode(item.envelope, item.data)),)
                    for item, (temp, _) in zip(batch, written, strict=True)
                ],
            )
            for (source,), (_, message) in zip(sources, written, strict=True):
                os.replace(source, message)
            fsync_directory(self.messages)
        except BaseException:
            if log is not None:
                wait([log])  # its batch stays unconfirmed: never counted
                self._unlogged = carried  # their messages are durable: log them again
            raise
        logged = log.result() if log is not None else None  # a failure keeps them in memory
        if logged is not None:
            # Only now, the commit complete, may a line confirm the batch: the next commit's
            # first line, or a removal's (`confirm_logged`). Replaced, never changed in
            # place: the event loop reads it.
            self._logged = logged
        elapsed = time.perf_counter() - started
        self.stats.commits += 1
        self.stats.accepted += len(batch)
        self.stats.fsync_seconds_total += elapsed
        self.stats.last_fsync_seconds = elapsed
        self.stats.last_batch_size = len(batch)

    def _log_message_ids(
        self, entries: list[Envelope]
    ) -> tuple[QueueId, dict[QueueId, Envelope]] | None:
        """Append the batch's Message-IDs; if that fails the batch is still acknowledged.

        The messages are durably queued once renamed into place: answering 451 now would
        make the client resubmit and the message go out twice. Their ids stay known in
        memory, are appended with the next commit, and a restart rebuilds them from the
        queued envelopes.
        """
        # This commit's own envelopes first: the first names the batch, and a carried id
        # would name a second batch alike if a commit after it failed.
        pending = entries + self._unlogged
        confirms = self._logged[0] if self._logged is not None else ""
        try:
            batch = message_id_log.append_batch(self.message_ids_log, pending, confirms)
        except OSError as exc:
            logger.error(
                "spool: could not log %d Message-IDs (%s); they stay known in memory and "
                "are appended with the next commit",
                len(pending),
                exc,
            )
            self._unlogged = pending
            return None
        self._unlogged = []
        return batch, {e.queue_id: e for e in pending}

    def unconfirmed(self, queue_ids: list[QueueId]) -> tuple[QueueId, list[Envelope]] | None:
        """The latest logged batch and those of ``queue_ids`` in it, if any: its line in the
        Message-ID log is not confirmed yet (see `confirm_logged`)."""
        logged = self._logged
        if logged is None:
            return None
        batch, envelopes = logged
        if batch == self._confirmed:
            return None
        found = [envelopes[q] for q in queue_ids if q in envelopes]
        return (batch, found) if found else None

    def confirm_logged(self, batch: QueueId, envelopes: list[Envelope]) -> None:
        """Confirm a logged batch before removing messages of it (once their files are gone,
        only the log keeps their ids, and an unconfirmed id is dropped by recovery)."""
        try:
            message_id_log.confirm(self.message_ids_log, batch, envelopes)
            self._confirmed = batch  # the batch's other messages need not confirm it again
        except OSError as exc:  # as at commit: delivered, so removed; the ids stay in memory
            logger.error("spool: could not confirm %d Message-IDs (%s)", len(envelopes), exc)
