"""The archived bytes of a message as `message/rfc822` (docs/archive.md)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from app.api.deps import PathId, require
from app.archive import service
from app.core.http import SessionDep, SettingsDep

router = APIRouter(tags=["archive"])
RFC822 = "message/rfc822"
NOTE = "The message as Warta built it, before the MTA added its DKIM-Signature."


@router.get(
    "/messages/{message_id}/raw",
    dependencies=[Depends(require("messages:read"))],
    response_class=Response,
    responses={200: {"content": {RFC822: {}}, "description": NOTE}},
)
async def raw_message(message_id: PathId, session: SessionDep, settings: SettingsDep) -> Response:
    """A transactional message from the archive; 404 if never archived, expired or erased."""
    data = await service.raw_message(session, settings, message_id)
    return Response(data, media_type=RFC822, headers=_headers(f"message-{message_id}"))


@router.get(
    "/campaigns/{campaign_id}/sends/{subscriber_id}/raw",
    dependencies=[Depends(require("campaigns:read"))],
    response_class=Response,
    responses={200: {"content": {RFC822: {}}, "description": NOTE}},
)
async def raw_campaign_message(
    campaign_id: PathId, subscriber_id: PathId, session: SessionDep, settings: SettingsDep
) -> Response:
    """A campaign's message to one subscriber from the archive; 404 if not there."""
    data = await service.raw_campaign_message(session, settings, campaign_id, subscriber_id)
    return Response(
        data, media_type=RFC822, headers=_headers(f"campaign-{campaign_id}-{subscriber_id}")
    )


def _headers(stem: str) -> dict[str, str]:
    return {
        "Content-Disposition": f'attachment; filename="{stem}.eml"',
        "Cache-Control": "no-store",
    }
