"""Campaign lifecycle and progress schemas."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from app.api.schemas.common import Address, ReadModel, Strict
from app.api.schemas.safety import PreflightRead


class CampaignStats(ReadModel):
    """Recipients, ledger counts per status, current rate and an estimate of the time left."""

    campaign_id: int
    status: str
    status_reason: str
    recipients: int
    pending: int
    sending: int
    sent: int
    deferred: int
    delivered: int
    bounced: int
    complained: int
    failed: int
    skipped: int
    bounced_hard: int
    bounced_soft: int
    bounced_informational: int
    bounces_by_class: dict[str, int]
    """Bounce records per class (invalid_recipient, mailbox_full, reputation_block, …)."""
    unsubscribed: int
    opened: int
    clicked: int
    rate_per_second: float
    eta_seconds: float | None


class CampaignPreview(ReadModel):
    """The message one recipient would receive: headers in order, subject, both parts."""

    headers: list[tuple[str, str]]
    subject: str
    html: str | None
    text: str
    preflight: PreflightRead | None = None
    """The content preflight of the campaign (as a sample recipient receives it)."""


class TestSend(Strict):
    """Addresses to send a test copy to."""

    addresses: Annotated[list[Address], Field(min_length=1, max_length=20)]


class TestSendResult(ReadModel):
    """The MTA's reply for each test address, and the campaign's content preflight."""

    replies: list[str]
    preflight: PreflightRead | None = None
