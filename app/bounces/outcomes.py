"""Delivery outcomes back into the ledgers, as events and as bounces, in batches.

The envelope sender names the row (VERP, signed); mail without one (relayed from elsewhere)
has no row to update. Every kind of row takes the same path (`write_deliveries`): the
domain that owns the row (`app.bounces.ledgers`) records deliveries, deferrals and
deletions with their events; a deferral only refreshes the row's last reply (the row keeps
`sent`: the MTA holds the message) until a final outcome arrives. A permanent failure is
classified from the reply and acted on (suppression, bounce score, the row marked bounced)
like any other bounce.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.bounces import service as bounces
from app.bounces.classify import Classifier
from app.bounces.ledgers import LEDGERS
from app.mail import identity
from app.mail.identity import Kind
from app.mail.recording import Delivery, Verdict

logger = logging.getLogger(__name__)
VERDICTS = {
    "delivered": Verdict.DELIVERED,
    "deferred": Verdict.DEFERRED,
    "failed": Verdict.BOUNCED,
    "deleted": Verdict.DELETED,
}
"""The MTA's outcome words (workers.mta.reporting.Reporter) as verdicts."""
FLUSH_EVERY = 0.2
FLUSH_SIZE = 500
FLUSH_TRIES = 10
"""Flushes a batch gets before its outcomes are given up (logged): a deadlock with a worker
writing the same rows, or a database restart, passes; a batch the database refuses every
time must not hold up the outcomes behind it for ever."""


@dataclass(frozen=True)
class Context:
    """What the writer needs besides the session."""

    policy: bounces.Policy
    classifier: Classifier


async def write_deliveries(
    session: AsyncSession, context: Context, kind: Kind, deliveries: list[Delivery]
) -> None:
    """The MTA's word on rows of one kind: recorded by the row's domain, bounces acted on."""
    ledger = LEDGERS[kind]
    # The words and the bounces below are written by two statements each: lock every row
    # first, in id order, as the worker's record of its attempts does, so that the two
    # never wait for each other in a cycle (a deadlock would fail one of them).
    await ledger.lock(session, [item.row_id for item in deliveries])
    await ledger.record_delivery(
        session, [item for item in deliveries if item.verdict is not Verdict.BOUNCED]
    )
    bounced = [item for item in deliveries if item.verdict is Verdict.BOUNCED]
    rows = await ledger.rows(session, [item.row_id for item in bounced])
    facts = [
        bounces.Fact(
            row.email,
            "smtp",
            context.classifier.classify(item.reply, permanent=True),
            item.reply,
            item.reply,
            row,
        )
        for item in bounced
        if (row := rows.get(item.row_id)) is not None
    ]
    if facts:
        await bounces.apply(session, context.policy, facts)


class LedgerOutcomes:
    """An outcome sink for the delivery agent that writes rows, events and bounces in batches."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        secret: str,
        context: Context,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.secret = secret
        self.context = context
        self._buffer: list[tuple[Kind, Delivery]] = []
        self._failures = 0
        """Failed flushes in a row of the batch now at the front of the buffer."""
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False

    async def __call__(self, mail_from: str, recipient: str, outcome: str, reply: str) -> None:
        """Queue one outcome for the next batch (the row knows its recipient's address)."""
        parsed = identity.parse_verp(self.secret, mail_from)
        if parsed is None or parsed[0] not in LEDGERS or outcome not in VERDICTS:
            return
        kind, row_id = parsed
        self._buffer.append((kind, Delivery(row_id, VERDICTS[outcome], reply[:1000])))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever(), name="ledger-outcomes")
        if len(self._buffer) >= FLUSH_SIZE:
            await self.flush()

    async def flush(self) -> None:
        """Write what is buffered, one transaction per batch. A batch that fails goes back to
        the front of the buffer for the next flush (the transaction left nothing behind), up
        to FLUSH_TRIES times; the error is raised either way."""
        batch, self._buffer = self._buffer, []
        if not batch:
            return
        by_kind: dict[Kind, list[Delivery]] = defaultdict(list)
        for kind, item in batch:
            by_kind[kind].append(item)
        try:
            async with self.sessionmaker() as session:
                for kind, items in by_kind.items():
                    await write_deliveries(session, self.context, kind, items)
                await session.commit()
        except Exception:
            self._failures += 1
            if self._failures < FLUSH_TRIES:
                self._buffer[:0] = batch
            else:
                logger.error(
                    "gave up writing %d delivery outcomes after %d tries; their rows keep "
                    "their earlier status", len(batch), self._failures,
                )  # fmt: skip
                self._failures = 0
            raise
        self._failures = 0

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
