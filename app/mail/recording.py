"""What every ledger records about a send, in one shape for campaign rows and messages.

An `Attempt` is the engine's word on one row after a submission (or its decision not to
submit); a `Delivery` is the later word of the MTA or of a bounce or complaint report. Each
ledger (`campaigns.ledger`, `app.messages.repository`) has `record_attempts` and
`record_delivery` taking these, and maps a `Verdict` to its own status.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from app.core.events import NewEvent
from app.mail.identity import Kind
from app.models import EventKind


class Verdict(StrEnum):
    """What became of a ledger row, in the words both ledgers share (each maps them to its status)."""

    SENT = "sent"
    """The MTA accepted the submission."""
    DEFERRED = "deferred"
    """Not yet: the engine submits again later, or the MTA holds the message and retries."""
    FAILED = "failed"
    """Refused for good at submission, out of attempts, or not renderable."""
    SKIPPED = "skipped"
    """Not submitted: the recipient may no longer receive it (unsubscribed, suppressed)."""
    DELIVERED = "delivered"
    """The recipient's server accepted the message."""
    BOUNCED = "bounced"
    """The recipient's server refused it, at once or in a later report."""
    COMPLAINED = "complained"
    """The recipient reported the message as spam."""
    DELETED = "deleted"
    """An operator removed it from the MTA's queue without a bounce: only the reply is news."""


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """The row one message was sent from: a campaign ledger row or a transactional message."""

    kind: Kind
    row_id: int
    email: str
    campaign_id: int | None = None
    subscriber_id: int | None = None

    @property
    def send_id(self) -> int | None:
        """The campaign ledger id, for a campaign row."""
        return self.row_id if self.kind is Kind.CAMPAIGN else None

    @property
    def message_id(self) -> int | None:
        """The transactional message id, for a message."""
        return self.row_id if self.kind is Kind.MESSAGE else None

    def event(self, kind: EventKind, **data: Any) -> NewEvent:
        """An event about this row, naming it the way timelines and webhooks look it up."""
        return NewEvent(
            kind,
            email=self.email,
            campaign_id=self.campaign_id,
            subscriber_id=self.subscriber_id,
            send_id=self.send_id,
            message_id=self.message_id,
            data=data,
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    """What the engine made of one row: submitted (sent, deferred, failed) or skipped."""

    row: LedgerRow
    verdict: Verdict
    reply: str
    next_attempt_at: datetime | None = None
    """When a deferred row is due again."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """The later word on one row: the MTA's (delivered, deferred, bounced, deleted) or a
    report's (bounced, complained)."""

    row_id: int
    verdict: Verdict
    reply: str


@dataclass
class SendReport:
    """What one sending job did: rows sent, deferred, failed, and skipped (not submitted)."""

    sent: int = 0
    deferred: int = 0
    failed: int = 0
    skipped: int = 0

    def count(self, verdict: Verdict) -> None:
        """Count one row the job decided on."""
        if verdict is Verdict.SENT:
            self.sent += 1
        elif verdict is Verdict.DEFERRED:
            self.deferred += 1
        elif verdict is Verdict.FAILED:
            self.failed += 1
        elif verdict is Verdict.SKIPPED:
            self.skipped += 1
