"""The campaign ledger as other domains see it: the rows a report names, and what the MTA or
a bounce report says about them. The bounce domain calls these, never `campaigns.ledger`."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from app.mail.recording import Delivery, LedgerRow
from campaigns import ledger


async def ledger_rows(session: AsyncSession, ids: Sequence[int]) -> dict[int, LedgerRow]:
    """Campaign ledger rows by id."""
    return await ledger.ledger_rows(session, ids)


async def latest_row(
    session: AsyncSession, email: str, campaign_id: int | None = None
) -> LedgerRow | None:
    """The most recent ledger row for an address (in one campaign, if given)."""
    return await ledger.latest_row(session, email, campaign_id)


async def lock_rows(session: AsyncSession, ids: Sequence[int]) -> None:
    """Lock ledger rows in id order, before several statements write them."""
    await ledger.lock_rows(session, ids)


async def record_delivery(
    session: AsyncSession, deliveries: Sequence[Delivery], *, events: bool = True
) -> None:
    """Record the MTA's or a report's word on ledger rows (see `ledger.record_delivery`)."""
    await ledger.record_delivery(session, deliveries, events=events)
