"""What is transactional about a message's content: the request's data as the template
context, attachments, and the headers a message row derives (Message-ID, List-Unsubscribe).

Compiling, rendering and building the MIME go through the same `app.mail` functions as
campaign mail (`app.mail.rendering`, `app.mail.mime`).
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import threading
from collections import OrderedDict
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any

from app.core.errors import Invalid, TooLarge
from app.mail import identity
from app.mail.identity import Kind, SiteIdentity, mailbox
from app.mail.mime import Address, OutgoingMessage, build_message
from app.mail.rendering import (
    CompiledParts,
    OutputTooLarge,
    RenderedMessage,
    RenderError,
    compile_parts,
    render_parts,
    render_subject,
)
from app.mail.reply_address import ReplyTarget, reply_address
from app.mail.sandbox import TemplateError

UNSUBSCRIBE_PURPOSE = "unsubscribe-broadcast"
SUBJECT_LIMIT = 998 * 4  # characters a rendered subject may have: a few header lines' worth


@dataclass(frozen=True, slots=True)
class Content:
    """Jinja sources of one request (inline or from a stored template)."""

    subject: str
    html: str
    text: str


@dataclass(frozen=True, slots=True)
class FileAttachment:
    """A decoded attachment."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class MessageFrame:
    """What surrounds the rendered content of a message: its addresses, headers, attachments
    and stream (everything but the row id and the content that its bytes are built from)."""

    sender: str
    recipient: str
    reply_to: str | None
    headers: dict[str, str]
    attachments: tuple[FileAttachment, ...]
    broadcast: bool
    feedback_id: str
    track_replies: bool = False
    """Reply-To a signed reply address naming this message (WARTA_INBOUND_REPLY_STREAMS)."""


COMPILED_CACHE_SIZE = 512
_compiled: OrderedDict[Content, CompiledParts] = OrderedDict()
"""Compiled parts by content, least recently used first: an application sends the same
template again and again, so most requests find theirs here (and skip a thread hop)."""
_compiled_lock = threading.Lock()  # compiling runs in the render threads


def compiled_if_cached(content: Content) -> CompiledParts | None:
    """The parts of content compiled before, or None (a cheap look-up, on the event loop)."""
    with _compiled_lock:
        parts = _compiled.get(content)
        if parts is not None:
            _compiled.move_to_end(content)
        return parts


def compile_content(content: Content) -> CompiledParts:
    """The compiled parts; a syntax error is a 422 before anything is stored."""
    parts = compiled_if_cached(content)
    if parts is not None:
        return parts
    try:
        parts = compile_parts(content.subject, content.html, content.text)
    except TemplateError as exc:
        raise Invalid(f"template error in {exc}") from None
    with _compiled_lock:
        _compiled[content] = parts
        while len(_compiled) > COMPILED_CACHE_SIZE:
            _compiled.popitem(last=False)
    return parts


def render(parts: CompiledParts, data: dict[str, Any], to: str, cap: int) -> RenderedMessage:
    """Render subject, HTML and text for one recipient; `data` keys are top-level names too."""
    name, address = parseaddr(to)
    context = {**data, "data": data, "to": {"email": address, "name": name}}
    try:
        subject = render_subject(parts, context, SUBJECT_LIMIT)
        return render_parts(parts, context, subject, cap)
    except OutputTooLarge as exc:
        raise TooLarge(f"{exc.part}: the rendered {exc.message}") from None
    except RenderError as exc:  # undefined names, sandbox refusals, template runtime errors
        raise Invalid(f"{exc.part} does not render: {exc.message}") from None


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


def build(site: SiteIdentity, row_id: int, frame: MessageFrame, rendered: RenderedMessage) -> bytes:
    """The message's bytes: Message-ID and (broadcast) List-Unsubscribe derived from the row."""
    name, address = parseaddr(frame.recipient)
    broadcast = frame.broadcast
    data = build_message(
        OutgoingMessage(
            sender=mailbox(frame.sender),
            recipient=Address(email=address, name=name),
            subject=rendered.subject,
            message_id=identity.message_id(site.secret, row_id, site.hostname, Kind.MESSAGE),
            text=rendered.text,
            html=rendered.html,
            reply_to=_reply_to(site, row_id, frame),
            unsubscribe_url=unsubscribe_url(site, row_id) if broadcast else None,
            one_click_unsubscribe=broadcast,
            feedback_id=frame.feedback_id,
            extra_headers=frame.headers,
        )
    )
    if not frame.attachments:
        return data
    return _with_attachments(data, frame.attachments)


def _reply_to(site: SiteIdentity, row_id: int, frame: MessageFrame) -> Address | None:
    given = mailbox(frame.reply_to) if frame.reply_to else None
    if not frame.track_replies:
        return given
    address = reply_address(
        site.secret, site.inbound_domain or site.bounce_domain, ReplyTarget(message_id=row_id)
    )
    return Address(email=address, name=(given or mailbox(frame.sender)).name)


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


def check_buildable(site: SiteIdentity, frame: MessageFrame, rendered: RenderedMessage) -> None:
    """Build once with a stand-in id, so a bad address or header is a 422 before anything is stored."""
    try:
        build(site, 1, frame, rendered)
    except ValueError as exc:
        raise Invalid(f"the message cannot be built: {exc}") from None
