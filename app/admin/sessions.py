"""Server-side console sessions: a random cookie token, its hash in `admin_sessions`.

A session ends when it is idle too long, reaches its lifetime, or is revoked (sign-out,
sign-out everywhere); every check reads the row, so a revocation takes effect at once.
Rows of sessions that ended more than KEEP_ENDED ago are deleted whenever someone signs in:
sign-ins are what add rows, so the table stays as small as its live sessions.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.settings import Settings
from app.models import AdminSession, AdminUser, utcnow

TOKEN_BYTES = 32
_TOUCH_INTERVAL = timedelta(minutes=1)
KEEP_ENDED = timedelta(days=7)
"""How long an ended session's row is kept (what the sessions list of a recent incident needs)."""


def hash_token(token: str) -> str:
    """The stored form of a session token."""
    return hashlib.sha256(token.encode()).hexdigest()


async def open_session(
    session: AsyncSession, user: AdminUser, settings: Settings, client: str
) -> str:
    """Start a session for `user`; returns the cookie token (stored only as its hash).

    Ended sessions' old rows are pruned in the same transaction."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    now = utcnow()
    await prune(session, settings, now)
    session.add(
        AdminSession(
            token_hash=hash_token(token),
            user_id=user.id,
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(seconds=settings.admin_session_lifetime),
            client=client[:200],
        )
    )
    await session.flush()
    return token


async def prune(session: AsyncSession, settings: Settings, now: datetime | None = None) -> int:
    """Delete the rows of sessions that ended (expired, idle or revoked) more than
    KEEP_ENDED ago; how many."""
    before = (now or utcnow()) - KEEP_ENDED
    result = await session.execute(
        sa.delete(AdminSession)
        .where(
            sa.or_(
                AdminSession.expires_at < before,
                AdminSession.revoked_at < before,
                AdminSession.last_seen_at < before - timedelta(seconds=settings.admin_session_idle),
            )
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def lookup(
    session: AsyncSession, token: str, settings: Settings
) -> tuple[AdminSession, AdminUser] | None:
    """The live session and its user for a cookie token, touching `last_seen_at` at most
    once a minute (left unflushed: the caller commits when `session.dirty`)."""
    if not token or len(token) > 100:
        return None
    now = utcnow()
    idle_since = now - timedelta(seconds=settings.admin_session_idle)
    row = (
        await session.execute(
            sa.select(AdminSession, AdminUser)
            .join(AdminUser, AdminUser.id == AdminSession.user_id)
            .where(
                AdminSession.token_hash == hash_token(token),
                AdminSession.revoked_at.is_(None),
                AdminSession.expires_at > now,
                AdminSession.last_seen_at > idle_since,
                AdminUser.disabled_at.is_(None),
            )
        )
    ).one_or_none()
    if row is None:
        return None
    found, user = row
    if now - found.last_seen_at > _TOUCH_INTERVAL:
        found.last_seen_at = now
    return found, user


async def revoke(session: AsyncSession, found: AdminSession) -> None:
    """End one session (sign-out)."""
    found.revoked_at = utcnow()
    await session.flush()


async def revoke_all(session: AsyncSession, user_id: int) -> int:
    """End every live session of a user (sign-out everywhere); how many were live."""
    result = await session.execute(
        sa.update(AdminSession)
        .where(AdminSession.user_id == user_id, AdminSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def live_sessions(session: AsyncSession, user_id: int) -> list[AdminSession]:
    """A user's sessions that have not been revoked or expired, newest first."""
    rows = await session.scalars(
        sa.select(AdminSession)
        .where(
            AdminSession.user_id == user_id,
            AdminSession.revoked_at.is_(None),
            AdminSession.expires_at > utcnow(),
        )
        .order_by(AdminSession.id.desc())
        .limit(50)
    )
    return list(rows)
