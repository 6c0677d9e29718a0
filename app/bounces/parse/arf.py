"""RFC 5965 abuse feedback reports (ARF): `multipart/report; report-type=feedback-report`."""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass
from email.message import Message

from app.bounces.parse.mime import address_field, embedded_headers, header, parts, text_of

COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other", "not-spam"})


@dataclass(frozen=True)
class FeedbackReport:
    """What a mailbox provider says a recipient reported, with the original's headers."""

    feedback_type: str
    user_agent: str
    original_rcpt_to: list[str]
    original_mail_from: str
    arrival_date: str
    reported_domain: str
    original: Message | None

    @property
    def is_complaint(self) -> bool:
        """Abuse (spam button), fraud, virus, other; `not-spam` is no complaint."""
        return self.feedback_type in COMPLAINT_TYPES - {"not-spam"}


def parse_arf(message: Message) -> FeedbackReport | None:
    """The feedback report in an ARF message, or None when it is not one."""
    fields = None
    original = None
    for part in parts(message):
        content_type = part.get_content_type()
        if content_type == "message/feedback-report" and fields is None:
            fields = _fields(part)
        elif content_type in ("message/rfc822", "text/rfc822-headers") and original is None:
            original = embedded_headers(part)
    if fields is None:
        return None
    recipients = [
        address
        for value in (fields.get_all("Original-Rcpt-To") or [])[:20]
        if (address := address_field(str(value)))
    ]
    return FeedbackReport(
        feedback_type=header(fields, "Feedback-Type", 32).lower() or "other",
        user_agent=header(fields, "User-Agent", 200),
        original_rcpt_to=recipients,
        original_mail_from=address_field(header(fields, "Original-Mail-From")),
        arrival_date=header(fields, "Arrival-Date", 100),
        reported_domain=header(fields, "Reported-Domain", 255),
        original=original,
    )


def _fields(part: Message) -> Message:
    """The report's fields; the parser may hand them over as a sub-message or as text."""
    payload = part.get_payload()
    if isinstance(payload, list):
        found = next((p for p in payload if isinstance(p, Message)), None)
        if found is not None:
            return found
    return email.parser.HeaderParser(policy=email.policy.compat32).parsestr(text_of(part, 100_000))
