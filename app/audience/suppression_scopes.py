"""Suppression look-ups shared by every path that decides whether an address gets mail."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.address_hash import hashed_address
from app.models import Suppression, SuppressionScope


async def scopes_for(session: AsyncSession, addresses: Iterable[str]) -> dict[str, set[str]]:
    """The suppression scopes of each address that has any, in one query.

    An erased subscriber's address survives only as its hash (scope all), so both forms are
    looked up and a hashed hit is reported under the plain address asked for.
    """
    keys: dict[str, str] = {}
    for address in addresses:
        keys[address] = address
        keys[hashed_address(address)] = address
    if not keys:
        return {}
    found: dict[str, set[str]] = {}
    rows = await session.execute(
        sa.select(Suppression.address, Suppression.scope).where(
            Suppression.address.in_(sorted(keys))
        )
    )
    for key, scope in rows:
        found.setdefault(keys[key], set()).add(SuppressionScope(scope).value)
    return found
