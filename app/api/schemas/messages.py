"""Transactional message schemas: what a request may carry, and what the API answers."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from app.api.schemas.common import Attributes, Body, DbId, Mailbox, ReadModel
from app.core.text import require_single_line
from app.mail.mime import RESERVED_HEADERS
from app.models import MessageStatus, MessageStream

MAX_RECIPIENTS = 50
MAX_HEADERS = 30
MAX_ATTACHMENTS = 20
MAX_TAGS = 10
BATCH_LIMIT = 500

# Headers Warta writes or that only a transport may add; a request cannot set them.
OWNED_HEADERS = RESERVED_HEADERS | frozenset(
    {
        "received", "dkim-signature", "arc-seal", "arc-message-signature",
        "arc-authentication-results", "authentication-results", "content-disposition",
        "content-id", "delivered-to", "resent-from", "resent-to", "resent-date",
        "resent-message-id", "resent-sender", "resent-cc", "resent-bcc",
    }
)  # fmt: skip
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")
_TAG = re.compile(r"[A-Za-z0-9_.:@/+-]{1,64}")
_FILENAME_FORBIDDEN = re.compile(r'[\x00-\x1f\x7f/\\"]')
_MIME_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}"
)


def _tag(value: str) -> str:
    if not _TAG.fullmatch(value):
        raise ValueError("a tag is 1-64 characters of letters, digits and _ . : @ / + -")
    return value


def _headers(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_HEADERS:
        raise ValueError(f"at most {MAX_HEADERS} custom headers")
    seen: set[str] = set()
    for name, text in value.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"header name {name[:80]!r} is not an RFC 5322 field name")
        lowered = name.lower()
        if lowered in OWNED_HEADERS or lowered.startswith("x-warta-"):
            raise ValueError(f"header {name!r} is set by Warta and cannot be overridden")
        if lowered in seen:
            raise ValueError(f"header {name!r} is given twice")
        seen.add(lowered)
        require_single_line(text)
        if len(text) > 998:
            raise ValueError(f"header {name!r} is longer than 998 characters")
    return value


def _filename(value: str) -> str:
    if _FILENAME_FORBIDDEN.search(value):
        raise ValueError("a file name may not contain control characters, quotes or slashes")
    return value


def _mime_type(value: str) -> str:
    if not _MIME_TYPE.fullmatch(value):
        raise ValueError("must be a MIME type such as application/pdf")
    return value.lower()


Tag = Annotated[str, AfterValidator(_tag)]
Headers = Annotated[dict[str, str], AfterValidator(_headers)]
TemplateSource = Annotated[str, StringConstraints(max_length=998)]


class Attachment(BaseModel):
    """A file: its name, MIME type and content in base64."""

    model_config = ConfigDict(extra="forbid")

    filename: Annotated[
        str, StringConstraints(min_length=1, max_length=255), AfterValidator(_filename)
    ]
    content_type: Annotated[str, AfterValidator(_mime_type)] = "application/octet-stream"
    content: Annotated[str, StringConstraints(max_length=30_000_000)]


class MessageCreate(BaseModel):
    """One request: the same content to one or several recipients, each its own message."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: Mailbox = Field(alias="from")
    to: Mailbox | Annotated[list[Mailbox], Field(min_length=1, max_length=MAX_RECIPIENTS)]
    reply_to: Mailbox | None = None
    subject: TemplateSource | None = None
    template_id: DbId | None = None
    data: Attributes = Field(default_factory=dict)
    html: Body | None = None
    text: Body | None = None
    headers: Headers = Field(default_factory=dict)
    attachments: Annotated[list[Attachment], Field(max_length=MAX_ATTACHMENTS)] = Field(
        default_factory=list
    )
    tags: Annotated[list[Tag], Field(max_length=MAX_TAGS)] = Field(default_factory=list)
    metadata: Attributes = Field(default_factory=dict)
    stream: MessageStream = MessageStream.transactional

    @model_validator(mode="after")
    def _content(self) -> MessageCreate:
        if self.template_id is not None:
            if self.html is not None or self.text is not None:
                raise ValueError("give either template_id or inline html/text, not both")
        else:
            if not (self.html or "").strip() and not (self.text or "").strip():
                raise ValueError("a message needs template_id, html or text")
            if self.subject is None:
                raise ValueError("subject is required without a template")
        return self

    def recipients(self) -> list[str]:
        """`to` as a list."""
        return [self.to] if isinstance(self.to, str) else list(self.to)


class MessageAccepted(BaseModel):
    """One message a request created."""

    id: int
    to: str
    status: MessageStatus


class MessagesAccepted(BaseModel):
    """The messages a request created (one per recipient)."""

    messages: list[MessageAccepted]


class BatchItemResult(BaseModel):
    """What became of one item of a batch: its messages, or the problem with it."""

    index: int
    status: int
    messages: list[MessageAccepted] = Field(default_factory=list)
    error: dict[str, Any] | None = None


class BatchResult(BaseModel):
    """One result per item, in request order."""

    results: list[BatchItemResult]


class EventRead(ReadModel):
    """One fact in a message's timeline."""

    id: int
    kind: str
    created_at: datetime
    data: dict[str, Any]


class MessageRead(ReadModel):
    """A message, where it stands, and (on GET by id) its timeline."""

    id: int
    stream: MessageStream
    status: MessageStatus
    from_email: str
    to_email: str
    subject: str
    tags: list[str]
    metadata: dict[str, Any]
    attempts: int
    last_reply: str
    created_at: datetime
    sent_at: datetime | None
    updated_at: datetime
    events: list[EventRead] | None = None
