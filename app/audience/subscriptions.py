"""Public subscription: a hosted form per public list and the keyless API, double opt-in.

The answer never says whether the address was known (no enumeration). Suppressed, erased
and blocklisted addresses are accepted in form and silently left alone.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audience import memberships
from app.audience.suppression_scopes import scopes_for
from app.core.events import NewEvent, record_events
from app.core.ratelimit import RateLimiter
from app.core.settings import Settings
from app.mail import identity
from app.models import (
    EventKind,
    MailingList,
    OptIn,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    Visibility,
    utcnow,
)

LIST_PURPOSE = "list"
CONFIRM_PURPOSE = "confirm"
CONFIRM_LIFETIME = 7 * 24 * 3600
MAX_LISTS = 20
HOUR = 3600.0


class Admission(Enum):
    """Whether a subscription attempt may proceed."""

    allowed = "allowed"
    limited = "limited"


@dataclass(frozen=True)
class Confirmation:
    """A confirmation mail to send after commit: who, for which double opt-in lists."""

    subscriber_id: int
    list_ids: list[int]


def list_token(secret: str, list_id: int) -> str:
    """The signed name of a list in form URLs and the public API."""
    return identity.link_token(secret, LIST_PURPOSE, list_id)


def confirm_token(secret: str, subscriber_id: int, list_ids: Sequence[int], now: float) -> str:
    """The signed confirmation link token: subscriber, issue time, lists."""
    return identity.link_token(secret, CONFIRM_PURPOSE, subscriber_id, int(now), *list_ids)


async def public_lists(session: AsyncSession) -> list[MailingList]:
    """Every public list, by name."""
    rows = await session.scalars(
        sa.select(MailingList)
        .where(MailingList.visibility == Visibility.public)
        .order_by(MailingList.name)
        .limit(500)
    )
    return list(rows.all())


async def lists_for_tokens(
    session: AsyncSession, secret: str, tokens: Sequence[str]
) -> list[MailingList] | None:
    """The public lists the tokens name; None if any token is not a genuine public list's."""
    ids = []
    for token in tokens:
        parts = None if len(token) > 200 else identity.read_link_token(secret, LIST_PURPOSE, token)
        if parts is None or len(parts) != 1 or not 0 < parts[0] < 2**31:
            return None
        ids.append(parts[0])
    found = (
        await session.scalars(
            sa.select(MailingList).where(
                MailingList.id.in_(ids), MailingList.visibility == Visibility.public
            )
        )
    ).all()
    if len(found) != len(set(ids)):
        return None
    return sorted(found, key=lambda item: item.id)


async def admit(limiter: RateLimiter, settings: Settings, client: str, address: str) -> Admission:
    """Per-client and per-address hourly limits (GCRA in Redis); an address is hashed first."""
    per_ip, per_address = settings.subscribe_limit_per_ip, settings.subscribe_limit_per_address
    if per_ip and not await limiter.try_acquire(f"subscribe:ip:{client}", per_ip / HOUR, per_ip):
        return Admission.limited
    if address and per_address:
        digest = hashlib.sha256(address.encode()).hexdigest()[:32]
        key = f"subscribe:address:{digest}"
        if not await limiter.try_acquire(key, per_address / HOUR, per_address):
            return Admission.limited
    return Admission.allowed


async def _subscriber(session: AsyncSession, address: str, name: str) -> Subscriber:
    existing = await session.scalar(sa.select(Subscriber).where(Subscriber.email == address))
    if existing is not None:
        return existing
    created = Subscriber(email=address, name=name, attributes={})
    session.add(created)
    try:
        await session.flush()
    except IntegrityError:  # a concurrent request created it first; nothing else was written
        await session.rollback()
        found = await session.scalar(sa.select(Subscriber).where(Subscriber.email == address))
        assert found is not None
        return found
    return created


async def subscribe(
    session: AsyncSession, address: str, name: str, lists: Sequence[MailingList]
) -> Confirmation | None:
    """Subscribe `address` to `lists`: single opt-in at once, double opt-in pending a mail.

    An existing subscriber's name is not changed by an anonymous form.
    """
    if await scopes_for(session, [address]):
        return None
    subscriber = await _subscriber(session, address, name)
    if subscriber.status != SubscriberStatus.enabled:
        return None
    single = [item.id for item in lists if item.optin == OptIn.single]
    double = [item.id for item in lists if item.optin == OptIn.double]
    # Anyone can type anyone's address: a member who left a single opt-in list is not put
    # back by a form (they rejoin from the preference centre their mail links to).
    left = set(
        (
            await session.scalars(
                sa.select(Subscription.list_id).where(
                    Subscription.subscriber_id == subscriber.id,
                    Subscription.list_id.in_(single),
                    Subscription.status == SubscriptionStatus.unsubscribed,
                )
            )
        ).all()
    )
    single = [list_id for list_id in single if list_id not in left]
    await memberships.join(session, subscriber, single, source="form")
    await memberships.join(
        session, subscriber, double, source="form", status=SubscriptionStatus.unconfirmed
    )
    if not double:
        return None
    pending = list(
        (
            await session.scalars(
                sa.select(Subscription.list_id)
                .where(
                    Subscription.subscriber_id == subscriber.id,
                    Subscription.list_id.in_(double),
                    Subscription.status == SubscriptionStatus.unconfirmed,
                )
                .order_by(Subscription.list_id)
            )
        ).all()
    )
    return Confirmation(subscriber.id, pending) if pending else None


@dataclass(frozen=True)
class PendingConfirmation:
    """What a genuine confirmation token names."""

    subscriber: Subscriber
    lists: list[MailingList]


async def read_confirmation(
    session: AsyncSession, secret: str, token: str, now: float | None = None
) -> PendingConfirmation | None:
    """The subscriber and lists of a genuine, unexpired confirmation token."""
    parts = None if len(token) > 400 else identity.read_link_token(secret, CONFIRM_PURPOSE, token)
    if parts is None or not 3 <= len(parts) <= 2 + MAX_LISTS:
        return None
    subscriber_id, issued, *list_ids = parts
    age = (time.time() if now is None else now) - issued
    if not 0 <= age <= CONFIRM_LIFETIME or not 0 < subscriber_id < 2**31:
        return None
    if any(not 0 < list_id < 2**31 for list_id in list_ids):
        return None
    subscriber = await session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return None
    lists = (
        await session.scalars(
            sa.select(MailingList).where(MailingList.id.in_(list_ids)).order_by(MailingList.id)
        )
    ).all()
    return PendingConfirmation(subscriber, list(lists))


async def confirm(session: AsyncSession, pending: PendingConfirmation) -> list[int]:
    """Confirm the memberships still awaiting confirmation; replaying it changes nothing."""
    ids = [item.id for item in pending.lists]
    waiting = list(
        (
            await session.scalars(
                sa.select(Subscription.list_id).where(
                    Subscription.subscriber_id == pending.subscriber.id,
                    Subscription.list_id.in_(ids),
                    Subscription.status == SubscriptionStatus.unconfirmed,
                )
            )
        ).all()
    )
    if not waiting:
        return []
    await session.execute(
        sa.update(Subscription)
        .where(
            Subscription.subscriber_id == pending.subscriber.id,
            Subscription.list_id.in_(waiting),
        )
        .values(status=SubscriptionStatus.confirmed, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    await record_events(
        session,
        [
            NewEvent(
                EventKind.subscribed,
                email=pending.subscriber.email,
                subscriber_id=pending.subscriber.id,
                data={"lists": sorted(waiting), "source": "confirmation"},
            )
        ],
    )
    return waiting
