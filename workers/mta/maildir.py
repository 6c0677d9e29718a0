"""A Maildir written durably: temp file, fsync, rename into new/, directory fsync.

`store` is a group commit (as the spool's accept is): concurrent calls queue their
messages; one committer writes a whole batch into tmp/, fsyncs every file (in parallel:
the filesystem folds concurrent fsyncs into one journal commit), renames them into new/
and fsyncs new/ once, then answers every waiter. Nobody is answered before their file is
durable, and a batch of N deliveries costs one directory fsync instead of N.

tmp/ itself is never fsynced: a crash may leave a file there, which Maildir readers ignore
(and which was never acknowledged).

Delivery into the Maildir is at least once, not exactly once. A message acknowledged is
never lost; but one whose file reached new/ without its caller hearing so is offered again
and lands a second time: a crash after the rename and before the acknowledgement is
recorded (the spool still holds the message and delivers it again; an inbound client
that got no 250 sends again), a pass that fails after some of its renames (its waiters
hear the failure), a caller cancelled while its pass completes.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from workers.mta.spares import fsync_directory, in_lanes, write_all

MAX_BATCH = 512
"""Most messages in one fsync pass, so one batch cannot delay the next forever."""
IO_THREADS = 8
"""Files of one batch written and fsynced at once (their fsyncs share a journal commit);
each thread takes an equal share of the batch."""


@dataclass
class MaildirStats:
    """Group-commit figures: how many fsync passes stored how many messages."""

    commits: int = 0
    stored: int = 0


@dataclass(eq=False)
class _Pending:
    messages: Sequence[bytes]
    future: asyncio.Future[list[Path]] = field(repr=False)


def _unique_name() -> str:
    return f"{time.time():.6f}.{secrets.token_hex(8)}.warta"


def _write_durably(path: Path, data: bytes) -> None:
    """Create `path` with `data` and fsync it (the file, not yet its directory entry)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _written(files: list[tuple[Path, bytes]]) -> list[Path]:
    """Create and fsync each file of one writer's lane of a batch, in order; their paths."""
    for path, data in files:
        _write_durably(path, data)
    return [path for path, _ in files]


def _fail(items: list[_Pending], error: BaseException) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)


class DurableMaildir:
    """Messages that survive a crash once `add` or `store` returns; stored at least once."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.tmp = directory / "tmp"
        self.new = directory / "new"
        for sub in (self.tmp, self.new, directory / "cur"):
            sub.mkdir(parents=True, exist_ok=True)
        self.stats = MaildirStats()
        self._pending: deque[_Pending] = deque()  # a backlog is taken from the front
        self._in_pass: list[_Pending] = []  # taken from _pending by the pass under way
        self._committer: asyncio.Task[None] | None = None
        self._io_pool: ThreadPoolExecutor | None = None

    def add(self, data: bytes) -> Path:
        """Store one message now, alone (blocking: call in a thread); returns its path."""
        return self._commit([data])[0]

    async def store(self, messages: Sequence[bytes]) -> list[Path]:
        """Store messages, sharing one fsync pass with concurrent calls; their paths in new/.

        Returns only once every file and its directory entry are on disk. A cancelled
        caller does not cancel the commit (its files still land, unacknowledged).
        """
        if not messages:
            return []
        future: asyncio.Future[list[Path]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(messages, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending(), name="maildir-commit")
            self._committer.add_done_callback(self._committer_ended)
        return await asyncio.shield(future)

    def _committer_ended(self, task: asyncio.Task[None]) -> None:
        # Cancelled (the loop is shutting down), perhaps before it ever ran: nobody may wait
        # for a pass that will never report. Failed, not delivered: the spool keeps them.
        if task.cancelled():
            _fail([*self._in_pass, *self._pending], RuntimeError("the Maildir committer stopped"))
            self._in_pass.clear()
            self._pending.clear()

    async def close(self) -> None:
        """Finish the commits under way and release the writer threads."""
        if self._committer is not None:
            await asyncio.gather(self._committer, return_exceptions=True)
            self._committer = None
        if self._io_pool is not None:
            self._io_pool.shutdown()
            self._io_pool = None

    async def _commit_pending(self) -> None:
        # Whatever queued while one pass ran is the next batch: no timer, no added latency.
        while self._pending:
            batch: list[_Pending] = []
            count = 0
            while self._pending and (
                not batch or count + len(self._pending[0].messages) <= MAX_BATCH
            ):
                item = self._pending.popleft()
                batch.append(item)
                self._in_pass.append(item)
                count += len(item.messages)
            try:
                paths = await asyncio.to_thread(
                    self._commit, [data for item in batch for data in item.messages]
                )
            except Exception as exc:  # every waiter of the batch hears of it; none is lost
                self._in_pass.clear()
                _fail(batch, exc)
                continue
            self._in_pass.clear()  # (not when cancelled: `_committer_ended` fails them)
            start = 0
            for item in batch:
                end = start + len(item.messages)
                if not item.future.done():
                    item.future.set_result(paths[start:end])
                start = end

    def _commit(self, messages: list[bytes]) -> list[Path]:
        """Write, fsync, rename into new/, fsync new/: durable once it returns."""
        names = [_unique_name() for _ in messages]
        temps = [self.tmp / name for name in names]
        if len(messages) == 1:
            _write_durably(temps[0], messages[0])
        else:
            if self._io_pool is None:
                self._io_pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="maildir-io")
            # One lane per writer thread, not a task per file: a batch of N costs IO_THREADS
            # hand-overs (futures, wake-ups, GIL switches) instead of N, and still keeps
            # IO_THREADS fsyncs in flight for the journal to fold into one commit.
            in_lanes(self._io_pool, IO_THREADS, list(zip(temps, messages, strict=True)), _written)
        finals = [self.new / name for name in names]
        for temp, final in zip(temps, finals, strict=True):
            os.replace(temp, final)
        fsync_directory(self.new)
        self.stats.commits += 1
        self.stats.stored += len(messages)
        return finals
