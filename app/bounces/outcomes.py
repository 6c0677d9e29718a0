"""Delivery outcomes back into the ledger, as events and as bounces, in batches.

The envelope sender names the ledger row (VERP, signed); mail without one (relayed from
elsewhere) has no row to update. Each VERP kind has its writer (`WRITERS`): `c` is a campaign
ledger row, `m` a transactional message. Deferrals only refresh the row's last reply: the ledger keeps `sent` (the MTA
holds the message) until a final outcome arrives. A permanent failure is classified from the
reply and acted on (suppression, bounce score) like any other bounce.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.bounces import repository as bounce_rows
from app.bounces import service as bounces
from app.bounces.classify import Classifier
from app.core.events import NewEvent
from app.mail import identity
from app.mail.identity import Kind
from app.messages import repository as messages
from app.models import EventKind, SendStatus
from campaigns import ledger

logger = logging.getLogger(__name__)
FINAL = {"delivered": SendStatus.delivered, "failed": SendStatus.bounced}
EVENTS = {"delivered": EventKind.delivered, "deferred": EventKind.deferred}
FLUSH_EVERY = 0.2
FLUSH_SIZE = 500


@dataclass(frozen=True)
class Outcome:
    """What the delivery agent said about one recipient of one ledger row."""

    kind: Kind
    row_id: int
    recipient: str
    outcome: str
    """delivered, deferred, failed (a bounce) or deleted (an operator's decision)."""
    reply: str


@dataclass(frozen=True)
class Context:
    """What a writer needs besides the session."""

    policy: bounces.Policy
    classifier: Classifier


Writer = Callable[[AsyncSession, Context, list[Outcome]], Awaitable[None]]


async def write_campaign_outcomes(
    session: AsyncSession, context: Context, outcomes: list[Outcome]
) -> None:
    """Campaign rows: ledger status, delivered/deferred events, bounces for failures."""
    await ledger.record_delivery(
        session, [(o.row_id, FINAL.get(o.outcome), o.reply) for o in outcomes]
    )
    rows = await bounce_rows.campaign_rows(session, [o.row_id for o in outcomes])
    events: list[NewEvent] = []
    facts: list[bounces.Fact] = []
    for item in outcomes:
        row = rows.get(item.row_id)
        if row is None:
            continue
        if item.outcome == "failed":
            classification = context.classifier.classify(item.reply, permanent=True)
            facts.append(
                bounces.Fact(row.email, "smtp", classification, item.reply, item.reply, row)
            )
        elif item.outcome in EVENTS:
            events.append(
                NewEvent(
                    EVENTS[item.outcome],
                    email=row.email,
                    campaign_id=row.campaign_id,
                    subscriber_id=row.subscriber_id,
                    send_id=row.row_id,
                    data={"reply": item.reply[:300]},
                )
            )
    await bounces.apply(session, context.policy, facts, update_ledger=False, also=events)


async def write_message_outcomes(
    session: AsyncSession, context: Context, outcomes: list[Outcome]
) -> None:
    """Transactional messages: status and events, then bounces acted on like any other."""
    await messages.record_delivery(
        session,
        [
            (o.row_id, messages.MTA_OUTCOMES.get(o.outcome), o.reply)
            for o in outcomes
            if o.outcome != "deleted"
        ],
    )
    failed = [o for o in outcomes if o.outcome == "failed"]
    rows = await bounce_rows.message_rows(session, [o.row_id for o in failed])
    facts = [
        bounces.Fact(
            o.recipient,
            "smtp",
            context.classifier.classify(o.reply, permanent=True),
            o.reply,
            o.reply,
            rows.get(o.row_id),
        )
        for o in failed
    ]
    if facts:
        await bounces.apply(
            session, context.policy, facts, update_ledger=False, bounce_events=False
        )


WRITERS: dict[Kind, Writer] = {
    Kind.CAMPAIGN: write_campaign_outcomes,
    Kind.MESSAGE: write_message_outcomes,
}
"""Writer per VERP kind: `c` a campaign ledger row, `m` a transactional message."""


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
        self._buffer: list[Outcome] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False

    async def __call__(self, mail_from: str, recipient: str, outcome: str, reply: str) -> None:
        """Queue one outcome for the next batch."""
        parsed = identity.parse_verp(self.secret, mail_from)
        if parsed is None or parsed[0] not in WRITERS:
            return
        self._buffer.append(Outcome(parsed[0], parsed[1], recipient, outcome, reply[:1000]))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever(), name="ledger-outcomes")
        if len(self._buffer) >= FLUSH_SIZE:
            await self.flush()

    async def flush(self) -> None:
        """Write what is buffered, one transaction per batch."""
        batch, self._buffer = self._buffer, []
        if not batch:
            return
        by_kind: dict[Kind, list[Outcome]] = defaultdict(list)
        for item in batch:
            by_kind[item.kind].append(item)
        async with self.sessionmaker() as session:
            for kind, items in by_kind.items():
                await WRITERS[kind](session, self.context, items)
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
