"""The spool's Message-ID index, kept in a file instead of the heap.

The spool remembers every Message-ID it accepted within the dedupe window (7 days): at a
million messages a dict of strings holds ~400 bytes per id, ~400 MB of RSS that grows with
every message. This index keeps the same mapping (normalised Message-ID → queue id and time
of acceptance) in an open-addressing hash table in an unnamed temporary file: each lookup is
one `pread`, each insertion a `pread` and a `pwrite`, the pages live in the page cache (the
kernel's to evict), and the process's RSS does not grow with the number of ids.

The file is a cache, never read back: it is unlinked as soon as it is made (gone with the process),
and the spool rebuilds it at recovery from ``message-ids.log``. A slot holds a 128-bit
BLAKE2b digest of the id (a collision between two ids among a billion has a probability
below 10⁻²⁰), the time of acceptance and the queue id packed in 12 bytes; a queue id of
another shape than `new_queue_id`'s (none is made today) is kept in a small dict.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path

from workers.mta.spool_format import QueueId

SLOT = struct.Struct("<16sdQI")
"""digest, accepted at, queue id: its time (16 hex digits) and its random part (8)."""
EMPTY = bytes(16)
INITIAL_SLOTS = 1 << 21
"""2 M slots (72 MB of sparse file, written only where used): room for ~1.4 M ids before
the table doubles."""
MAX_LOAD = 0.7
PROBE = 8
"""Slots read per `pread` while probing."""


def _digest(key: str) -> bytes:
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).digest()
    return digest if digest != EMPTY else b"\x01" + digest[1:]


def _pack(queue_id: str) -> tuple[int, int] | None:
    """The two numbers of a queue id made by `new_queue_id`, else None."""
    if len(queue_id) != 24 or queue_id != queue_id.lower():
        return None
    try:
        return int(queue_id[:16], 16), int(queue_id[16:], 16)
    except ValueError:
        return None


class MessageIdIndex:
    """Normalised Message-ID → (queue id, accepted at), in a file; RSS independent of size."""

    def __init__(
        self,
        directory: Path,
        *,
        horizon: Callable[[], float] = lambda: float("-inf"),
        slots: int = INITIAL_SLOTS,
    ) -> None:
        self.directory = directory
        self.horizon = horizon
        """Entries accepted before this are dropped when the table is rebuilt larger."""
        self._slots = slots
        self._fd = -1
        self._release: weakref.finalize[[int], MessageIdIndex] | None = None
        self._count = 0
        self._odd: dict[bytes, tuple[QueueId, float]] = {}

    def __len__(self) -> int:
        return self._count + len(self._odd)

    def get(self, key: str) -> tuple[QueueId, float] | None:
        """The queue id and time of acceptance of ``key``, if it was recorded."""
        digest = _digest(key)
        if self._odd and digest in self._odd:
            return self._odd[digest]
        if self._fd < 0:
            return None
        _, entry = self._find(digest)
        return entry

    def __setitem__(self, key: str, value: tuple[QueueId, float]) -> None:
        queue_id, accepted_at = value
        digest = _digest(key)
        packed = _pack(queue_id)
        if packed is None:
            self._odd[digest] = value
            return
        if self._fd < 0:
            self._open()
        slot, entry = self._find(digest)
        os.pwrite(self._fd, SLOT.pack(digest, accepted_at, *packed), slot * SLOT.size)
        if entry is None:
            self._count += 1
            if self._count > self._slots * MAX_LOAD:
                self._grow()

    def close(self) -> None:
        """Release the file (its space with it); it is also released when the index is."""
        if self._release is not None:
            self._release()
            self._release = None
        self._fd = -1
        self._count = 0
        self._odd.clear()

    def _open(self) -> None:
        self._fd = _temporary_file(self.directory, self._slots)
        self._release = weakref.finalize(self, os.close, self._fd)

    def _find(self, digest: bytes) -> tuple[int, tuple[QueueId, float] | None]:
        """The slot holding ``digest`` (and its entry), or the empty slot it would take."""
        mask = self._slots - 1
        slot = int.from_bytes(digest[:8], "little") & mask
        while True:
            run = min(PROBE, self._slots - slot)
            chunk = os.pread(self._fd, run * SLOT.size, slot * SLOT.size)
            chunk += bytes(run * SLOT.size - len(chunk))  # past the end of a short file
            for offset in range(0, len(chunk), SLOT.size):
                found, accepted_at, when, rest = SLOT.unpack_from(chunk, offset)
                if found == EMPTY:
                    return slot, None
                if found == digest:
                    return slot, (QueueId(f"{when:016x}{rest:08x}"), accepted_at)
                slot = (slot + 1) & mask

    def _grow(self) -> None:
        """Rebuild into a table twice the size, leaving out entries older than the horizon."""
        old, old_slots, release = self._fd, self._slots, self._release
        horizon = self.horizon()
        self._slots *= 2
        self._open()
        self._count = 0
        chunk_slots = 4096
        try:
            for start in range(0, old_slots, chunk_slots):
                chunk = os.pread(old, chunk_slots * SLOT.size, start * SLOT.size)
                for offset in range(0, len(chunk) - SLOT.size + 1, SLOT.size):
                    digest, accepted_at, _, _ = SLOT.unpack_from(chunk, offset)
                    if digest == EMPTY or accepted_at < horizon:
                        continue
                    slot, _ = self._find(digest)
                    os.pwrite(self._fd, chunk[offset : offset + SLOT.size], slot * SLOT.size)
                    self._count += 1
        finally:
            if release is not None:
                release()


def _temporary_file(directory: Path, slots: int) -> int:
    """An unnamed file of ``slots`` empty slots (sparse: no block is written)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="message-ids-", suffix=".index", dir=directory)
    os.unlink(name)  # unnamed from now on: gone with the process, never backed up
    os.ftruncate(fd, slots * SLOT.size)
    return fd
