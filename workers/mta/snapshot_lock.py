"""The lock between the spool's group commit and a backup's snapshot of the spool.

Every commit holds a shared `flock` on ``snapshot.lock`` in the spool directory while it
writes and renames a batch and logs its Message-IDs; `workers.mta.snapshot.take` holds it
exclusively while it links the queued files. An `flock`, not a lock in memory, because
the backup is another process.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = "snapshot.lock"


def open_lock(spool: Path) -> int:
    """Open (creating) the spool's snapshot lock file; the descriptor stays with the caller."""
    return os.open(spool / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)


@contextmanager
def shared(fd: int) -> Iterator[None]:
    """Held by a commit: no snapshot is taken while its files are half in place."""
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def exclusive(fd: int) -> Iterator[None]:
    """Held by a snapshot: waits for the commit in progress, holds off the next."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
