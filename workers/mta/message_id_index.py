"""The spool's Message-ID index, kept in a file instead of the heap.

The spool remembers every Message-ID it accepted within the dedupe window (7 days): at a
million messages a dict of strings holds ~400 bytes per id, ~400 MB of RSS that grows with
every message. This index keeps the same mapping (a message's `dedupe_key` → queue id and time
of acceptance) in an open-addressing hash table in an unnamed temporary file: each lookup is
one `pread`, each insertion a `pread` and a `pwrite` (while the table grows, a few more: see
`MessageIdIndex`), the pages live in the page cache (the kernel's to evict), and the
process's RSS does not grow with the number of ids.

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
from dataclasses import dataclass
from pathlib import Path

from workers.mta.spool_format import QueueId

SLOT = struct.Struct("<16sdQI")
"""digest, accepted at, queue id: its time (16 hex digits) and its random part (8)."""
EMPTY = bytes(16)
INITIAL_SLOTS = 1 << 21
"""2 M slots (72 MB of sparse file, written only where used): room for ~1.4 M ids before
the table doubles."""
MOVE_PER_INSERT = 4
"""Slots of the old table moved per insertion while the table grows: all of them are moved
after a quarter of its size in insertions, well before the new table (twice the size, 35 %
full) reaches `MAX_LOAD` again."""
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


@dataclass
class _Table:
    """One open-addressing table in an unnamed file: ``slots`` slots of `SLOT`."""

    fd: int
    slots: int
    release: weakref.finalize[[int], MessageIdIndex]

    def find(self, digest: bytes) -> tuple[int, tuple[QueueId, float] | None]:
        """The slot holding ``digest`` (and its entry), or the empty slot it would take."""
        mask = self.slots - 1
        slot = int.from_bytes(digest[:8], "little") & mask
        while True:
            run = min(PROBE, self.slots - slot)
            chunk = os.pread(self.fd, run * SLOT.size, slot * SLOT.size)
            chunk += bytes(run * SLOT.size - len(chunk))  # past the end of a short file
            for offset in range(0, len(chunk), SLOT.size):
                found, accepted_at, when, rest = SLOT.unpack_from(chunk, offset)
                if found == EMPTY:
                    return slot, None
                if found == digest:
                    return slot, (QueueId(f"{when:016x}{rest:08x}"), accepted_at)
                slot = (slot + 1) & mask


class MessageIdIndex:
    """Normalised Message-ID → (queue id, accepted at), in a file; RSS independent of size.

    When the table is 70 % full, a table twice its size takes the new entries and every
    insertion moves the next `MOVE_PER_INSERT` slots of the old one across (Redis's
    incremental rehash): no insertion ever rebuilds the whole table, which held the MTA's
    event loop for 1.1 s at 262,144 slots here, several seconds at the default size. Until
    the old table is empty, a lookup that misses the new one reads the old one too, and an
    insertion reads and writes a few slots more.
    """

    def __init__(
        self,
        directory: Path,
        *,
        horizon: Callable[[], float] = lambda: float("-inf"),
        slots: int = INITIAL_SLOTS,
    ) -> None:
        self.directory = directory
        self.horizon = horizon
        """Entries accepted before this are left behind when they are moved to a larger table."""
        self._slots = slots
        self._table: _Table | None = None
        self._count = 0  # entries in `_table`
        # The table being emptied into `_table`: the next slot to move, and how many
        # entries still only it holds.
        self._old: _Table | None = None
        self._next_move = 0
        self._old_count = 0
        self._odd: dict[bytes, tuple[QueueId, float]] = {}

    def __len__(self) -> int:
        return self._count + self._old_count + len(self._odd)

    def get(self, key: str) -> tuple[QueueId, float] | None:
        """The queue id and time of acceptance of ``key``, if it was recorded."""
        digest = _digest(key)
        if self._odd and digest in self._odd:
            return self._odd[digest]
        if self._table is None:
            return None
        _, entry = self._table.find(digest)
        return entry if entry is not None else self._unmoved(digest)

    def __setitem__(self, key: str, value: tuple[QueueId, float]) -> None:
        queue_id, accepted_at = value
        digest = _digest(key)
        packed = _pack(queue_id)
        if packed is None:
            self._odd[digest] = value
            return
        table = self._table or self._open()
        slot, entry = table.find(digest)
        os.pwrite(table.fd, SLOT.pack(digest, accepted_at, *packed), slot * SLOT.size)
        if entry is None:
            self._count += 1
            if self._old is not None:
                if self._unmoved(digest) is not None:
                    self._old_count -= 1  # replaced: its old slot is skipped when moved
                self._move(MOVE_PER_INSERT)
            if self._count + self._old_count > table.slots * MAX_LOAD:
                self._grow()

    def close(self) -> None:
        """Release the files (their space with them); also released when the index is."""
        for table in (self._table, self._old):
            if table is not None:
                table.release()
        self._table = self._old = None
        self._count = self._old_count = 0
        self._odd.clear()

    def _open(self) -> _Table:
        self._table = self._new_table(self._slots)
        return self._table

    def _new_table(self, slots: int) -> _Table:
        fd = _temporary_file(self.directory, slots)
        return _Table(fd, slots, weakref.finalize(self, os.close, fd))

    def _unmoved(self, digest: bytes) -> tuple[QueueId, float] | None:
        """``digest``'s entry in the old table, if its slot is not moved (or left out) yet."""
        if self._old is None:
            return None
        slot, entry = self._old.find(digest)
        return entry if slot >= self._next_move else None

    def _grow(self) -> None:
        """Start emptying the table into one twice its size (`_move` does the work)."""
        while self._old is not None:  # not emptied yet (it always is, unless MAX_LOAD changed)
            self._move(4096)
        larger = self._new_table(self._slots * 2)  # first: if it fails, nothing has changed
        self._old, self._table, self._next_move = self._table, larger, 0
        self._old_count, self._count = self._count, 0
        self._slots = larger.slots

    def _move(self, slots: int) -> None:
        """Move the old table's next ``slots`` slots into the new one, leaving out entries
        older than the horizon and those replaced meanwhile; release it once empty."""
        old, table = self._old, self._table
        assert old is not None and table is not None
        start, end = self._next_move, min(self._next_move + slots, old.slots)
        chunk = os.pread(old.fd, (end - start) * SLOT.size, start * SLOT.size)
        horizon = self.horizon()
        for offset in range(0, len(chunk) - SLOT.size + 1, SLOT.size):
            digest, accepted_at, _, _ = SLOT.unpack_from(chunk, offset)
            if digest == EMPTY:
                continue
            slot, entry = table.find(digest)
            if entry is not None:
                continue  # recorded again since the table grew: already counted there
            self._old_count -= 1
            if accepted_at >= horizon:
                os.pwrite(table.fd, chunk[offset : offset + SLOT.size], slot * SLOT.size)
                self._count += 1
        self._next_move = end
        if end >= old.slots:
            old.release()
            self._old, self._old_count = None, 0


def _temporary_file(directory: Path, slots: int) -> int:
    """An unnamed file of ``slots`` empty slots (sparse: no block is written)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="message-ids-", suffix=".index", dir=directory)
    os.unlink(name)  # unnamed from now on: gone with the process, never backed up
    os.ftruncate(fd, slots * SLOT.size)
    return fd
