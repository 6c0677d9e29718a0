"""/inbound: replies and other mail received at the inbound domain, with their verdicts."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from app.api.deps import PathId, require
from app.api.pagination import Page, PageDep, make_page
from app.api.schemas.common import DbId
from app.api.schemas.inbound import InboundAttachmentRead, InboundDetail, InboundRead
from app.core.http import SessionDep
from app.inbound import service
from app.inbound.repository import Filters
from app.models import InboundVerdict

router = APIRouter(prefix="/inbound", tags=["inbound"])
READ = [Depends(require("inbound:read"))]


@router.get("", dependencies=READ)
async def list_inbound(
    session: SessionDep,
    page: PageDep,
    campaign_id: Annotated[DbId | None, Query()] = None,
    since: Annotated[datetime | None, Query()] = None,
    verdict: Annotated[InboundVerdict | None, Query()] = None,
    attributed: Annotated[bool | None, Query()] = None,
) -> Page[InboundRead]:
    """Inbound messages, oldest first, narrowed by campaign, time, verdict or attribution."""
    filters = Filters(campaign_id, since, verdict, attributed)
    found = await service.page(session, filters, page.after_id, page.limit)
    items = [InboundRead.model_validate(row) for row in found]
    return make_page(items, [row.id for row in found], page.limit)


@router.get("/{inbound_id}", dependencies=READ)
async def get_inbound(inbound_id: PathId, session: SessionDep) -> InboundDetail:
    """One message: headers, text and HTML, attachments and verdicts."""
    row = await service.get(session, inbound_id)
    files = await service.attachments(session, inbound_id)
    return InboundDetail.model_validate(
        {
            **InboundRead.model_validate(row).model_dump(),
            "headers": [tuple(item) for item in row.headers],
            "text": row.text,
            "html": row.html,
            "attachments": [InboundAttachmentRead.model_validate(f) for f in files],
        }
    )


@router.get(
    "/{inbound_id}/raw",
    dependencies=READ,
    response_class=Response,
    responses={200: {"content": {"message/rfc822": {}}}},
)
async def get_inbound_raw(inbound_id: PathId, session: SessionDep) -> Response:
    """The message as received (after Warta's trace lines), as `message/rfc822`."""
    row = await service.get(session, inbound_id)
    return Response(service.raw(row), media_type="message/rfc822")


@router.get(
    "/{inbound_id}/attachments/{attachment_id}",
    dependencies=READ,
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def get_inbound_attachment(
    inbound_id: PathId, attachment_id: PathId, session: SessionDep
) -> Response:
    """One attached file's bytes, served as a download."""
    found = await service.attachment(session, inbound_id, attachment_id)
    return Response(
        found.content,
        media_type="application/octet-stream",
        headers={"Content-Disposition": "attachment", "X-Content-Type-Options": "nosniff"},
    )
