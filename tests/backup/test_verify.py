"""`warta verify-backup`: an intact backup passes; a cut, altered or foreign one is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.helpers.backup_instances import Instance
from tests.helpers.seeding import seed_campaign


@pytest.fixture
async def seeded(source: Instance, sessionmaker: async_sessionmaker[AsyncSession]) -> Instance:
    await seed_campaign(sessionmaker, 300)
    return source


async def _backup(instance: Instance, path: Path, *options: str) -> bytes:
    made = await asyncio.to_thread(instance.warta, "backup", str(path), *options)
    assert made.returncode == 0, made.stderr.decode()
    return await asyncio.to_thread(path.read_bytes)


async def _verify(instance: Instance, data: bytes, tmp_path: Path, *options: str) -> str:
    """Verify `data` as a file; the one-line reason on refusal, "" if it passed."""
    path = tmp_path / "candidate"
    path.write_bytes(data)
    checked = await asyncio.to_thread(instance.warta, "verify-backup", str(path), *options)
    err = checked.stderr.decode()
    if checked.returncode == 0:
        assert "backup OK" in err
        return ""
    assert checked.returncode == 1, err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    return line


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :]


async def test_plain_backup_verifies_and_damage_is_refused(
    seeded: Instance, tmp_path: Path
) -> None:
    data = await _backup(seeded, tmp_path / "plain.tar.zst")
    assert await _verify(seeded, data, tmp_path) == ""
    assert "truncated" in await _verify(seeded, data[: len(data) // 2], tmp_path)
    assert "truncated" in await _verify(seeded, data[:-1], tmp_path)
    for at in (len(data) // 3, len(data) - 20):
        reason = await _verify(seeded, _flip(data, at), tmp_path)
        assert "damaged" in reason or "does not match" in reason, reason
    assert "after its end" in await _verify(seeded, data + b"\0", tmp_path)
    assert "not a Warta backup" in await _verify(seeded, b"PK\x03\x04 a zip file", tmp_path)


async def test_encrypted_backup_needs_the_passphrase_and_refuses_tampering(
    seeded: Instance, tmp_path: Path
) -> None:
    phrase = tmp_path / "passphrase"
    phrase.write_text("correct horse battery staple\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("incorrect horse\n")
    data = await _backup(seeded, tmp_path / "secret.tar.zst", "--passphrase-file", str(phrase))
    assert b"@example.com" not in data  # nothing readable without the passphrase

    assert await _verify(seeded, data, tmp_path, "--passphrase-file", str(phrase)) == ""
    assert "wrong passphrase" in await _verify(
        seeded, data, tmp_path, "--passphrase-file", str(wrong)
    )
    assert "is encrypted" in await _verify(seeded, data, tmp_path)
    options = ("--passphrase-file", str(phrase))
    assert "truncated" in await _verify(seeded, data[: len(data) - 100], tmp_path, *options)
    assert "altered" in await _verify(seeded, _flip(data, len(data) // 2), tmp_path, *options)
    assert "after its last" in await _verify(seeded, data + b"x", tmp_path, *options)


async def test_key_file_backup_round_trips_through_verify(seeded: Instance, tmp_path: Path) -> None:
    key = tmp_path / "backup.key"
    key.write_bytes(bytes(range(32)))
    other = tmp_path / "other.key"
    other.write_bytes(bytes(range(1, 33)))
    data = await _backup(seeded, tmp_path / "keyed.tar.zst", "--key-file", str(key))
    assert await _verify(seeded, data, tmp_path, "--key-file", str(key)) == ""
    assert "wrong passphrase or key" in await _verify(
        seeded, data, tmp_path, "--key-file", str(other)
    )
    phrase = tmp_path / "passphrase"
    phrase.write_text("a passphrase\n")
    assert "--key-file" in await _verify(seeded, data, tmp_path, "--passphrase-file", str(phrase))
