"""Campaign lifecycle and progress schemas."""

from __future__ import annotations

from app.api.schemas.common import ReadModel


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
    rate_per_second: float
    eta_seconds: float | None
