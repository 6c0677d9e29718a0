"""Delivery outcomes back into the send ledger, in batches.

The envelope sender names the ledger row (VERP, signed); mail without one (relayed from
elsewhere) has no row to update. Deferrals only refresh the row's last reply: the ledger
keeps `sent` (the MTA holds the message) until a final outcome arrives.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import SendStatus
from app.repositories import ledger
from campaigns import identity
from workers.mta.spool import Envelope

logger = logging.getLogger(__name__)
FINAL = {"delivered": SendStatus.delivered, "failed": SendStatus.bounced}
FLUSH_EVERY = 0.2
FLUSH_SIZE = 500


@dataclass(frozen=True)
class _Update:
    ledger_id: int
    status: SendStatus | None
    reply: str


class LedgerOutcomes:
    """An outcome sink for the delivery agent that writes campaign rows in batches."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], secret: str) -> None:
        self.sessionmaker = sessionmaker
        self.secret = secret
        self._buffer: list[_Update] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False

    async def __call__(self, envelope: Envelope, recipient: str, outcome: str, reply: str) -> None:
        """Queue one outcome for the next batch."""
        parsed = identity.parse_verp(self.secret, envelope.mail_from)
        if parsed is None or parsed[0] != "c":
            return
        self._buffer.append(_Update(parsed[1], FINAL.get(outcome), reply[:1000]))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever(), name="ledger-outcomes")
        if len(self._buffer) >= FLUSH_SIZE:
            await self.flush()

    async def flush(self) -> None:
        """Write what is buffered."""
        batch, self._buffer = self._buffer, []
        if not batch:
            return
        async with self.sessionmaker() as session:
            await ledger.record_delivery(session, [(u.ledger_id, u.status, u.reply) for u in batch])
            await session.commit()

    async def close(self) -> None:
        """Flush the rest and stop."""
        self._closing = True
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self.flush()

    async def _flush_forever(self) -> None:
        while not self._closing:
            await asyncio.sleep(FLUSH_EVERY)
            try:
                await self.flush()
            except Exception:
                logger.exception("could not write delivery outcomes to the ledger")
