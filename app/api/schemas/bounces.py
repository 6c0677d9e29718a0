"""Bounce and complaint schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, StringConstraints

from app.api.schemas.common import Address, DbId, ReadModel, Strict
from app.core.text import no_nul, require_single_line

EnhancedStatus = Annotated[str, StringConstraints(pattern=r"^[245]\.\d{1,3}\.\d{1,3}$")]
Diagnostic = Annotated[str, StringConstraints(max_length=2000), AfterValidator(no_nul)]
MessageIdHeader = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=998),
    AfterValidator(require_single_line),
]
FeedbackType = Annotated[str, StringConstraints(pattern=r"^[a-z-]{1,32}$")]


class BounceReport(Strict):
    """A bounce or complaint reported by a relay: the address, and as much as it knows."""

    email: Address
    type: Literal["bounce", "complaint"] = "bounce"
    status: EnhancedStatus | None = None
    """RFC 3463 enhanced status code, e.g. 5.1.1."""
    diagnostic: Diagnostic = ""
    """The remote server's reply or the relay's explanation."""
    message_id: MessageIdHeader | None = None
    """The Message-ID header of the message that bounced, as Warta set it."""
    campaign_id: DbId | None = None
    feedback_type: FeedbackType = "abuse"


class BounceRead(ReadModel):
    """A bounce or complaint and what Warta did about it."""

    id: int
    created_at: datetime
    email: str
    kind: str
    source: str
    bounce_class: str
    severity: str
    status: str
    diagnostic: str
    action: str
    campaign_id: int | None
    subscriber_id: int | None
    send_id: int | None
    message_id: int | None


class BounceDetail(BounceRead):
    """A bounce with the report or reply it came from."""

    raw: str
