"""Who a campaign goes to: the union of its lists, each subscriber once, minus the excluded."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import InstrumentedAttribute

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
from campaigns.erasure import hashed_address_sql

BROADCAST_SCOPES = (SuppressionScope.all, SuppressionScope.broadcast)


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
) -> sa.ColumnElement[bool]:
    """No broadcast-blocking suppression exists for `address`, plain or hashed (erased).

    Two probes of the unique address index per recipient; the hash is computed by the
    database (see campaigns.erasure).
    """
    return ~(
        sa.select(Suppression.id)
        .where(
            Suppression.address.in_([address, hashed_address_sql(address)]),
            Suppression.scope.in_(BROADCAST_SCOPES),
        )
        .exists()
    )


def audience_filter(
    campaign_id: int, segment: sa.ColumnElement[bool] | None
) -> list[sa.ColumnElement[bool]]:
    """WHERE clauses over Subscriber selecting the campaign's eligible recipients."""
    clauses: list[sa.ColumnElement[bool]] = [
        Subscriber.status == SubscriberStatus.enabled,
        eligible_membership(campaign_id),
        not_suppressed(Subscriber.email),
    ]
    if segment is not None:
        clauses.append(segment)
    return clauses
