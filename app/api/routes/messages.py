"""/messages: transactional mail (single and batch), its status and timeline."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from app.api.deps import PathId, require
from app.api.pagination import Page, PageDep, make_page
from app.api.problems import problem
from app.api.schemas.common import Address
from app.api.schemas.messages import (
    BATCH_LIMIT,
    BatchResult,
    EventRead,
    MessageCreate,
    MessageRead,
    MessagesAccepted,
)
from app.core.errors import DomainError
from app.core.http import SessionDep, SettingsDep
from app.core.ratelimit import RateLimiter
from app.mail.identity import site_identity
from app.messages import idempotency, service
from app.messages.grouping import GroupStore, answer
from app.messages.handoff import GroupEnqueuer
from app.models import ApiKey, IdempotencyKey, Message, MessageStatus

router = APIRouter(prefix="/messages", tags=["messages"])
READ = [Depends(require("messages:read"))]
Writer = Annotated[ApiKey, Depends(require("messages:write"))]
IdempotencyHeader = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="Retry safely: same key and body, same answer."),
]
Work = Callable[[], Awaitable[tuple[int, dict[str, Any], list[int]]]]


async def rate_limited(request: Request, key: Writer) -> ApiKey:
    """429 with Retry-After when the key exceeds WARTA_API_RATE (GCRA in Redis)."""
    settings = request.app.state.settings
    limiter: RateLimiter | None = getattr(request.app.state, "api_limiter", None)
    if limiter is None:
        limiter = request.app.state.api_limiter = RateLimiter(request.app.state.queue)
    wait = await limiter.admit(f"api:{key.id}", settings.api_rate, settings.api_rate_burst)
    if wait > 0:
        raise HTTPException(
            429,
            f"this API key may make {settings.api_rate:g} requests a second here; retry later",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return key


Limited = Annotated[ApiKey, Depends(rate_limited)]


async def group_enqueuer(request: Request) -> GroupEnqueuer:
    """The app's enqueuer of stored messages (one per queue pool, made on first use)."""
    enqueuer: GroupEnqueuer | None = getattr(request.app.state, "message_enqueuer", None)
    if enqueuer is None or enqueuer.pool is not request.app.state.queue:
        enqueuer = request.app.state.message_enqueuer = GroupEnqueuer(request.app.state.queue)
    return enqueuer


Enqueuer = Annotated[GroupEnqueuer, Depends(group_enqueuer)]


async def group_store(request: Request, enqueuer: Enqueuer) -> GroupStore:
    """The app's group commit of single requests (one per enqueuer, made on first use)."""
    state = request.app.state
    store: GroupStore | None = getattr(state, "message_group_store", None)
    if store is None or store.enqueuer is not enqueuer:
        site = site_identity(state.settings)
        store = state.message_group_store = GroupStore(
            state.sessionmaker, state.settings, site, enqueuer
        )
    return store


Grouped = Annotated[GroupStore, Depends(group_store)]


async def _once(
    request: Request,
    session: SessionDep,
    enqueuer: GroupEnqueuer,
    key_id: int,
    idempotency_key: str | None,
    payload: Any,
    work: Work,
) -> JSONResponse:
    """Run `work` once per Idempotency-Key, commit, then enqueue what it stored.

    Claiming a used key rolls the session back, which expires loaded objects: callers pass
    plain ids, never ORM objects, past this point.
    """
    claimed: IdempotencyKey | None = None
    if idempotency_key is not None:
        idempotency.check_key(idempotency_key)
        if isinstance(payload, MessageCreate):
            payload = payload.model_dump(mode="json", by_alias=True)
        fingerprint = idempotency.request_hash(request.url.path, payload)
        ttl = request.app.state.settings.idempotency_ttl
        outcome = await idempotency.claim(session, key_id, idempotency_key, fingerprint, ttl)
        if isinstance(outcome, idempotency.Replay):
            return JSONResponse(
                outcome.body, outcome.status_code, headers={"Idempotent-Replayed": "true"}
            )
        claimed = outcome
    status, body, ids = await work()
    if claimed is not None:
        await idempotency.remember(session, claimed, status, body)
    await session.commit()
    await enqueuer.enqueue(ids)
    return JSONResponse(body, status)


