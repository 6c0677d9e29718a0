"""API keys: issue, authenticate, scope checks; only SHA-256 hashes are stored."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Invalid
from app.models import ApiKey, utcnow

RESOURCES = (
    "lists",
    "subscribers",
    "templates",
    "campaigns",
    "suppressions",
    "messages",
    "queue",
    "bounces",
    "webhooks",
)
READ_ONLY_SCOPES = ("metrics:read",)
"""Scopes with no write side: `metrics:read` lets a Prometheus scraper read /metrics only."""
SCOPES = frozenset(
    {"admin", *READ_ONLY_SCOPES}
    | {f"{res}:{act}" for res in RESOURCES for act in ("read", "write")}
)
TOKEN_PREFIX = "wk_"
_TOUCH_INTERVAL = timedelta(minutes=1)


def hash_token(token: str) -> str:
    """The stored form of a token (tokens are long and random, so a plain hash suffices)."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_scopes(scopes: list[str]) -> list[str]:
    """Refuse unknown scope names with a message listing the known ones."""
    unknown = sorted(set(scopes) - SCOPES)
    if unknown:
        raise Invalid(f"unknown scopes {unknown}; known: {', '.join(sorted(SCOPES))}")
    return sorted(set(scopes))


def allows(scopes: list[str], needed: str) -> bool:
    """admin allows all; `x:write` implies `x:read`."""
    if "admin" in scopes or needed in scopes:
        return True
    resource, _, action = needed.partition(":")
    return action == "read" and f"{resource}:write" in scopes


async def create_key(
    session: AsyncSession, name: str, scopes: list[str], token: str | None = None
) -> tuple[ApiKey, str]:
    """Store a new key; returns it with the token, which is never retrievable again."""
    token = token or TOKEN_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        name=name, prefix=token[:10], token_hash=hash_token(token), scopes=check_scopes(scopes)
    )
    session.add(key)
    await session.flush()
    return key, token


async def authenticate(session: AsyncSession, token: str) -> ApiKey | None:
    """The live key for a token, touching `last_used_at` at most once a minute."""
    key = await session.scalar(
        sa.select(ApiKey).where(ApiKey.token_hash == hash_token(token), ApiKey.revoked_at.is_(None))
    )
    if key is not None:
        now = utcnow()
        if key.last_used_at is None or now - key.last_used_at > _TOUCH_INTERVAL:
            key.last_used_at = now
            await session.flush()
    return key


async def ensure_key(session: AsyncSession, token: str, name: str) -> ApiKey:
    """Make sure an admin key with exactly this token exists (bootstrap and dev keys)."""
    if len(token) < 16:
        raise Invalid("a bootstrap API key must be at least 16 characters long")
    existing = await session.scalar(sa.select(ApiKey).where(ApiKey.token_hash == hash_token(token)))
    if existing is not None:
        existing.revoked_at = None
        if "admin" not in existing.scopes:
            existing.scopes = ["admin"]
        await session.flush()
        return existing
    key, _ = await create_key(session, name, ["admin"], token=token)
    return key


async def submission_hashes(session: AsyncSession, scope: str) -> frozenset[str]:
    """Hashes of the live keys whose scopes allow `scope` (the MTA's SMTP AUTH reloads these)."""
    rows = await session.execute(
        sa.select(ApiKey.token_hash, ApiKey.scopes).where(ApiKey.revoked_at.is_(None))
    )
    return frozenset(token for token, scopes in rows if allows(scopes, scope))
