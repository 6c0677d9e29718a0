"""Opens and clicks: recorded as events with a machine/human verdict, counted per link."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.events import NewEvent, record_events
from app.mail import identity, tracking
from app.models import Event, EventKind, Send, Subscriber, utcnow
from campaigns import links
from campaigns.composer import CLICK_PURPOSE, OPEN_PURPOSE

MAX_AGENT = 300


@dataclass(frozen=True)
class Click:
    """A genuine click token: who, which campaign, which link position."""

    subscriber_id: int
    campaign_id: int
    position: int


def read_open(secret: str, token: str) -> tuple[int, int] | None:
    """(subscriber, campaign) of a genuine open token."""
    parts = None if len(token) > 200 else identity.read_tracking_token(secret, OPEN_PURPOSE, token)
    if parts is None or len(parts) != 2 or not all(0 <= part < 2**31 for part in parts):
        return None
    return parts[0], parts[1]


def read_click(secret: str, token: str) -> Click | None:
    """The click a genuine token names (the position is signed with it)."""
    parts = None if len(token) > 200 else identity.read_tracking_token(secret, CLICK_PURPOSE, token)
    if parts is None or len(parts) != 3 or not all(0 <= part < 2**31 for part in parts):
        return None
    return Click(*parts)


async def _recipient(
    session: AsyncSession, subscriber_id: int, campaign_id: int
) -> tuple[Subscriber | None, int | None, float | None]:
    """The subscriber, their ledger row and seconds since it was sent (for scanner checks)."""
    subscriber = await session.get(Subscriber, subscriber_id) if subscriber_id else None
    row = (
        await session.execute(
            sa.select(Send.id, Send.sent_at).where(
                Send.campaign_id == campaign_id, Send.subscriber_id == subscriber_id
            )
        )
    ).first()
    if row is None:
        return subscriber, None, None
    since = (utcnow() - row[1]).total_seconds() if row[1] is not None else None
    return subscriber, int(row[0]), since


async def record_open(
    session: AsyncSession, subscriber_id: int, campaign_id: int, user_agent: str, client_ip: str
) -> None:
    """An `opened` event, flagged when a machine (privacy proxy) fetched the pixel."""
    subscriber, send_id, _ = await _recipient(session, subscriber_id, campaign_id)
    if subscriber is None:
        return  # a test send's sample recipient, or an erased subscriber
    verdict = tracking.classify_open(user_agent, client_ip)
    await record_events(
        session,
        [
            NewEvent(
                EventKind.opened,
                email=subscriber.email,
                campaign_id=campaign_id,
                subscriber_id=subscriber.id,
                send_id=send_id,
                data={
                    "machine": verdict.machine,
                    "reason": verdict.reason,
                    "user_agent": user_agent[:MAX_AGENT],
                },
            )
        ],
    )


async def record_click(
    session: AsyncSession, click: Click, method: str, user_agent: str
) -> str | None:
    """The URL to redirect to (None if the campaign has no such link); records `clicked`."""
    url = await links.url(session, click.campaign_id, click.position)
    if url is None:
        return None
    subscriber, send_id, since = await _recipient(session, click.subscriber_id, click.campaign_id)
    if subscriber is not None:
        verdict = tracking.classify_click(method, user_agent, since)
        await record_events(
            session,
            [
                NewEvent(
                    EventKind.clicked,
                    email=subscriber.email,
                    campaign_id=click.campaign_id,
                    subscriber_id=subscriber.id,
                    send_id=send_id,
                    data={
                        "link": click.position,
                        "url": url[:2000],
                        "machine": verdict.machine,
                        "reason": verdict.reason,
                        "user_agent": user_agent[:MAX_AGENT],
                    },
                )
            ],
        )
    return url


@dataclass(frozen=True)
class Tally:
    """Total and unique (per subscriber) counts, for people and machines apart."""

    total: int = 0
    unique: int = 0
    machine_total: int = 0
    machine_unique: int = 0


async def _tallies(
    session: AsyncSession, campaign_id: int, kind: EventKind, by_link: bool
) -> dict[int, Tally]:
    machine = Event.data["machine"].as_boolean()
    key = Event.data["link"].as_integer() if by_link else sa.literal(0)
    rows = await session.execute(
        sa.select(
            key,
            sa.func.count().filter(~machine),
            sa.func.count(sa.distinct(Event.subscriber_id)).filter(~machine),
            sa.func.count().filter(machine),
            sa.func.count(sa.distinct(Event.subscriber_id)).filter(machine),
        )
        .where(Event.campaign_id == campaign_id, Event.kind == kind.value)
        .group_by(key)
    )
    return {
        int(position or 0): Tally(int(a), int(b), int(c), int(d)) for position, a, b, c, d in rows
    }


async def opens(session: AsyncSession, campaign_id: int) -> Tally:
    """Opens of a campaign."""
    return (await _tallies(session, campaign_id, EventKind.opened, False)).get(0, Tally())


async def link_clicks(session: AsyncSession, campaign_id: int) -> list[tuple[int, str, Tally]]:
    """(position, url, clicks) of every stored link of the campaign, unclicked ones too."""
    counts = await _tallies(session, campaign_id, EventKind.clicked, True)
    return [
        (position, url, counts.get(position, Tally()))
        for position, url in await links.all_of(session, campaign_id)
    ]
