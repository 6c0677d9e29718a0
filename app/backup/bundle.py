"""The backup file: a tar stream in one zstd frame, optionally encrypted, manifest last.

Written and read as a stream, never seeked, so a backup can go to standard output and be
read back from a pipe. The manifest is the tar's last member because it holds the size and
SHA-256 of every member before it; a reader hashes as it goes and compares at the end.
Three layers each catch damage: the encryption (every chunk authenticated, the last one
flagged), zstd's content checksum and end-of-frame, and the manifest's hashes.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import zstandard

from app.backup.crypto import MAGIC, DecryptingReader, EncryptingWriter, Secret, is_encrypted
from app.backup.errors import BackupError

FORMAT = 1
MANIFEST = "manifest.json"
BUFFER = 1 << 20
TAR_BUFFER = 64 << 10
"""tarfile's own stream buffer: it re-copies the whole buffer on each write, keep it small."""
ZSTD_LEVEL = 3
"""zstd's default: ~300 MB/s a core here; higher levels cost more time than they save bytes."""
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
HEAD_BYTES = len(MAGIC)

Progress = Callable[[int], None]
"""Told the number of bytes just processed."""


@dataclass
class Member:
    """One file in the backup, as the manifest lists it."""

    name: str
    size: int
    sha256: str


@dataclass
class Manifest:
    """What a backup holds and where it came from."""

    created_at: str
    warta_version: str
    schema_revision: str | None
    database: dict[str, Any]
    spools: list[dict[str, Any]]
    encrypted: bool
    members: list[Member] = field(default_factory=list)
    format: int = FORMAT

    def to_json(self) -> bytes:
        """The manifest member's bytes."""
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        """Parse the manifest member; BackupError if it is not one."""
        try:
            data = json.loads(raw)
            if data.get("format") != FORMAT:
                raise BackupError(f"backup format {data.get('format')} is not one this Warta reads")
            data["members"] = [Member(**m) for m in data["members"]]
            return cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise BackupError(f"the backup's manifest is unreadable: {exc}") from None

    @property
    def total_bytes(self) -> int:
        """Uncompressed size of every member."""
        return sum(m.size for m in self.members)


class _Hashing:
    """Reads exactly `size` bytes of `source`, hashing and reporting them."""

    def __init__(self, source: BinaryIO, size: int, progress: Progress | None) -> None:
        self.source, self.left, self.progress = source, size, progress
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        want = self.left if size < 0 else min(size, self.left)
        data = self.source.read(want)
        if len(data) < want:
            raise BackupError("a file shrank while it was being backed up")
        self.left -= len(data)
        self.digest.update(data)
        if self.progress:
            self.progress(len(data))
        return data


class BundleWriter:
    """Write members, then `finish` with the manifest; `out` is left open."""

    def __init__(self, out: BinaryIO, secret: Secret | None, progress: Progress | None) -> None:
        self.encryptor = EncryptingWriter(out, secret) if secret else None
        target: Any = self.encryptor or out
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, threads=-1)
        self.compressed = compressor.stream_writer(target, closefd=False)
        self.tar = tarfile.open(  # noqa: SIM115 - closed by finish()
            fileobj=self.compressed,
            mode="w|",
            bufsize=TAR_BUFFER,
            format=tarfile.PAX_FORMAT,
        )
        self.progress = progress
        self.members: list[Member] = []

    def add_file(self, name: str, path: Path, size: int | None = None) -> None:
        """Add the first `size` bytes (default: all) of `path` under `name`."""
        with path.open("rb") as source:
            size = size if size is not None else path.stat().st_size
            self._add(name, source, size)

    def add_bytes(self, name: str, data: bytes) -> None:
        """Add `data` under `name`."""
        self._add(name, io.BytesIO(data), len(data))

    def _add(self, name: str, source: BinaryIO, size: int) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, int(time.time()), 0o600
        reader = _Hashing(source, size, self.progress)
        self.tar.addfile(info, reader)
        self.members.append(Member(name, size, reader.digest.hexdigest()))

    def finish(self, manifest: Manifest) -> Manifest:
        """Write the manifest as the last member and close every layer."""
        manifest.members = list(self.members)
        raw = manifest.to_json()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime, info.mode = len(raw), int(time.time()), 0o600
        self.tar.addfile(info, io.BytesIO(raw))
        self.tar.close()
        self.compressed.close()  # type: ignore[no-untyped-call]
        if self.encryptor:
            self.encryptor.close()
        return manifest


