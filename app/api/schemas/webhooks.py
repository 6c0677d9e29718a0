"""Webhook schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, StringConstraints

from app.api.schemas.common import DbId, OptionalName, ReadModel, Strict
from app.models import DeliveryStatus, MessageStream

Url = Annotated[str, StringConstraints(strip_whitespace=True, min_length=8, max_length=2000)]
EventTypes = Annotated[
    list[Annotated[str, StringConstraints(max_length=32)]], Field(min_length=1, max_length=20)
]


class WebhookCreate(Strict):
    """Where to post which events; optionally only one stream's or one campaign's."""

    url: Url
    event_types: EventTypes
    stream: MessageStream | None = None
    campaign_id: DbId | None = None
    description: OptionalName = ""


class WebhookUpdate(Strict):
    """Change an endpoint; `enabled: true` re-enables a disabled one."""

    url: Url | None = None
    event_types: EventTypes | None = None
    description: OptionalName | None = None
    enabled: bool | None = None


class WebhookRead(ReadModel):
    """An endpoint (without its secret)."""

    id: int
    url: str
    description: str
    event_types: list[str]
    stream: MessageStream | None
    campaign_id: int | None
    enabled: bool
    disabled_reason: str
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookRead):
    """The new endpoint with its signing secret, shown this once."""

    secret: str


class DeliveryRead(ReadModel):
    """One event's delivery to the endpoint."""

    id: int
    event_id: int
    status: DeliveryStatus
    attempts: int
    response_code: int | None
    last_error: str
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None
