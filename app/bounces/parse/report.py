"""One inbound message read as a report: DSN, ARF complaint, auto-reply, non-standard bounce,
or something else (a reply from a person), with what it says about which recipients."""

from __future__ import annotations

import email.message
import enum
import re
from dataclasses import dataclass, field
from email.message import Message

from app.bounces.parse.arf import FeedbackReport, parse_arf
from app.bounces.parse.autoreply import is_auto_reply
from app.bounces.parse.dsn import DsnRecipient, parse_dsn
from app.bounces.parse.fallback import scan
from app.bounces.parse.mime import (
    MAX_REPORT_BYTES,
    embedded_headers,
    header,
    parts,
    read_message,
    text_of,
)

_QUOTED_HEADER = re.compile(
    r"^[ \t>]*(Message-ID|Feedback-ID|To):[ \t]*(\S[^\r\n]{0,500})$", re.IGNORECASE | re.MULTILINE
)


class ReportKind(enum.StrEnum):
    """What an inbound message turned out to be."""

    dsn = "dsn"
    bounce = "bounce"
    """A non-standard bounce recognised by flufl.bounce."""
    complaint = "complaint"
    auto_reply = "auto_reply"
    other = "other"


@dataclass(frozen=True)
class Report:
    """A parsed inbound message."""

    kind: ReportKind
    recipients: list[DsnRecipient] = field(default_factory=list)
    """For DSNs and bounces: per-recipient status (failed or delayed)."""
    feedback: FeedbackReport | None = None
    original: Message | None = None
    subject: str = ""
    defects: int = 0

    @property
    def failures(self) -> list[DsnRecipient]:
        """Recipients the message will not reach."""
        return [item for item in self.recipients if item.failed]

    @property
    def feedback_is_complaint(self) -> bool:
        """An ARF report that is a complaint (abuse, fraud, …; not `not-spam`)."""
        return self.feedback is not None and self.feedback.is_complaint

    @property
    def feedback_type(self) -> str:
        """The ARF Feedback-Type, "" for other reports."""
        return self.feedback.feedback_type if self.feedback is not None else ""

    def addresses(self) -> list[str]:
        """Every recipient address the report names."""
        if self.feedback is not None:
            return list(self.feedback.original_rcpt_to)
        found = []
        for item in self.recipients:
            found += [a for a in (item.final_recipient, item.original_recipient) if a]
        return list(dict.fromkeys(found))


def parse_report(data: bytes, limit: int = MAX_REPORT_BYTES) -> Report:
    """Read a report from its first `limit` bytes; never raises for malformed input."""
    message = read_message(data, limit)
    subject = header(message, "Subject", 300)
    defects = len(message.defects)
    if (dsn := parse_dsn(message)) is not None:
        if not dsn.usable and (found := scan(message, without_delivery_status=True)):
            # A delivery-status part that names no recipient or says nothing usable about
            # any: what the heuristics read from the rest is better than nothing.
            original = dsn.original or _original(message)
            return Report(ReportKind.bounce, found, None, original, subject, defects)
        return Report(ReportKind.dsn, dsn.recipients, None, dsn.original, subject, defects)
    if (arf := parse_arf(message)) is not None:
        return Report(ReportKind.complaint, [], arf, arf.original, subject, defects)
    if is_auto_reply(message):
        return Report(ReportKind.auto_reply, subject=subject, defects=defects)
    found = scan(message)
    if found:
        return Report(ReportKind.bounce, found, None, _original(message), subject, defects)
    return Report(ReportKind.other, subject=subject, defects=defects)


def _original(message: Message) -> Message | None:
    """The returned original of a non-standard bounce: an attached part, or quoted inline."""
    for part in parts(message)[1:]:
        if part.get_content_type() in ("message/rfc822", "text/rfc822-headers"):
            return embedded_headers(part)
    quoted = email.message.Message()
    for part in parts(message):
        if part.get_content_maintype() != "text" or part.is_multipart():
            continue
        for name, value in _QUOTED_HEADER.findall(text_of(part, 200_000)):
            if quoted.get(name) is None:
                quoted[name] = value.strip()
    return quoted if len(quoted) else None