class _Decompressing:
    """zstd frame reader that knows whether the frame was complete when its input ended."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.decompressor = zstandard.ZstdDecompressor().decompressobj()
        self.buffer = b""
        self.offset = 0

    def read(self, size: int = -1) -> bytes:
        while len(self.buffer) - self.offset < size or size < 0:
            if self.decompressor.eof:
                break
            chunk = self.source.read(BUFFER)
            if not chunk:
                raise BackupError(
                    "the backup is truncated or damaged: its compressed stream ends early"
                )
            try:
                more = self.decompressor.decompress(chunk)
            except zstandard.ZstdError as exc:
                raise BackupError(f"the backup is damaged: {exc}") from None
            self.buffer = self.buffer[self.offset :] + more
            self.offset = 0
        end = len(self.buffer) if size < 0 else self.offset + size
        data = self.buffer[self.offset : end]
        self.offset = min(end, len(self.buffer))
        return data

    def ensure_end(self) -> None:
        """Read the frame to its end (its checksum), and refuse anything after it.

        The tar stream may end before the frame does: without this, a file missing only its
        last bytes would pass.
        """
        while not self.decompressor.eof:
            self.read(BUFFER)
        if self.decompressor.unused_data or self.source.read(1):
            raise BackupError("the backup has data after its end")


class _Counting:
    def __init__(self, source: BinaryIO, progress: Progress | None) -> None:
        self.source, self.progress = source, progress

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        if self.progress:
            self.progress(len(data))
        return data


Destination = Callable[[str], BinaryIO | None]
"""Where to write a member's bytes (None: only check it)."""


def read_bundle(
    source: BinaryIO,
    secret: Secret | None,
    destination: Destination | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Read a whole backup, checking every member against the manifest; the manifest.

    Raises BackupError with the reason on a truncated, altered or foreign file, or a wrong
    passphrase. `destination` gets each member's bytes as they are read; only once this
    returns are they known to be intact.
    """
    counted = _Counting(source, progress)
    head = _read_head(source, HEAD_BYTES)
    if progress:
        progress(len(head))
    stream: Any = _Prefixed(head, counted)
    if is_encrypted(head):
        if secret is None:
            raise BackupError("the backup is encrypted: give --passphrase-file or --key-file")
        stream = DecryptingReader(stream, secret)
    elif not head.startswith(ZSTD_MAGIC):
        raise BackupError("not a Warta backup (neither zstd nor an encrypted backup)")
    elif secret is not None:
        raise BackupError("the backup is not encrypted, but a passphrase or key was given")
    decompressed = _Decompressing(stream)
    seen: list[Member] = []
    manifest: Manifest | None = None
    try:
        with tarfile.open(fileobj=decompressed, mode="r|", bufsize=TAR_BUFFER) as tar:  # type: ignore[call-overload]
            for info in tar:
                if manifest is not None:
                    raise BackupError("the backup has members after its manifest")
                reader = tar.extractfile(info)
                if reader is None or not info.isfile():
                    raise BackupError(f"the backup holds {info.name!r}, which is not a file")
                if info.name == MANIFEST:
                    manifest = Manifest.from_json(reader.read())
                    continue
                _check_name(info.name)
                seen.append(_copy(info.name, reader, destination))
    except tarfile.TarError as exc:
        raise BackupError(f"the backup is damaged or truncated: {exc}") from None
    decompressed.ensure_end()
    if manifest is None:
        raise BackupError("the backup is truncated: it has no manifest")
    _compare(manifest, seen)
    return manifest


def _read_head(source: BinaryIO, size: int) -> bytes:
    head = b""
    while len(head) < size and (more := source.read(size - len(head))):
        head += more
    return head


class _Prefixed:
    """`source` with `head`, already read from it, put back in front."""

    def __init__(self, head: bytes, source: Any) -> None:
        self.head, self.source = head, source

    def read(self, size: int = -1) -> bytes:
        if self.head:
            if size < 0:
                rest: bytes = self.source.read()
                data, self.head = self.head + rest, b""
                return data
            data, self.head = self.head[:size], self.head[size:]
            return data
        more: bytes = self.source.read(size)
        return more


def _check_name(name: str) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise BackupError(f"the backup holds an unsafe path {name!r}")


def _copy(name: str, reader: Any, destination: Destination | None) -> Member:
    digest, size = hashlib.sha256(), 0
    out = destination(name) if destination else None
    try:
        while chunk := reader.read(BUFFER):
            digest.update(chunk)
            size += len(chunk)
            if out is not None:
                out.write(chunk)
    finally:
        if out is not None:
            out.close()
    return Member(name, size, digest.hexdigest())


def _compare(manifest: Manifest, seen: list[Member]) -> None:
    listed = {m.name: m for m in manifest.members}
    found = {m.name: m for m in seen}
    if missing := sorted(set(listed) - set(found)):
        raise BackupError(f"the backup lacks {len(missing)} listed files, e.g. {missing[0]}")
    if extra := sorted(set(found) - set(listed)):
        raise BackupError(f"the backup holds {len(extra)} unlisted files, e.g. {extra[0]}")
    for name, member in found.items():
        if member != listed[name]:
            raise BackupError(f"{name} in the backup does not match its SHA-256 in the manifest")
