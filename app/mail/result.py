"""What became of one submission to one recipient, independent of the protocol that carried it.

Like Postal's `send_result`: the sender reports delivered / temporary / permanent and the
caller decides whether to mark the ledger, retry later or record a bounce
(`app.mail.retry` decides, `app.mail.recording` is what every ledger records).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from app.core.text import storable

REPLY_CLASS_SUCCESS = 2
"""First digit of a positive completion reply (RFC 5321 §4.2.1)."""
REPLY_CLASS_PERMANENT = 5
"""First digit of a permanent negative reply: do not try again."""

MAIL_ACTION_OK = 250
"""Requested mail action okay, completed."""

_ENHANCED_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
"""RFC 3463 `class.subject.detail` at the start of the reply text."""


class Outcome(StrEnum):
    """The three outcomes a caller acts on."""

    DELIVERED = "delivered"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


def parse_enhanced_status(text: str) -> str | None:
    """The RFC 3463 enhanced status code (e.g. "5.1.1") that starts `text`, if any."""
    match = _ENHANCED_STATUS.match(text.lstrip())
    return ".".join(match.groups()) if match else None


def outcome_of(code: int) -> Outcome:
    """Classify an SMTP reply code; anything but 2xx and 5xx is worth another try."""
    reply_class = code // 100
    if reply_class == REPLY_CLASS_SUCCESS:
        return Outcome.DELIVERED
    if reply_class == REPLY_CLASS_PERMANENT:
        return Outcome.PERMANENT
    return Outcome.TEMPORARY


@dataclass(frozen=True, slots=True)
class SendResult:
    """The outcome of one submission for one recipient, with the reply that decided it.

    `code` is None when no reply decided it: a connection failure, a timeout, or an
    envelope the sender refused before sending anything.
    """

    outcome: Outcome
    code: int | None
    enhanced_status: str | None
    text: str
    host: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", storable(self.text))  # stored in ledgers, DSNs

    @classmethod
    def from_reply(cls, code: int, text: str, host: str | None = None) -> SendResult:
        """The result a server's reply means."""
        return cls(outcome_of(code), code, parse_enhanced_status(text), text, host)

    @classmethod
    def connection_failure(cls, text: str, host: str | None = None) -> SendResult:
        """A temporary result for a connection that failed, dropped or timed out."""
        return cls(Outcome.TEMPORARY, None, None, text, host)

    @classmethod
    def refused(cls, text: str, enhanced_status: str | None = None) -> SendResult:
        """A permanent result for an envelope that cannot be sent at all (no reply involved)."""
        return cls(Outcome.PERMANENT, None, enhanced_status, text, None)

    @property
    def delivered(self) -> bool:
        """Whether the server took responsibility for the message."""
        return self.outcome is Outcome.DELIVERED

    def describe(self) -> str:
        """The reply as a log or ledger line: "550 5.1.1 No such user", or the failure text."""
        return self.text if self.code is None else f"{self.code} {self.text}"

    def __str__(self) -> str:
        return f"{self.outcome}: {self.describe()}"
