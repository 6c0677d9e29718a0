"""Streaming authenticated encryption of a backup file, with a passphrase or a key file.

The format is the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár) over AES-256-GCM:

    header   MAGIC, kdf, scrypt log2(N), r, p, salt (16), nonce prefix (7), key check (16)
    chunks   4-byte big-endian length (top bit set on the last chunk), ciphertext + tag

Each chunk of up to 1 MiB is sealed with nonce = prefix ‖ chunk counter ‖ last flag and the
header as associated data, so a reordered, dropped, altered or appended chunk fails, and a
file cut short lacks its last chunk. The key check (derived from the key, not the data)
tells a wrong passphrase apart from a damaged file before any chunk is read.

A passphrase goes through scrypt (N = 2^17, r = 8, p = 1: ~128 MiB, a few tenths of a
second); a key file's bytes (at least 32, e.g. ``head -c 32 /dev/urandom``) through HKDF.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from app.backup.errors import BackupError, WrongKey

MAGIC = b"WARTA-BACKUP-AES256GCM\x01"
CHUNK = 1 << 20
LAST = 0x8000_0000
KDF_SCRYPT = 1
KDF_KEY_FILE = 2
SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 17, 8, 1
MIN_KEY_FILE_BYTES = 32
_HEADER = struct.Struct(f">{len(MAGIC)}sBBBB16s7s16s")


class Secret:
    """What unlocks a backup: a passphrase or the bytes of a key file."""

    def __init__(self, *, passphrase: bytes | None = None, key_file: bytes | None = None) -> None:
        if (passphrase is None) == (key_file is None):
            raise ValueError("give exactly one of a passphrase and a key file")
        self.passphrase = passphrase
        self.key_file = key_file

    @classmethod
    def from_files(cls, passphrase_file: Path | None, key_file: Path | None) -> Secret | None:
        """The secret named on the command line, or None for an unencrypted backup."""
        if passphrase_file and key_file:
            raise BackupError("give --passphrase-file or --key-file, not both")
        if passphrase_file:
            # One line, as `pass`, `age -p` and gpg's --passphrase-file read it.
            lines = passphrase_file.read_bytes().splitlines()
            phrase = lines[0] if lines else b""
            if not phrase:
                raise BackupError(f"{passphrase_file} holds no passphrase")
            return cls(passphrase=phrase)
        if key_file:
            data = key_file.read_bytes()
            if len(data) < MIN_KEY_FILE_BYTES:
                raise BackupError(
                    f"{key_file} is too short for a key: at least {MIN_KEY_FILE_BYTES} bytes "
                    "(make one with: head -c 32 /dev/urandom > FILE)"
                )
            return cls(key_file=data)
        return None

    @property
    def kdf(self) -> int:
        """The header's code of how the key is derived."""
        return KDF_SCRYPT if self.passphrase is not None else KDF_KEY_FILE

    def derive(self, kdf: int, log2_n: int, r: int, p: int, salt: bytes) -> tuple[bytes, bytes]:
        """(encryption key, key check) for the header's parameters."""
        if kdf != self.kdf:
            raise WrongKey(
                "this backup was encrypted with a "
                + ("passphrase" if kdf == KDF_SCRYPT else "key file")
                + "; give --"
                + ("passphrase-file" if kdf == KDF_SCRYPT else "key-file")
            )
        if self.passphrase is not None:
            if not 10 <= log2_n <= 22 or not 1 <= r <= 32 or not 1 <= p <= 16:
                raise BackupError("the backup's key derivation parameters are out of range")
            master = Scrypt(salt=salt, length=32, n=1 << log2_n, r=r, p=p).derive(self.passphrase)
        else:
            assert self.key_file is not None
            master = HKDF(hashes.SHA256(), 32, salt, b"warta backup key file").derive(self.key_file)
        okm = HKDF(hashes.SHA256(), 48, None, b"warta backup v1").derive(master)
        return okm[:32], okm[32:]


