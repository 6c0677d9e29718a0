"""A transactional message's content: Jinja in the campaign sandbox, MIME by the fast builder."""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import parseaddr
from functools import lru_cache
from typing import Any

from jinja2 import Template, TemplateSyntaxError

from app.core.errors import Invalid, TooLarge
from app.mail import identity
from app.mail.identity import Kind, SiteIdentity, mailbox
from app.mail.mime import Address, OutgoingMessage, build_message
from app.mail.rendering import html_to_text, replace_line_breaks
from app.mail.sandbox import environment

UNSUBSCRIBE_PURPOSE = "unsubscribe-broadcast"


@dataclass(frozen=True, slots=True)
class Content:
    """Jinja sources of one request (inline or from a stored template)."""

    subject: str
    html: str
    text: str


@dataclass(frozen=True, slots=True)
class Rendered:
    """One recipient's subject and bodies."""

    subject: str
    html: str | None
    text: str


@dataclass(frozen=True, slots=True)
class FileAttachment:
    """A decoded attachment."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Envelope:
    """Everything but the row id that a message's bytes are built from."""

    sender: str
    recipient: str
    reply_to: str | None
    headers: dict[str, str]
    attachments: tuple[FileAttachment, ...]
    broadcast: bool
    feedback_id: str


@lru_cache(maxsize=512)
def _compiled(source: str, part: str, html: bool) -> Template:
    """Compile once per distinct source: an application sends the same template again and again."""
    try:
        return environment(html).from_string(source)
    except TemplateSyntaxError as exc:
        raise Invalid(f"template error in {part}: line {exc.lineno}: {exc.message}") from None


def compile_content(content: Content) -> None:
    """Compile every part now, so a syntax error is a 422 before anything is stored."""
    _compiled(content.subject, "subject", False)
    if content.html.strip():
        _compiled(content.html, "html", True)
    if content.text.strip():
        _compiled(content.text, "text", False)


def _render(source: str, part: str, html: bool, context: dict[str, Any], cap: int) -> str:
    template = _compiled(source, part, html)
    chunks: list[str] = []
    size = 0
    try:
        for chunk in template.generate(context):
            size += len(chunk)
            if size > cap:
                raise TooLarge(f"{part}: the rendered output exceeds {cap} characters")
            chunks.append(chunk)
    except (Invalid, TooLarge):
        raise
    except Exception as exc:  # undefined names, sandbox refusals, template runtime errors
        raise Invalid(f"{part} does not render: {type(exc).__name__}: {exc}") from None
    return "".join(chunks)


def render(content: Content, data: dict[str, Any], to: str, cap: int) -> Rendered:
    """Render subject, HTML and text for one recipient; `data` keys are top-level names too."""
    name, address = parseaddr(to)
    context = {**data, "data": data, "to": {"email": address, "name": name}}
    subject = replace_line_breaks(_render(content.subject, "subject", False, context, 998 * 4))
    html = _render(content.html, "html", True, context, cap) if content.html.strip() else None
    if content.text.strip():
        text = _render(content.text, "text", False, context, cap)
    else:
        text = html_to_text(html or "")
    return Rendered(subject, html, text)


def decode_attachments(raw: list[tuple[str, str, str]], limit: int) -> tuple[FileAttachment, ...]:
    """Decode (filename, content type, base64) triples; bad base64 is 422, too many bytes 413."""
    files = []
    total = 0
    for index, (filename, content_type, content) in enumerate(raw):
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise Invalid(f"attachments[{index}].content is not valid base64") from None
        total += len(data)
        if total > limit:
            raise TooLarge(f"attachments exceed {limit} bytes in total")
        files.append(FileAttachment(filename, content_type, data))
    return tuple(files)


def unsubscribe_url(site: SiteIdentity, message_id: int) -> str:
    """The one-click unsubscribe link of a broadcast-stream message."""
    token = identity.link_token(site.secret, UNSUBSCRIBE_PURPOSE, message_id)
    return f"{site.public_url}/u/m/{token}"


def build(site: SiteIdentity, row_id: int, envelope: Envelope, rendered: Rendered) -> bytes:
    """The message's bytes: Message-ID and (broadcast) List-Unsubscribe derived from the row."""
    name, address = parseaddr(envelope.recipient)
    broadcast = envelope.broadcast
    data = build_message(
        OutgoingMessage(
            sender=mailbox(envelope.sender),
            recipient=Address(email=address, name=name),
            subject=rendered.subject,
            message_id=identity.message_id(site.secret, row_id, site.hostname, Kind.MESSAGE),
            text=rendered.text,
            html=rendered.html,
            reply_to=mailbox(envelope.reply_to) if envelope.reply_to else None,
            unsubscribe_url=unsubscribe_url(site, row_id) if broadcast else None,
            one_click_unsubscribe=broadcast,
            feedback_id=envelope.feedback_id,
            extra_headers=envelope.headers,
        )
    )
    if not envelope.attachments:
        return data
    return _with_attachments(data, envelope.attachments)


def _with_attachments(data: bytes, files: tuple[FileAttachment, ...]) -> bytes:
    """Wrap the built message in multipart/mixed with the files (the stdlib does MIME here)."""
    message = email.message_from_bytes(data, policy=email.policy.SMTP)
    assert isinstance(message, EmailMessage)
    for item in files:
        maintype, _, subtype = item.content_type.partition("/")
        message.add_attachment(
            item.data, maintype=maintype, subtype=subtype, filename=item.filename
        )
    return message.as_bytes()


def check_buildable(site: SiteIdentity, envelope: Envelope, rendered: Rendered) -> None:
    """Build once with a stand-in id, so a bad address or header is a 422 before anything is stored."""
    try:
        build(site, 1, envelope, rendered)
    except ValueError as exc:
        raise Invalid(f"the message cannot be built: {exc}") from None
