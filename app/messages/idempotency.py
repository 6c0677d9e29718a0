"""Idempotency keys: the first response to a key is stored with the work it describes.

The key is claimed by inserting its row as the first write of the request's transaction;
the unique constraint (API key, key) decides between concurrent duplicates. On PostgreSQL
the second insert waits for the first transaction and fails once it commits; on SQLite
the second writer waits for the lock and then fails. The loser reads the stored answer.

POST /messages claims the keys of a group of fresh requests together (`claim_many`, in the
group's transaction); a key that already has a row is settled by `claim`, alone.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.database import on_postgresql
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


@dataclass(frozen=True, slots=True)
class Claim:
    """A fresh request's Idempotency-Key, to be claimed in a group's transaction."""

    api_key_id: int
    key: str
    fingerprint: str


async def claim_many(session: AsyncSession, claims: Sequence[Claim]) -> dict[tuple[int, str], int]:
    """Claim keys never used before, all in one INSERT … ON CONFLICT DO NOTHING RETURNING:
    the claimed rows' ids by (API key, key), to fill in with `remember_many`.

    A key that has a row already (answered, expired, or claimed by a transaction under way:
    PostgreSQL waits for it) is left out, for `claim` to settle alone as it always has. Keys
    must be distinct (one group never holds the same key twice).
    """
    if not claims:
        return {}
    insert = postgresql.insert if on_postgresql(session) else sqlite.insert
    now = utcnow()
    statement = (
        insert(IdempotencyKey)
        .values(
            [
                {
                    "api_key_id": claim.api_key_id,
                    "key": claim.key,
                    "request_hash": claim.fingerprint,
                    "status_code": 0,
                    "response": {},
                    "created_at": now,
                }
                # In one order everywhere: two groups holding the same keys (a client's
                # retries spread over API processes) wait for each other, never deadlock.
                for claim in sorted(claims, key=lambda claim: (claim.api_key_id, claim.key))
            ]
        )
        .on_conflict_do_nothing(index_elements=["api_key_id", "key"])
        .returning(IdempotencyKey.id, IdempotencyKey.api_key_id, IdempotencyKey.key)
    )
    rows = await session.execute(statement, execution_options={"synchronize_session": False})
    return {(int(api_key_id), key): int(row_id) for row_id, api_key_id, key in rows}


async def remember_many(session: AsyncSession, answers: Sequence[tuple[int, int, Any]]) -> None:
    """Store each answer (claimed row id, status, body) in its row, in one executemany."""
    if not answers:
        return
    table = cast(sa.Table, IdempotencyKey.__table__)
    await session.execute(
        sa.update(table)
        .where(table.c.id == sa.bindparam("b_id"))
        .values(status_code=sa.bindparam("b_status"), response=sa.bindparam("b_body")),
        [{"b_id": row_id, "b_status": status, "b_body": body} for row_id, status, body in answers],
    )


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
