"""The backup file format read and written in process: every cut or flipped byte is caught."""

from __future__ import annotations

import io
import os

import pytest

from app.backup.bundle import BundleWriter, Manifest, read_bundle
from app.backup.crypto import Secret
from app.backup.errors import BackupError


def _bundle(rows: int, secret: Secret | None = None, noise: int = 0) -> bytes:
    out = io.BytesIO()
    writer = BundleWriter(out, secret, None)
    if noise:
        writer.add_bytes("uploads/noise", os.urandom(noise))  # incompressible
    writer.add_bytes(
        "database/postgresql.dump.000000", b"".join(b"user%07d\n" % i for i in range(rows))
    )
    writer.add_bytes("secret_key", b"s" * 40)
    writer.finish(Manifest("2026-12-02T00:00:00+00:00", "test", None, {}, [], secret is not None))
    return out.getvalue()


@pytest.mark.parametrize("rows", [1000, 5000, 20000, 100000])
def test_a_file_missing_only_its_last_bytes_is_refused(rows: int) -> None:
    # The tar stream can end before the zstd frame does (its checksum follows): a reader
    # that stops with the tar would take a file cut there for whole.
    data = _bundle(rows)
    assert read_bundle(io.BytesIO(data), None).members[0].size == rows * 12
    for cut in range(1, 12):
        with pytest.raises(BackupError, match="truncated"):
            read_bundle(io.BytesIO(data[:-cut]), None)


def test_an_encrypted_file_is_refused_however_it_is_cut_or_altered() -> None:
    secret = Secret(key_file=bytes(range(32)))
    data = _bundle(1000, secret, noise=3 << 20)
    assert len(data) > 3 << 20  # several encrypted chunks
    assert read_bundle(io.BytesIO(data), secret).members[0].name == "uploads/noise"
    for keep in (len(data) - 1, len(data) - 17, 1 << 20, len(data) // 2, 100):
        with pytest.raises(BackupError, match="truncated"):
            read_bundle(io.BytesIO(data[:keep]), secret)
    for at in range(0, len(data), len(data) // 50):
        altered = data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]
        with pytest.raises(BackupError):
            read_bundle(io.BytesIO(altered), secret)
