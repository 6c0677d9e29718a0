"""Spare files: the spool recycles the inodes of removed files instead of creating new ones.

Creating a file is the spool's dearest step on ext4: the inode allocator walks past every
inode freed in the last few seconds (`recently_deleted` in `find_inode_bit`), so at a few
hundred messages a second, each creating and later unlinking two files, `perf` put about
60 % of the spool's CPU in `ext4_create`. A removed message's files are therefore renamed
into `spare/` and written over by a later commit or envelope rewrite; a rewritten envelope
swaps places with its replacement (`renameat2(RENAME_EXCHANGE)`) so that the old inode
becomes a spare too. The pool is bounded; beyond it files are unlinked as before.

A retired file is held back until its caller ``release``s it, after the directory fsync that
makes its removal durable. Handed out before, it could be written over with another message
while a power loss could still bring back the entry that named it: the old queue id would
come back with the new message's bytes (the wrong mail to its recipients, or one sent twice).

A spare's content is meaningless: recovery keeps the files and reuses them.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import secrets
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
Files = tuple[tuple[Path, bytes], ...]
"""Files written together: (where to create it if no spare is free, content) each."""

DEFAULT_LIMIT = 2048
"""Spare files kept at most (5 KB messages: ~10 MB of disk)."""
RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


def exchange(first: Path, second: Path) -> bool:
    """Atomically swap two existing paths; False where the system cannot (or one is missing)."""
    if _renameat2 is None:
        return False
    if _renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE):
        code = ctypes.get_errno()
        if code in (errno.ENOENT, errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.EPERM):
            return False
        raise OSError(code, os.strerror(code), str(first), None, str(second))
    return True


def write_new(path: Path, data: bytes) -> int:
    """Create ``path`` with ``data`` and return its still open descriptor (for the fsync)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, data)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` at the descriptor's offset (0 for a file just opened;
    ``O_APPEND``: at the end)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_directory(directory: Path) -> None:
    """Make the names created, renamed or removed in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SparePool:
    """Files in one directory, free to be written over; safe to use from several threads."""

    def __init__(self, directory: Path, limit: int = DEFAULT_LIMIT) -> None:
        self.directory = directory
        self.limit = limit
        directory.mkdir(parents=True, exist_ok=True)
        self._files: deque[Path] = deque()
        self._held = 0  # retired, not yet released: counted against the limit
        self._count_lock = threading.Lock()
        self._prefix = secrets.token_hex(4)
        self._names = itertools.count()

    def __len__(self) -> int:
        """Spare files free to be written over (those held back not counted)."""
        return len(self._files)

    def load(self) -> None:
        """Take up the files already in the directory (after a restart); unlink any extra."""
        self._files.clear()
        self._held = 0
        with os.scandir(self.directory) as entries:
            files = sorted(entry.path for entry in entries if entry.is_file(follow_symlinks=False))
        for path in files[self.limit :]:
            os.unlink(path)
        self._files.extend(Path(path) for path in files[: self.limit])

    def write(self, fallback: Path, data: bytes) -> tuple[Path, int]:
        """Write ``data`` over a spare (or into a new ``fallback``); its path and open fd.

        Written in place and cut to length, so a spare's blocks are reused as well.
        """
        while True:
            try:
                spare = self._files.pop()
            except IndexError:
                return fallback, write_new(fallback, data)
            try:
                fd = os.open(spare, os.O_WRONLY)
            except FileNotFoundError:
                continue  # removed by a person: take the next one
            if os.fstat(fd).st_nlink > 1:
                # A backup's snapshot holds a hard link to it (workers.mta.snapshot): writing
                # over it would change the bytes in the backup. Let the snapshot keep it.
                os.close(fd)
                os.unlink(spare)
                continue
            try:
                write_all(fd, data)
                os.ftruncate(fd, len(data))
            except BaseException:
                os.close(fd)
                raise
            return spare, fd

    def retire(self, path: Path) -> Path | None:
        """Move a file no longer needed into the pool, held back until ``release``.

        Returns where it is now, or None when it was unlinked (the pool is full) or was gone.
        """
        with self._count_lock:
            full = len(self._files) + self._held >= self.limit
            if not full:
                self._held += 1
        if full:
            # Safe before the directory fsync: a journaling filesystem reuses a freed inode
            # and its blocks only after the unlink has been committed.
            path.unlink(missing_ok=True)
            return None
        if path.parent != self.directory:
            target = self.directory / f"{self._prefix}-{next(self._names)}"
            try:
                os.rename(path, target)
            except FileNotFoundError:
                with self._count_lock:
                    self._held -= 1
                return None
            path = target
        return path

    def release(self, paths: Iterable[Path]) -> None:
        """Hand out files ``retire`` held back: call once their removal is durable.

        A file never released (its directory fsync failed) stays in the directory, counted
        against the limit, and is taken up by ``load`` at the next start.
        """
        released = list(paths)
        with self._count_lock:
            self._held -= len(released)
            self._files.extend(released)


def stage(spares: SparePool, groups: list[Files]) -> list[list[Path]]:
    """Write every file over a spare (or a new file at its path), then fsync all and close.

    Returns where each group's files were written; durable once it returns. All writes
    come before the first fsync, so that the fsyncs find the data already under way.
    """
    written: list[list[tuple[Path, int]]] = []
    try:
        for files in groups:
            written.append([])
            for path, data in files:
                written[-1].append(spares.write(path, data))
        for group in written:
            for _, fd in group:
                os.fsync(fd)
    finally:
        for group in written:
            for _, fd in group:
                os.close(fd)
    return [[path for path, _ in group] for group in written]


def stage_parallel(
    pool: ThreadPoolExecutor, lanes: int, spares: SparePool, groups: list[Files]
) -> list[list[Path]]:
    """`stage` every group of files, in parallel (`in_lanes`); where each file was written."""
    return in_lanes(pool, lanes, groups, lambda lane: stage(spares, lane))


def in_lanes(
    pool: ThreadPoolExecutor,
    lanes: int,
    items: Sequence[T],
    run: Callable[[list[T]], list[R]],
) -> list[R]:
    """``run`` the items dealt into at most ``lanes`` lanes, in parallel; results in order.

    Item i goes to lane i % lanes; ``run`` gets a lane's items and returns one result each.
    The first lane runs in this thread, the others on ``pool``: concurrent fsyncs fold into
    fewer disk flushes, while a single item costs no hand-over between threads at all (each
    wakes a thread and contends for the GIL). Every lane ends before the first failure is
    raised, so nothing is still writing when the caller hears of it.
    """
    lanes = min(len(items), lanes)
    if lanes <= 1:
        return run(list(items))
    tasks = [pool.submit(run, list(items[lane::lanes])) for lane in range(1, lanes)]
    try:
        first = run(list(items[0::lanes]))
    finally:
        wait(tasks)
    results = [first, *(task.result() for task in tasks)]  # the first failure fails all
    out: list[R] = [None] * len(items)  # type: ignore[list-item]  # every slot set below
    for lane, lane_results in enumerate(results):
        for index, result in enumerate(lane_results):
            out[lane + index * lanes] = result
    return out