@router.post("", status_code=202, response_model=MessagesAccepted)
async def send_message(
    body: MessageCreate,
    request: Request,
    settings: SettingsDep,
    key: Limited,
    enqueuer: Enqueuer,
    grouped: Grouped,
    idempotency_key: IdempotencyHeader = None,
) -> JSONResponse:
    """Send to one address or a list (one message each); 202 once stored and queued."""
    site = site_identity(settings)
    key_id = key.id
    sessionmaker = request.app.state.sessionmaker
    claim: idempotency.Claim | None = None
    if idempotency_key is not None:
        idempotency.check_key(idempotency_key)
        payload = body.model_dump(mode="json", by_alias=True)
        fingerprint = idempotency.request_hash(request.url.path, payload)
        claim = idempotency.Claim(key_id, idempotency_key, fingerprint)
    prepared: service.Prepared | None = None
    try:
        if body.template_id is None:  # no session at all: the group has its own
            prepared = await service.prepare(None, settings, site, body)
        else:  # the template's session is handed back before the group works
            async with sessionmaker() as session:
                prepared = await service.prepare(session, settings, site, body)
    except Exception:
        if claim is None:
            raise
        # Settled alone below: a key used before answers first (a replay, a 422), as always.
    if prepared is not None:
        rows = (
            await grouped.submit(key_id, prepared)
            if claim is None
            else await grouped.submit_once(claim, prepared)
        )
        if rows is not None:
            return JSONResponse(answer(rows), 202)

    # The key has a row already (answered, in progress, expired), or the request did not
    # prepare: one transaction of its own, claiming the key first.
    async def work() -> tuple[int, dict[str, Any], list[int]]:
        ready = prepared or await service.prepare(session, settings, site, body)
        (rows,) = await service.store(session, settings, site, key_id, [ready])
        return 202, answer(rows), service.to_send(rows)

    async with sessionmaker() as session:
        return await _once(request, session, enqueuer, key_id, idempotency_key, body, work)


@router.post("/batch", response_model=BatchResult)
async def send_batch(
    items: Annotated[list[dict[str, Any]], Body()],
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    key: Limited,
    enqueuer: Enqueuer,
    idempotency_key: IdempotencyHeader = None,
) -> JSONResponse:
    """Up to 500 messages; one result per item, a bad item does not fail the others."""
    if len(items) > BATCH_LIMIT:
        return problem(
            422, "Invalid request", f"a batch holds at most {BATCH_LIMIT} messages",
            instance=request.url.path,
        )  # fmt: skip
    site = site_identity(settings)
    key_id = key.id

    async def work() -> tuple[int, dict[str, Any], list[int]]:
        results: list[dict[str, Any]] = [{} for _ in items]
        good: list[tuple[int, service.Prepared]] = []
        for index, item in enumerate(items):
            try:
                parsed = MessageCreate.model_validate(item)
                good.append(
                    (
                        index,
                        await service.prepare(session, settings, site, parsed, dry_build=True),
                    )
                )
            except ValidationError as exc:
                results[index] = _item_error(index, 422, "Invalid request", exc)
            except DomainError as exc:
                results[index] = {"index": index, "status": exc.status, "messages": [],
                                  "error": service.problem_of(exc)}  # fmt: skip
        stored = await service.store(session, settings, site, key_id, [p for _, p in good])
        ids: list[int] = []
        for (index, _), rows in zip(good, stored, strict=True):
            results[index] = {"index": index, "status": 202, "messages": service.accepted(rows)}
            ids += service.to_send(rows)
        return 200, {"results": results}, ids

    return await _once(request, session, enqueuer, key_id, idempotency_key, items, work)


def _item_error(index: int, status: int, title: str, exc: ValidationError) -> dict[str, Any]:
    errors = [
        {
            "loc": [_escaped(str(p)) for p in err["loc"]],
            "msg": _escaped(err["msg"]),
            "type": err["type"],
        }
        for err in exc.errors(include_url=False, include_input=False)
    ]
    detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:5])
    return {
        "index": index,
        "status": status,
        "messages": [],
        "error": {"status": status, "title": title, "detail": detail, "errors": errors},
    }


def _escaped(text: str) -> str:
    """Text from the request (an unknown key) made safe to store as JSON, escaped visibly
    (`\\udcfc`, `\\x00`) so the client sees what it sent: no NUL, no lone surrogates, which
    PostgreSQL refuses and which the answer is stored in for replays."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _read(row: Message, events: list[EventRead] | None = None) -> MessageRead:
    return MessageRead(
        id=row.id,
        stream=row.stream,
        status=row.status,
        from_email=row.from_email,
        to_email=row.to_email,
        subject=row.subject,
        tags=[tag for tag in row.tags.split(",") if tag],
        metadata=row.meta,
        attempts=row.attempts,
        last_reply=row.last_reply,
        created_at=row.created_at,
        sent_at=row.sent_at,
        updated_at=row.updated_at,
        events=events,
    )


@router.get("/{message_id}", dependencies=READ)
async def get_message(message_id: PathId, session: SessionDep) -> MessageRead:
    """A message's status and its timeline (queued, sent, delivered, bounced, opened, …)."""
    row = await service.get(session, message_id)
    events = [EventRead.model_validate(e) for e in await service.timeline(session, row.id)]
    return _read(row, events)


@router.get("", dependencies=READ)
async def list_messages(
    session: SessionDep,
    page: PageDep,
    to: Annotated[Address | None, Query()] = None,
    status: MessageStatus | None = None,
    tag: Annotated[str | None, Query(max_length=64)] = None,
) -> Page[MessageRead]:
    """Messages, oldest first, optionally by recipient, status or tag."""
    found = await service.page(session, page.after_id, page.limit, to, status, tag)
    return make_page([_read(row) for row in found], [row.id for row in found], page.limit)
