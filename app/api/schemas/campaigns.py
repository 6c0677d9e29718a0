"""Campaign schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import Field

from app.api.schemas.common import Body, DbId, HeaderText, Mailbox, Name, ReadModel, Strict
from app.models import CampaignStatus

CampaignListIds = Annotated[list[DbId], Field(min_length=1, max_length=100)]


class CampaignCreate(Strict):
    """A new draft campaign: lists, sender, and either a template or inline content."""

    name: Name
    subject: HeaderText
    from_email: Mailbox
    reply_to: Mailbox | None = None
    list_ids: CampaignListIds
    segment: dict[str, Any] | None = None
    template_id: DbId | None = None
    html: Body = ""
    text: Body = ""
    send_at: datetime | None = None
    rate: float | None = Field(
        None, gt=0, le=100_000, description="Messages per second for this campaign (optional)."
    )
    tracking: bool = Field(
        False, description="Track opens (pixel) and clicks (signed redirects) of the HTML part."
    )
    track_replies: bool = Field(
        False, description="Reply-To a signed reply+ address: replies are stored and attributed."
    )
    reply_forward_to: Mailbox | None = Field(None, description="Forward clean replies here.")


class CampaignUpdate(Strict):
    """Fields to change; only drafts can be edited."""

    name: Name | None = None
    subject: HeaderText | None = None
    from_email: Mailbox | None = None
    reply_to: Mailbox | None = None
    list_ids: CampaignListIds | None = None
    segment: dict[str, Any] | None = None
    template_id: DbId | None = None
    html: Body | None = None
    text: Body | None = None
    send_at: datetime | None = None
    rate: float | None = Field(None, gt=0, le=100_000)
    tracking: bool = False
    track_replies: bool = False
    reply_forward_to: Mailbox | None = None


class CampaignRead(ReadModel):
    """A stored campaign."""

    id: int
    name: str
    subject: str
    from_email: str
    reply_to: str | None
    list_ids: list[int] = []
    segment: dict[str, Any] | None
    template_id: int | None
    html: str
    text: str
    status: CampaignStatus
    status_reason: str
    rate: float | None
    tracking: bool
    track_replies: bool
    reply_forward_to: str | None
    audience_size: int
    send_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    created_at: datetime
    updated_at: datetime
