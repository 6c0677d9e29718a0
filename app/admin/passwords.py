"""Password hashing with Argon2id (argon2-cffi, RFC 9106 parameters), off the event loop."""

from __future__ import annotations

import asyncio
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 12
MAX_LENGTH = 1024
"""Longer input is refused before hashing (hashing cost grows with length)."""


@cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()  # Argon2id with the library's maintained defaults


@cache
def _decoy() -> str:
    """A hash to verify against when the account does not exist, so both cases take as long."""
    return _hasher().hash("no such account: decoy password")


def weakness(password: str) -> str | None:
    """Why a new password is refused, or None."""
    if len(password) < MIN_LENGTH:
        return f"a password needs at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"a password may have at most {MAX_LENGTH} characters"
    return None


async def hash_password(password: str) -> str:
    """The Argon2id hash of `password`, computed in a thread (it takes tens of ms)."""
    return await asyncio.to_thread(_hasher().hash, password)


async def verify(stored: str | None, password: str) -> bool:
    """Whether `password` matches `stored`; None (no account) burns the same time, then fails."""
    if len(password) > MAX_LENGTH:
        return False

    def check() -> bool:
        try:
            return _hasher().verify(stored or _decoy(), password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


def needs_rehash(stored: str) -> bool:
    """Whether a hash was made with weaker parameters than today's defaults."""
    return _hasher().check_needs_rehash(stored)
