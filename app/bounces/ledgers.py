"""The rows a delivery outcome or a report can be about, by kind, and the services that own them.

The bounce domain reads no other domain's ledger: it asks the service of the kind a VERP
address or Message-ID names (`Kind.CAMPAIGN`: campaign ledger rows, `Kind.MESSAGE`:
transactional messages). Test sends and opt-in mail have no row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from app.mail.identity import Kind
from app.mail.recording import Delivery, LedgerRow
from app.messages import service as messages
from campaigns import delivery as campaigns


class RowLookup(Protocol):
    """The rows of one kind with these ids (unknown ids are left out)."""

    async def __call__(self, session: AsyncSession, ids: Sequence[int]) -> dict[int, LedgerRow]: ...


class DeliveryRecorder(Protocol):
    """Record the later word on rows of one kind; `events` off when the caller writes its own."""

    async def __call__(
        self, session: AsyncSession, deliveries: Sequence[Delivery], *, events: bool = True
    ) -> None: ...


class RowLock(Protocol):
    """Lock the rows of one kind with these ids in id order, in the caller's transaction."""

    async def __call__(self, session: AsyncSession, ids: Sequence[int]) -> None: ...


@dataclass(frozen=True)
class Ledger:
    """What the bounce domain asks of the domain that owns one kind of row."""

    rows: RowLookup
    record_delivery: DeliveryRecorder
    lock: RowLock


LEDGERS: dict[Kind, Ledger] = {
    Kind.CAMPAIGN: Ledger(campaigns.ledger_rows, campaigns.record_delivery, campaigns.lock_rows),
    Kind.MESSAGE: Ledger(messages.ledger_rows, messages.record_delivery, messages.lock_rows),
}
"""The kinds of row a delivery outcome or a report may name."""
