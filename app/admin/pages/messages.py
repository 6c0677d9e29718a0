"""Transactional messages: search by recipient, status and tag, and each message's status
timeline, through `app.messages.service` as the API's GET /messages and /messages/{id}."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from fastapi.responses import HTMLResponse

from app.admin.deps import CurrentAdmin, needs, page_router
from app.admin.pages.forms import DbId
from app.admin.rendering import render
from app.core.http import SessionDep
from app.messages import service
from app.models import MessageStatus

router = page_router()
READ = [needs("messages:read")]
PAGE_SIZE = 100


@router.get("/messages", dependencies=READ)
async def messages_page(
    admin: CurrentAdmin,
    session: SessionDep,
    to: Annotated[str, Query(max_length=320)] = "",
    status: MessageStatus | None = None,
    tag: Annotated[str, Query(max_length=100)] = "",
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> HTMLResponse:
    """Messages matching every filter, oldest first, a hundred at a time."""
    found = await service.page(
        session, after, PAGE_SIZE, to.strip().lower() or None, status, tag.strip() or None
    )
    shown = found[:PAGE_SIZE]
    return render(
        "messages.html",
        admin,
        title="Transactional messages",
        current="/admin/messages",
        messages=shown,
        where={"to": to, "status": status.value if status else "", "tag": tag},
        statuses=list(MessageStatus),
        more=shown[-1].id if len(found) > PAGE_SIZE else None,
    )


@router.get("/messages/{message_id}", dependencies=READ)
async def message_page(message_id: DbId, admin: CurrentAdmin, session: SessionDep) -> HTMLResponse:
    """One message and what happened to it, in order."""
    found = await service.get(session, message_id)
    return render(
        "message_timeline.html",
        admin,
        title=f"Message #{found.id}",
        current="/admin/messages",
        message=found,
        timeline=await service.timeline(session, message_id),
    )
