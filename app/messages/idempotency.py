"""Idempotency keys: the first response to a key is stored with the work it describes.

The key is claimed by inserting its row as the first write of the request's transaction;
the unique constraint (API key, key) decides between concurrent duplicates. On PostgreSQL
the second insert waits for the first transaction and fails once it commits; on SQLite
the second writer waits for the lock and then fails. The loser reads the stored answer.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Conflict, DomainError, Invalid
from app.models import IdempotencyKey, utcnow

_KEY = re.compile(r"[!-~]{1,255}")


class BadIdempotencyKey(DomainError):
    """The header is not a usable key."""

    status = 400
    title = "Invalid Idempotency-Key"


@dataclass(frozen=True)
class Replay:
    """The stored answer to an earlier request with the same key and body."""

    status_code: int
    body: dict[str, Any]


def check_key(value: str) -> str:
    """1-255 printable ASCII characters, or 400."""
    if not _KEY.fullmatch(value):
        raise BadIdempotencyKey(
            "Idempotency-Key must be 1-255 printable ASCII characters without spaces"
        )
    return value


def request_hash(path: str, payload: Any) -> str:
    """A fingerprint of the request: its path and its JSON body in canonical form."""
    # ASCII escapes: a body may hold lone surrogates (valid JSON escapes, not UTF-8).
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{path}\n{canonical}".encode()).hexdigest()


async def claim(
    session: AsyncSession, api_key_id: int, key: str, fingerprint: str, ttl: float
) -> IdempotencyKey | Replay:
    """Claim `key` for this request (its row, to fill in), or the earlier answer to replay.

    Must be the first write of the transaction: on a duplicate it rolls the transaction back.
    """
    for _ in range(2):
        row = IdempotencyKey(
            api_key_id=api_key_id, key=key, request_hash=fingerprint, status_code=0, response={}
        )
        session.add(row)
        try:
            await session.flush()
            return row
        except IntegrityError:
            await session.rollback()
        existing = await session.scalar(
            sa.select(IdempotencyKey).where(
                IdempotencyKey.api_key_id == api_key_id, IdempotencyKey.key == key
            )
        )
        if existing is None:
            continue  # expired and removed by another request in between: claim again
        expiry = utcnow() - timedelta(seconds=ttl)
        if existing.created_at < expiry:
            await session.execute(
                sa.delete(IdempotencyKey).where(
                    IdempotencyKey.id == existing.id, IdempotencyKey.created_at < expiry
                )
            )
            await session.commit()
            continue
        if existing.request_hash != fingerprint:
            raise Invalid(
                "this Idempotency-Key was used with a different request body; "
                "use a new key for a new request"
            )
        if existing.status_code == 0:
            raise Conflict("a request with this Idempotency-Key is still being processed")
        return Replay(existing.status_code, dict(existing.response))
    raise Conflict("the Idempotency-Key could not be claimed; try again")


async def remember(session: AsyncSession, row: IdempotencyKey, status: int, body: Any) -> None:
    """Store the answer in the claimed row (committed with the work it describes)."""
    row.status_code = status
    row.response = body
    await session.flush()


async def purge(session: AsyncSession, ttl: float) -> int:
    """Delete keys older than `ttl` seconds; returns how many."""
    result = await session.execute(
        sa.delete(IdempotencyKey).where(
            IdempotencyKey.created_at < utcnow() - timedelta(seconds=ttl)
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
