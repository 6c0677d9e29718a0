"""Rows of sessions that ended over a week ago are deleted when someone signs in."""

from __future__ import annotations

from datetime import timedelta

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.admin import sessions
from app.models import AdminRole, AdminSession, AdminUser, utcnow
from tests.helpers.admin import email_of, sign_in


async def test_signing_in_prunes_sessions_that_ended_long_ago(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    user = await session.scalar(
        sa.select(AdminUser).where(AdminUser.email == email_of(AdminRole.viewer))
    )
    assert user is not None
    now = utcnow()
    old = now - sessions.KEEP_ENDED - timedelta(hours=1)
    recent = now - timedelta(days=1)

    def row(name: str, **fields: object) -> AdminSession:
        values = {"created_at": old, "last_seen_at": now, "expires_at": now + timedelta(hours=1)}
        return AdminSession(
            token_hash=name.ljust(64, "0"), user_id=user.id, client="", **(values | fields)
        )

    session.add_all(
        [
            row("expired", expires_at=old),
            row("revoked", revoked_at=old),
            row("idle", last_seen_at=old - timedelta(days=1)),
            row("recently-ended", expires_at=recent, revoked_at=recent),
            row("live"),
        ]
    )
    await session.commit()

    await sign_in(console, AdminRole.owner)
    session.expire_all()
    left = set(await session.scalars(sa.select(AdminSession.token_hash)))
    kept = {name.ljust(64, "0") for name in ("recently-ended", "live")}
    assert kept <= left
    assert not {name.ljust(64, "0") for name in ("expired", "revoked", "idle")} & left
    assert len(left) == 3  # and the owner's new session
