"""The audit log's writer: who changed what (console users, API keys), in the change's own
transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AdminUser, AuditEntry, utcnow


async def record(
    session: AsyncSession,
    actor: AdminUser | str,
    action: str,
    target: str = "",
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Add one entry (e.g. `campaign.pause`, `campaign:12`); the caller's commit keeps it."""
    entry = AuditEntry(
        created_at=utcnow(),
        actor_id=actor.id if isinstance(actor, AdminUser) else None,
        actor_email=actor.email if isinstance(actor, AdminUser) else actor,
        action=action[:64],
        target=target[:200],
        details=details or {},
    )
    session.add(entry)
    await session.flush()
    return entry
