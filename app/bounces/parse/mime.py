"""Reading a report with bounded memory and time: only its first bytes are parsed."""

from __future__ import annotations

import email
import email.parser
import email.policy
import re
from email.message import Message

MAX_REPORT_BYTES = 1_048_576
"""What is parsed of a report: DSN and ARF parts come first, the returned original last, and
only the original's headers matter. The rest of a large report is never read."""
MAX_PARTS = 64
"""MIME parts looked at; a report has three, a bomb has thousands."""

_ANGLE = re.compile(r"<([^<>\s]+@[^<>\s]+)>")


def read_message(data: bytes, limit: int = MAX_REPORT_BYTES) -> Message:
    """Parse the first `limit` bytes of a message leniently (defects are recorded, not raised)."""
    return email.message_from_bytes(data[:limit], policy=email.policy.compat32)


def parts(message: Message) -> list[Message]:
    """The message and its sub-parts, depth first, at most MAX_PARTS of them."""
    found: list[Message] = []
    stack = [message]
    while stack and len(found) < MAX_PARTS:
        part = stack.pop()
        found.append(part)
        payload = part.get_payload()
        if part.is_multipart() and isinstance(payload, list):
            stack.extend(reversed([p for p in payload if isinstance(p, Message)]))
    return found


def too_many_parts(message: Message) -> bool:
    """More parts than any real report has (checked without walking them all)."""
    return len(parts(message)) >= MAX_PARTS


def header(message: Message, name: str, limit: int = 1000) -> str:
    """A header's value as text, unfolded and bounded; "" when absent or unreadable."""
    value = message.get(name)
    if value is None:
        return ""
    text = str(value) if not isinstance(value, str) else value
    return " ".join(text.split())[:limit]


def address_field(value: str) -> str:
    """`rfc822; <User@Example.com>` → `user@example.com`; "" when no address is there."""
    _, _, rest = value.rpartition(";")
    rest = rest.strip()
    match = _ANGLE.search(rest)
    if match:
        rest = match.group(1)
    rest = rest.strip("<> \t")
    if "@" not in rest or any(c.isspace() for c in rest):
        return ""
    return rest.lower()[:320]


def text_of(part: Message, limit: int) -> str:
    """A text part decoded (transfer encoding and charset), at most `limit` characters."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw[:limit] if isinstance(raw, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload[: limit * 4].decode(charset, "replace")[:limit]
    except LookupError:
        return payload[: limit * 4].decode("utf-8", "replace")[:limit]


def embedded_headers(part: Message) -> Message | None:
    """The returned original's headers from a message/rfc822 or text/rfc822-headers part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        inner = next((p for p in payload if isinstance(p, Message)), None)
        return inner
    if isinstance(payload, str):
        return email.parser.HeaderParser(policy=email.policy.compat32).parsestr(
            text_of(part, MAX_REPORT_BYTES)
        )
    return None
