"""The optional second factor: RFC 6238 codes (pyotp), each accepted once.

The shared secret is stored sealed (AES-256-GCM under a key derived from WARTA_SECRET_KEY
with HKDF, bound to the user's id), so a copy of the database alone cannot make codes.
Rotating WARTA_SECRET_KEY therefore turns every second factor unreadable: owners reset them
(`Reset second factor` on the Users page) and users enrol again.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import time
from urllib.parse import quote

import pyotp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

STEP = 30
DRIFT_STEPS = 1
"""Codes of the previous and the next 30-second step are accepted too (clock drift)."""
ISSUER = "Warta"
SEALED = "v1."
"""The prefix of a sealed secret; a stored value without it is a plain secret (before 0012)."""
_INFO = b"warta admin totp secret v1"
_NONCE_BYTES = 12

logger = logging.getLogger(__name__)


def _key(secret_key: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
        secret_key.encode()
    )


def seal(secret: str, secret_key: str, user_id: int) -> str:
    """The stored form of a user's TOTP secret."""
    nonce = os.urandom(_NONCE_BYTES)
    sealed = AESGCM(_key(secret_key)).encrypt(nonce, secret.encode(), f"user:{user_id}".encode())
    return SEALED + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")


def unseal(stored: str, secret_key: str, user_id: int) -> str | None:
    """The TOTP secret from its stored form; None if it cannot be opened (another
    WARTA_SECRET_KEY, another user's row)."""
    if not stored.startswith(SEALED):
        return stored
    try:
        payload = stored[len(SEALED) :]
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        nonce, sealed = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
        plain = AESGCM(_key(secret_key)).decrypt(nonce, sealed, f"user:{user_id}".encode())
    except (InvalidTag, ValueError, binascii.Error):
        logger.warning(
            "admin: the second-factor secret of user %d cannot be opened with this "
            "WARTA_SECRET_KEY (rotated, or sealed elsewhere); an owner resets it on the "
            "Users page",
            user_id,
        )
        return None
    return plain.decode()


def new_secret() -> str:
    """A fresh base32 secret (160 bits)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, email: str) -> str:
    """The otpauth:// URI an authenticator app reads (typed in, or as a QR code elsewhere)."""
    return pyotp.TOTP(secret).provisioning_uri(name=quote(email, safe="@"), issuer_name=ISSUER)


def matching_step(secret: str, code: str, after: int, now: float | None = None) -> int | None:
    """The time step whose code `code` is, if it is later than `after` (no replay), else None."""
    code = code.strip().replace(" ", "")
    if len(code) != 6 or not code.isascii() or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    current = int((time.time() if now is None else now) // STEP)
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if step > after and hmac.compare_digest(totp.at(step * STEP), code):
            return step
    return None
