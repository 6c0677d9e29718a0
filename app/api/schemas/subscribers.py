"""Subscriber schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import Field

from app.api.schemas.common import Address, Attributes, DbId, OptionalName, ReadModel, Strict
from app.models import SubscriberStatus, SubscriptionStatus

ListIds = Annotated[list[DbId], Field(max_length=1000)]


class SubscriberCreate(Strict):
    """A new subscriber, optionally subscribed to lists at once."""

    email: Address
    name: OptionalName = ""
    attributes: Attributes = {}
    status: SubscriberStatus = SubscriberStatus.enabled
    lists: ListIds = []
    preconfirm: bool = Field(
        False, description="Mark double opt-in memberships confirmed (consent gathered elsewhere)."
    )


class SubscriberUpdate(Strict):
    """Fields to change; `lists` replaces the set of lists the subscriber belongs to."""

    email: Address | None = None
    name: OptionalName | None = None
    attributes: Attributes | None = None
    status: SubscriberStatus | None = None
    lists: ListIds | None = None
    preconfirm: bool = False


class MembershipUpdate(Strict):
    """Set one membership's status."""

    status: SubscriptionStatus


class MembershipRead(ReadModel):
    """One list the subscriber belongs to."""

    list_id: int
    status: SubscriptionStatus
    created_at: datetime
    updated_at: datetime


class SubscriberRead(ReadModel):
    """A subscriber with their memberships."""

    id: int
    email: str
    name: str
    attributes: dict[str, Any]
    status: SubscriberStatus
    created_at: datetime
    updated_at: datetime
    lists: list[MembershipRead] = []
