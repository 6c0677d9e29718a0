"""Transactional messages: accept a request, store one row per recipient, read them back."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.audience import suppression_scopes as suppression_rows
from app.core.errors import DomainError, Invalid, NotFound
from app.core.events import NewEvent, record_events
from app.core.settings import Settings
from app.mail import identity, templates
from app.mail.budget import MAX_COMPILE_SECONDS, run_off_loop
from app.mail.identity import SiteIdentity
from app.mail.recording import Delivery, LedgerRow
from app.mail.rendering import CompiledParts, RenderedMessage
from app.messages import content, repository
from app.models import (
    Event,
    EventKind,
    Message,
    MessageStatus,
    MessageStream,
    Suppression,
    SuppressionScope,
    utcnow,
)
from app.safety import malware


class FileSpec(Protocol):
    """An attachment as the request gives it."""

    @property
    def filename(self) -> str: ...
    @property
    def content_type(self) -> str: ...
    @property
    def content(self) -> str: ...


class MessageRequest(Protocol):
    """What the service reads from a validated request (the API's MessageRequest)."""

    @property
    def from_(self) -> str: ...
    @property
    def reply_to(self) -> str | None: ...
    @property
    def subject(self) -> str | None: ...
    @property
    def template_id(self) -> int | None: ...
    @property
    def data(self) -> dict[str, Any]: ...
    @property
    def html(self) -> str | None: ...
    @property
    def text(self) -> str | None: ...
    @property
    def headers(self) -> dict[str, str]: ...
    @property
    def attachments(self) -> Sequence[FileSpec]: ...
    @property
    def tags(self) -> list[str]: ...
    @property
    def metadata(self) -> dict[str, Any]: ...
    @property
    def stream(self) -> MessageStream: ...

    def recipients(self) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Prepared:
    """A validated, rendered request, ready to be stored."""

    request: MessageRequest
    frame: content.MessageFrame
    recipients: list[tuple[str, str, RenderedMessage]]
    """(mailbox as given, normalised address, rendered content)"""


async def prepare(
    session: AsyncSession | None,
    settings: Settings,
    site: SiteIdentity,
    request: MessageRequest,
    *,
    dry_build: bool = False,
) -> Prepared:
    """Load the template and render for every recipient: any problem raises.

    `session` is needed only for a request naming a stored template (None otherwise).

    With `dry_build`, also build the first message with a stand-in id, so that a bad address
    or header fails this request alone (a batch item) rather than `store`, which fails all.
    """
    source = await _content(session, request)
    parts = content.compiled_if_cached(source) or await run_off_loop(
        content.compile_content, source, seconds=MAX_COMPILE_SECONDS
    )
    files = content.decode_attachments(
        [(a.filename, a.content_type, a.content) for a in request.attachments],
        settings.message_max_attachment_bytes,
    )
    await malware.check_attachments(settings, files)
    tag = request.tags[0] if request.tags else "api"
    frame = content.MessageFrame(
        sender=request.from_,
        recipient="",
        reply_to=request.reply_to,
        headers=dict(request.headers),
        attachments=files,
        broadcast=request.stream == MessageStream.broadcast,
        feedback_id=f"{tag}:{request.stream.value}:warta",
        track_replies=request.stream.value in settings.reply_streams(),
    )
    # Off the event loop, within one render budget: a template bomb delays nobody else.
    recipients = await run_off_loop(
        _render_all, parts, request.data, request.recipients(), settings.message_max_bytes
    )
    if dry_build:
        first = recipients[0]
        content.check_buildable(
            site, dataclasses.replace(frame, recipient=first[0], attachments=()), first[2]
        )
    return Prepared(request, frame, recipients)


def _render_all(
    parts: CompiledParts, data: dict[str, Any], mailboxes: list[str], cap: int
) -> list[tuple[str, str, RenderedMessage]]:
    return [
        (mailbox, _address(mailbox), content.render(parts, data, mailbox, cap))
        for mailbox in mailboxes
    ]


def _address(mailbox: str) -> str:
    return mailbox.rpartition("<")[2].rstrip(">") if "<" in mailbox else mailbox


async def _content(session: AsyncSession | None, request: MessageRequest) -> content.Content:
    if request.template_id is None:
        return content.Content(request.subject or "", request.html or "", request.text or "")
    assert session is not None, "a stored template is read in a session"
    # The session's identity map keeps a template loaded once for the rest of a batch.
    template = await templates.get_or_invalid(session, request.template_id)
    subject = request.subject if request.subject is not None else template.subject
    return content.Content(subject, template.html, template.text)


@dataclass(frozen=True, slots=True)
class Stored:
    """A message row a request created: what the answer and the enqueue need of it."""

    id: int
    to_email: str
    status: MessageStatus


SUPPRESSED_AT_SUBMIT = "suppressed: the address is on the suppression list"


async def store(
    session: AsyncSession,
    settings: Settings,
    site: SiteIdentity,
    api_key_id: int | None,
    prepared: list[Prepared],
) -> list[list[Stored]]:
    """Insert the rows (suppressed recipients as `suppressed`), build each MIME, record events."""
    return await store_many(session, settings, site, [(api_key_id, item) for item in prepared])


async def store_many(
    session: AsyncSession,
    settings: Settings,
    site: SiteIdentity,
    submitted: list[tuple[int | None, Prepared]],
) -> list[list[Stored]]:
    """`store` for requests of several API keys ((key id, request) pairs), in one go.

    Core statements, no ORM objects: one multi-row INSERT … RETURNING for the rows, one
    executemany UPDATE for the MIME (its Message-ID is derived from the row id) and one for
    the events, whatever the number of recipients.
    """
    prepared = [item for _, item in submitted]
    addresses = {address for item in prepared for _, address, _ in item.recipients}
    suppressed = await suppression_rows.scopes_for(session, addresses)
    now = utcnow()
    values: list[dict[str, Any]] = []
    for api_key_id, item in submitted:
        request = item.request
        scopes = {SuppressionScope.all.value, request.stream.value}
        tags = "," + ",".join(request.tags) + "," if request.tags else ""
        for _, address, rendered in item.recipients:
            blocked = bool(suppressed.get(address, set()) & scopes)
            values.append(
                {
                    "stream": request.stream,
                    "status": MessageStatus.suppressed if blocked else MessageStatus.queued,
                    "api_key_id": api_key_id,
                    "from_email": request.from_,
                    "to_email": address,
                    "subject": rendered.subject[:998],
                    "tags": tags,
                    "meta": request.metadata,
                    "mime": b"",
                    "attempts": 0,
                    "last_reply": SUPPRESSED_AT_SUBMIT if blocked else "",
                    "created_at": now,
                    "updated_at": now,
                }
            )
    if not values:
        return [[] for _ in prepared]
    # PostgreSQL: the ids first (one nextval query), so each row is inserted once with its
    # MIME (the Message-ID is derived from the id). Elsewhere: insert, then store the MIME.
    ids = await repository.allocate_ids(session, len(values))
    inserted = ids is not None
    if ids is None:
        ids = await repository.insert(session, values)
    rows: list[list[Stored]] = []
    built: list[dict[str, Any]] = []
    events: list[NewEvent] = []
    position = 0
    for item in prepared:
        group: list[Stored] = []
        data = {"stream": item.request.stream.value, "tags": item.request.tags}
        for mailbox, address, rendered in item.recipients:
            row_id, status = ids[position], values[position]["status"]
            position += 1
            if status == MessageStatus.suppressed:
                events.append(NewEvent(EventKind.suppressed, address, message_id=row_id, data=data))
                group.append(Stored(row_id, address, status))
                continue
            frame = dataclasses.replace(item.frame, recipient=mailbox)
            try:
                mime = content.build(site, row_id, frame, rendered)
            except ValueError as exc:
                raise Invalid(f"the message cannot be built: {exc}") from None
            if len(mime) > settings.message_max_bytes:
                status, reply, mime = MessageStatus.failed, _too_large(len(mime), settings), b""
                events.append(NewEvent(EventKind.failed, address, message_id=row_id, data=data))
            else:
                reply = ""
                events.append(NewEvent(EventKind.queued, address, message_id=row_id, data=data))
            built.append({"b_id": row_id, "b_status": status, "b_reply": reply, "b_mime": mime})
            group.append(Stored(row_id, address, status))
        rows.append(group)
    if inserted:
        await repository.insert_with_ids(session, values, ids, built)
    else:
        await repository.set_built(session, built)
    await record_events(session, events)
    return rows


def _too_large(size: int, settings: Settings) -> str:
    return f"not sent: the message is {size} bytes, over the limit of {settings.message_max_bytes}"


async def get(session: AsyncSession, message_id: int) -> Message:
    """The message, or NotFound."""
    found = await session.get(Message, message_id)
    if found is None:
        raise NotFound(f"message {message_id} does not exist")
    return found


async def page(
    session: AsyncSession,
    after_id: int,
    limit: int,
    to: str | None,
    status: MessageStatus | None,
    tag: str | None,
) -> list[Message]:
    """Up to `limit + 1` messages after `after_id`, filtered."""
    query = sa.select(Message).where(Message.id > after_id)
    if to:
        query = query.where(Message.to_email == to)
    if status is not None:
        query = query.where(Message.status == status)
    if tag:
        query = query.where(Message.tags.contains(f",{tag},", autoescape=True))
    query = query.order_by(Message.id).limit(limit + 1)
    return list((await session.scalars(query)).all())


def problem_of(exc: DomainError) -> dict[str, object]:
    """A batch item's problem document."""
    return {"status": exc.status, "title": exc.title, "detail": exc.detail}


def accepted(rows: list[Stored]) -> list[dict[str, object]]:
    """The answer's entry for each stored message."""
    return [{"id": row.id, "to": row.to_email, "status": row.status.value} for row in rows]


def to_send(rows: list[Stored]) -> list[int]:
    """The ids a worker has to send (not suppressed, not failed)."""
    return [row.id for row in rows if row.status == MessageStatus.queued]


async def by_unsubscribe_token(
    session: AsyncSession, settings: Settings, token: str
) -> Message | None:
    """The broadcast message a genuine unsubscribe token names; None for anything else."""
    parts = identity.read_link_token(
        settings.effective_secret_key(), content.UNSUBSCRIBE_PURPOSE, token
    )
    if parts is None or len(parts) != 1:
        return None
    return await session.get(Message, parts[0])


async def unsubscribe_broadcast(session: AsyncSession, message: Message) -> None:
    """Suppress the recipient for broadcast mail and record the unsubscription once."""
    scopes = (await suppression_rows.scopes_for(session, [message.to_email])).get(
        message.to_email, set()
    )
    if scopes & {SuppressionScope.all.value, SuppressionScope.broadcast.value}:
        return  # already blocked, perhaps only by the hash an erasure left: add nothing
    existing = await session.scalar(
        sa.select(Suppression).where(Suppression.address == message.to_email)
    )
    if existing is not None:
        if existing.scope == SuppressionScope.transactional:
            existing.scope = SuppressionScope.all  # now blocked for both streams
            await session.flush()
        return
    session.add(
        Suppression(
            address=message.to_email,
            reason=f"one-click unsubscribe from message {message.id}",
            source="unsubscribe",
            scope=SuppressionScope.broadcast,
        )
    )
    await record_events(
        session,
        [
            NewEvent(
                EventKind.unsubscribed,
                message.to_email,
                message_id=message.id,
                data={"stream": message.stream.value},
            )
        ],
    )
    await session.flush()


async def timeline(session: AsyncSession, message_id: int) -> list[Event]:
    """What happened to one message, oldest first."""
    return await repository.timeline(session, message_id)


async def ledger_rows(session: AsyncSession, ids: Sequence[int]) -> dict[int, LedgerRow]:
    """Messages by id, as the rows a report or a delivery names."""
    return await repository.ledger_rows(session, ids)


async def lock_rows(session: AsyncSession, ids: Sequence[int]) -> None:
    """Lock messages in id order, before several statements write them."""
    await repository.lock_rows(session, ids)


async def record_delivery(
    session: AsyncSession, deliveries: Sequence[Delivery], *, events: bool = True
) -> None:
    """Record the MTA's or a report's word on messages (see `repository.record_delivery`)."""
    await repository.record_delivery(session, deliveries, events=events)
