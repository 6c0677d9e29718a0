"""Who a campaign goes to: the union of its lists, each subscriber once, minus the excluded."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.orm import InstrumentedAttribute

from app.core.address_hash import ERASURE_SOURCE, hashed_address_sql
from app.models import (
    CampaignList,
    MailingList,
    OptIn,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionScope,
)

BROADCAST_SCOPES = (SuppressionScope.all, SuppressionScope.broadcast)
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


def eligible_membership(campaign_id: int) -> sa.Exists:
    """A membership of one of the campaign's lists that may receive it.

    Double opt-in lists count confirmed members only; single opt-in lists count every
    membership that is not unsubscribed.
    """
    return (
        sa.select(Subscription.subscriber_id)
        .join(CampaignList, CampaignList.list_id == Subscription.list_id)
        .join(MailingList, MailingList.id == Subscription.list_id)
        .where(
            CampaignList.campaign_id == campaign_id,
            Subscription.subscriber_id == Subscriber.id,
            sa.or_(
                Subscription.status == SubscriptionStatus.confirmed,
                sa.and_(
                    MailingList.optin == OptIn.single,
                    Subscription.status == SubscriptionStatus.unconfirmed,
                ),
            ),
        )
        .exists()
    )


def not_suppressed(
    address: sa.ColumnElement[str] | InstrumentedAttribute[str],
    created_at: sa.ColumnElement[datetime] | InstrumentedAttribute[datetime] | None = None,
) -> sa.ColumnElement[bool]:
    """No broadcast-blocking suppression exists for `address`, plain or hashed (erased).

    The hash is computed by the database (app.core.address_hash). Given the row's `created_at`,
    only rows created since the first erasure are hashed at all: an erased subscriber's
    row is deleted, so only an address added again afterwards can match a hashed entry.
    """
    plain = (
        sa.select(Suppression.id)
        .where(Suppression.address == address, Suppression.scope.in_(BROADCAST_SCOPES))
        .exists()
    )
    hashed = (
        sa.select(Suppression.id)
        .where(
            Suppression.address == hashed_address_sql(address),
            Suppression.scope.in_(BROADCAST_SCOPES),
        )
        .exists()
    )
    if created_at is None:
        return sa.and_(~plain, ~hashed)
    first_erasure = (
        sa.select(sa.func.min(Suppression.created_at))
        .where(Suppression.source == ERASURE_SOURCE)
        .scalar_subquery()
    )
    recent = created_at >= sa.func.coalesce(first_erasure, FAR_FUTURE)
    return sa.and_(~plain, sa.not_(sa.and_(recent, hashed)))


def audience_filter(
    campaign_id: int, segment: sa.ColumnElement[bool] | None
) -> list[sa.ColumnElement[bool]]:
    """WHERE clauses over Subscriber selecting the campaign's eligible recipients."""
    clauses: list[sa.ColumnElement[bool]] = [
        Subscriber.status == SubscriberStatus.enabled,
        eligible_membership(campaign_id),
        not_suppressed(Subscriber.email, Subscriber.created_at),
    ]
    if segment is not None:
        clauses.append(segment)
    return clauses
