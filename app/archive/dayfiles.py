"""Day files: append-only concatenations of zstd frames, one file per UTC day.

A frame holds the messages of one batch, one after the other (up to FRAME_CONTENT bytes
of them; a larger batch takes several frames): the messages of a campaign differ only in
names, links and tokens, so one frame per batch compresses them ~9x better than a frame
per message, and at a quarter of the CPU. Each frame is complete (content size and
checksum in its header), so a file is itself a valid `.zst` stream: `zstd -dc
2026-12-02.zst` prints every archived message of the day in order, and `tail -c
+$((offset+1)) FILE | head -c LENGTH | zstd -dc` one frame. Several processes append to the
same file: each append holds an exclusive `flock` and writes at the end, and the offset is
the file's size under the lock.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import BinaryIO

import zstandard

SUFFIX = ".zst"
LEVEL = 3  # zstd's default; level 1 saves only ~10 % of the CPU of a batch frame
FRAME_CONTENT = 2 << 20
"""Bytes of messages per frame at most (level 3's window): a read decompresses no more."""


@dataclass(frozen=True, slots=True)
class Frame:
    """Where one compressed piece is: the file (relative to the archive), offset, length."""

    path: str
    offset: int
    length: int


class FrameError(ValueError):
    """The bytes at a frame's place are not that frame (cut short, damaged, overwritten)."""


def day_file(moment: datetime | date) -> str:
    """The name of the file that `moment`'s day appends to (UTC)."""
    day = moment.date() if isinstance(moment, datetime) else moment
    return day.isoformat() + SUFFIX


def day_of(name: str) -> date | None:
    """The day a file belongs to (`2026-12-02.zst`, or a compacted `2026-12-02.c3.zst`)."""
    try:
        return date.fromisoformat(name[:10])
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Packed:
    """One compressed frame, and where each of its messages is in its content."""

    data: bytes
    places: list[tuple[int, int]]
    """(start, size) in the decompressed frame, one per message, in the order given."""


def pack(messages: Sequence[bytes]) -> list[Packed]:
    """The messages, in order, as frames of at most FRAME_CONTENT bytes of content each
    (a larger message alone in its own frame)."""
    compressor = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True)
    frames: list[Packed] = []
    group: list[bytes] = []
    size = 0
    for message in [*messages, None]:
        if group and (message is None or size + len(message) > FRAME_CONTENT):
            places, start = [], 0
            for piece in group:
                places.append((start, len(piece)))
                start += len(piece)
            frames.append(Packed(compressor.compress(b"".join(group)), places))
            group, size = [], 0
        if message is not None:
            group.append(message)
            size += len(message)
    return frames


def append(directory: Path, name: str, frames: Sequence[bytes]) -> list[Frame]:
    """Append `frames` to the day file under an exclusive lock; where each one landed.

    A failed write is cut off again, so the file never holds half a frame.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    data = b"".join(frames)
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not _still_named(fd, path):
                continue  # removed after we opened it: open the path again
            offset = os.fstat(fd).st_size
            try:
                _write_all(fd, data)
            except OSError:
                os.ftruncate(fd, offset)
                raise
        finally:
            os.close(fd)  # releases the lock
        break
    placed = []
    for frame in frames:
        placed.append(Frame(name, offset, len(frame)))
        offset += len(frame)
    return placed


def _still_named(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read(directory: Path, frame: Frame) -> bytes:
    """The decompressed content of one frame (zstd verifies its checksum)."""
    with open(directory / frame.path, "rb") as file:
        return decompress(frame, read_compressed(file, frame))


def read_compressed(file: BinaryIO, frame: Frame) -> bytes:
    """The bytes of one frame as stored, from the open day file."""
    file.seek(frame.offset)
    data = file.read(frame.length)
    if len(data) != frame.length:
        raise FrameError(f"{frame.path} ends before offset {frame.offset + frame.length}")
    return data


def decompress(frame: Frame, data: bytes) -> bytes:
    """The content of a frame's stored bytes (zstd verifies its checksum)."""
    try:
        return zstandard.ZstdDecompressor().decompress(data)
    except zstandard.ZstdError as exc:
        raise FrameError(f"{frame.path} at {frame.offset}: {exc}") from exc