def is_encrypted(head: bytes) -> bool:
    """Whether a file starting with `head` is an encrypted backup."""
    return head.startswith(MAGIC[:-1])


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    if counter >= 1 << 32:
        raise BackupError("backup too large for one encrypted stream")
    return prefix + struct.pack(">IB", counter, 1 if last else 0)


class EncryptingWriter:
    """A write-only stream that encrypts what it is given, chunk by chunk, into `out`."""

    def __init__(self, out: BinaryIO, secret: Secret) -> None:
        self.out = out
        salt, prefix = os.urandom(16), os.urandom(7)
        params = (SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P)
        key, check = secret.derive(secret.kdf, *params, salt)
        self.header = _HEADER.pack(MAGIC, secret.kdf, *params, salt, prefix, check)
        self.aead = AESGCM(key)
        self.prefix = prefix
        self.counter = 0
        self.buffer = bytearray()
        self.closed = False
        out.write(self.header)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Buffer `data`; seal and write every full chunk."""
        self.buffer += data
        while len(self.buffer) > CHUNK:  # keep the last bytes: the last chunk is flagged
            self._seal(bytes(self.buffer[:CHUNK]), last=False)
            del self.buffer[:CHUNK]
        return len(data)

    def flush(self) -> None:
        """Flush the output (a chunk is sealed only when full or at close)."""
        self.out.flush()

    def close(self) -> None:
        """Seal the last chunk; `out` stays open."""
        if not self.closed:
            self._seal(bytes(self.buffer), last=True)
            self.buffer.clear()
            self.closed = True
            self.out.flush()

    def _seal(self, plain: bytes, *, last: bool) -> None:
        sealed = self.aead.encrypt(_nonce(self.prefix, self.counter, last), plain, self.header)
        self.out.write(struct.pack(">I", len(sealed) | (LAST if last else 0)) + sealed)
        self.counter += 1


class DecryptingReader:
    """A read-only stream of the plaintext of an encrypted backup read from `source`."""

    def __init__(self, source: BinaryIO, secret: Secret) -> None:
        self.source = source
        header = _read_exactly(source, _HEADER.size, "the encryption header")
        magic, kdf, log2_n, r, p, salt, prefix, check = _HEADER.unpack(header)
        if magic != MAGIC:
            raise BackupError("not an encrypted Warta backup of a version this Warta reads")
        key, expected = secret.derive(kdf, log2_n, r, p, salt)
        if check != expected:
            raise WrongKey("wrong passphrase or key file for this backup")
        self.header = header
        self.aead = AESGCM(key)
        self.prefix = prefix
        self.counter = 0
        self.buffer = b""
        self.done = False

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes of plaintext (all that is left with -1); b"" at the end."""
        while not self.done and (size < 0 or len(self.buffer) < size):
            self.buffer += self._open_next()
        if size < 0:
            size = len(self.buffer)
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _open_next(self) -> bytes:
        head = self.source.read(4)
        if len(head) < 4:
            raise BackupError("the backup is truncated: its encrypted stream ends early")
        (length,) = struct.unpack(">I", head)
        last = bool(length & LAST)
        sealed = _read_exactly(self.source, length & ~LAST, "an encrypted chunk")
        try:
            plain = self.aead.decrypt(_nonce(self.prefix, self.counter, last), sealed, self.header)
        except InvalidTag:
            raise BackupError(
                f"the backup was altered or damaged: encrypted chunk {self.counter} fails "
                "authentication"
            ) from None
        self.counter += 1
        if last:
            self.done = True
            if self.source.read(1):
                raise BackupError("the backup has data after its last encrypted chunk")
        return plain


def _read_exactly(source: BinaryIO, size: int, what: str) -> bytes:
    data = b""
    while len(data) < size:
        more = source.read(size - len(data))
        if not more:
            raise BackupError(f"the backup is truncated: {what} ends early")
        data += more
    return data
