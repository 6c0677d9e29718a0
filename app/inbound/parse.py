"""Reading one stored inbound message: the MTA's trace lines, the headers, the text and HTML
parts and the attachments. Pure functions, no I/O."""

from __future__ import annotations

import email
import email.policy
import hashlib
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.message import Message

TRACE_NAMES = (b"return-path:", b"x-warta-rcpt-to:", b"x-warta-client:")
"""The lines the MTA's inbound store writes in front of the message, in this order."""
MAX_PART_CHARS = 1_000_000
"""Text and HTML kept per message; the raw message keeps everything."""
MAX_HEADER_CHARS = 998


@dataclass(frozen=True)
class Trace:
    """The SMTP envelope and client as the listener recorded them."""

    mail_from: str = ""
    recipients: tuple[str, ...] = ()
    client_ip: str = ""
    helo: str = ""


@dataclass(frozen=True)
class Attachment:
    """One attached file."""

    filename: str
    content_type: str
    content: bytes

    @property
    def sha256(self) -> str:
        """The content's SHA-256, hex."""
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class Parsed:
    """What the inbound store keeps of a message besides its raw bytes."""

    trace: Trace
    message: bytes
    """The message as the client sent it (trace lines removed)."""
    headers: list[tuple[str, str]]
    from_header: str
    subject: str
    message_id: str
    text: str
    html: str
    attachments: list[Attachment] = field(default_factory=list)
    auto_submitted: bool = False


def split_trace(data: bytes) -> tuple[Trace, bytes]:
    """The trace lines at the very start of `data`, and the message after them."""
    values: dict[bytes, str] = {}
    position = 0
    while True:
        end = data.find(b"\r\n", position)
        if end < 0:
            break
        line = data[position:end]
        name = next((n for n in TRACE_NAMES if line[: len(n)].lower() == n), None)
        if name is None or name in values:
            break
        values[name] = line[len(name) :].strip().decode("utf-8", "replace")
        position = end + 2
    recipients = tuple(
        item.strip() for item in values.get(b"x-warta-rcpt-to:", "").split(",") if item.strip()
    )
    client = dict(
        part.strip().partition("=")[::2] for part in values.get(b"x-warta-client:", "").split(";")
    )
    trace = Trace(
        mail_from=values.get(b"return-path:", "").strip("<>"),
        recipients=recipients,
        client_ip=client.get("ip", ""),
        helo=client.get("helo", ""),
    )
    return trace, data[position:]


def _text(part: Message) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # a damaged transfer encoding: keep what can be read
        payload = None
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        text = payload.decode(charset, "replace")
    except LookupError:
        text = payload.decode("utf-8", "replace")
    # Line ends as a reader's program expects them; the raw message keeps CRLF.
    return text.replace("\r\n", "\n")[:MAX_PART_CHARS]


def decoded(value: str) -> str:
    """A header value with its RFC 2047 encoded words decoded, unfolded to one line."""
    value = value.replace("\r\n", "").replace("\n", "")
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (HeaderParseError, LookupError, UnicodeError, ValueError):
        return value  # undecodable: kept as sent, the raw message has it too


def _header(message: Message, name: str) -> str:
    value = message.get(name)
    return decoded(str(value))[:MAX_HEADER_CHARS] if value is not None else ""


def parse(data: bytes) -> Parsed:
    """Trace, headers, first text and HTML bodies, and attachments of a stored message."""
    trace, body = split_trace(data)
    # compat32: the fast parser; headers are decoded here, only those that are shown.
    message = email.message_from_bytes(body, policy=email.policy.compat32)
    headers = [(name, decoded(str(value))[:MAX_HEADER_CHARS]) for name, value in message.items()]
    text = html = ""
    attachments: list[Attachment] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        disposition = part.get_content_disposition()
        content_type = part.get_content_type()
        if (
            disposition == "attachment"
            or (disposition == "inline" and part.get_filename())
            or content_type not in ("text/plain", "text/html")
        ):
            payload = part.get_payload(decode=True)
            attachments.append(
                Attachment(
                    filename=decoded(part.get_filename() or "")[:255],
                    content_type=content_type[:255],
                    content=payload if isinstance(payload, bytes) else b"",
                )
            )
        elif content_type == "text/plain" and not text:
            text = _text(part)
        elif content_type == "text/html" and not html:
            html = _text(part)
    auto = _header(message, "Auto-Submitted").lower()
    return Parsed(
        trace=trace,
        message=body,
        headers=headers,
        from_header=_header(message, "From"),
        subject=_header(message, "Subject"),
        message_id=_header(message, "Message-ID"),
        text=text,
        html=html,
        attachments=attachments,
        auto_submitted=bool(auto) and auto != "no",
    )
