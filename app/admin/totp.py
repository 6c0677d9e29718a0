"""The optional second factor: RFC 6238 codes (pyotp), each accepted once."""

from __future__ import annotations

import hmac
import time
from urllib.parse import quote

import pyotp

STEP = 30
DRIFT_STEPS = 1
"""Codes of the previous and the next 30-second step are accepted too (clock drift)."""
ISSUER = "Warta"


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
