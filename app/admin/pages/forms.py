"""What the marketer's pages share: ids in paths, and a domain error turned into a page."""

from __future__ import annotations

from typing import Annotated, NoReturn

from fastapi import Path
from sqlalchemy.ext.asyncio import AsyncSession

from app.admin.deps import Refused, SignedIn
from app.core.errors import DomainError

MAX_ID = 2_147_483_647
DbId = Annotated[int, Path(ge=1, le=MAX_ID)]


def refuse(exc: DomainError) -> NoReturn:
    """Show a service's refusal (not found, conflict, invalid) as an error page."""
    raise Refused(exc.status, exc.title, exc.detail) from None


async def after_rollback(session: AsyncSession, admin: SignedIn) -> None:
    """Reload the signed-in user after a service rolled back (a taken name), so the page
    that shows the error can still render the menu."""
    await session.refresh(admin.user)
