"""/subscribers"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response

from app.api.deps import PathId, require
from app.api.pagination import Page, PageDep, make_page
from app.api.schemas.common import MAX_ID, DbId, Strict
from app.api.schemas.subscribers import (
    MembershipRead,
    MembershipUpdate,
    SubscriberCreate,
    SubscriberRead,
    SubscriberUpdate,
)
from app.audience import subscribers as service
from app.core.errors import Invalid
from app.core.http import SessionDep
from app.core.text import ATTRIBUTE_KEY
from app.models import Subscriber, SubscriberStatus, SubscriptionStatus

router = APIRouter(prefix="/subscribers", tags=["subscribers"])
READ = [Depends(require("subscribers:read"))]
WRITE = [Depends(require("subscribers:write"))]


class SubscriberSearch(Strict):
    """A segment (see the README) plus the usual filters."""

    segment: dict[str, Any]
    list_id: DbId | None = None


async def _read(session: SessionDep, found: list[Subscriber]) -> list[SubscriberRead]:
    memberships = await service.memberships(session, [item.id for item in found])
    return [
        SubscriberRead.model_validate(item).model_copy(
            update={"lists": [MembershipRead.model_validate(m) for m in memberships[item.id]]}
        )
        for item in found
    ]


def _attribute_filters(raw: list[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not ATTRIBUTE_KEY.match(key):
            raise Invalid(f"attribute filter {item[:80]!r} must look like name=value")
        parsed[key] = value
    return parsed


@router.post("", status_code=201, dependencies=WRITE)
async def create_subscriber(body: SubscriberCreate, session: SessionDep) -> SubscriberRead:
    """Create a subscriber, optionally on lists."""
    created = await service.create(
        session,
        email=body.email,
        name=body.name,
        attributes=body.attributes,
        status=body.status,
        list_ids=body.lists,
        preconfirm=body.preconfirm,
    )
    await session.commit()
    return (await _read(session, [created]))[0]


@router.get("", dependencies=READ)
async def list_subscribers(
    session: SessionDep,
    page: PageDep,
    list_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    status: SubscriberStatus | None = None,
    subscription_status: SubscriptionStatus | None = None,
    email: Annotated[str | None, Query(max_length=320, description="substring")] = None,
    attribute: Annotated[
        list[str], Query(max_length=20, description="name=value, repeatable")
    ] = [],  # noqa: B006 - FastAPI copies defaults
) -> Page[SubscriberRead]:
    """Subscribers matching every given filter."""
    query = service.SubscriberQuery(
        list_id=list_id,
        status=status,
        subscription_status=subscription_status,
        email_contains=email,
        attributes=_attribute_filters(attribute),
    )
    found = await service.page(session, query, page.after_id, page.limit)
    return make_page(await _read(session, found), [item.id for item in found], page.limit)


@router.post("/query", dependencies=READ)
async def query_subscribers(
    body: SubscriberSearch, session: SessionDep, page: PageDep
) -> Page[SubscriberRead]:
    """Subscribers matching a segment (the same language campaigns use)."""
    query = service.SubscriberQuery(list_id=body.list_id, segment=body.segment)
    found = await service.page(session, query, page.after_id, page.limit)
    return make_page(await _read(session, found), [item.id for item in found], page.limit)


@router.get("/{subscriber_id:int}", dependencies=READ)
async def get_subscriber(subscriber_id: PathId, session: SessionDep) -> SubscriberRead:
    """One subscriber with memberships."""
    return (await _read(session, [await service.get(session, subscriber_id)]))[0]


@router.patch("/{subscriber_id:int}", dependencies=WRITE)
async def update_subscriber(
    subscriber_id: PathId, body: SubscriberUpdate, session: SessionDep
) -> SubscriberRead:
    """Change a subscriber; `lists` replaces their memberships."""
    changes = body.model_dump(exclude_unset=True, exclude={"preconfirm"})
    changed = await service.update(session, subscriber_id, changes, preconfirm=body.preconfirm)
    await session.commit()
    return (await _read(session, [changed]))[0]


@router.delete("/{subscriber_id:int}", status_code=204, dependencies=WRITE)
async def delete_subscriber(subscriber_id: PathId, session: SessionDep) -> Response:
    """Delete a subscriber."""
    await service.delete(session, subscriber_id)
    await session.commit()
    return Response(status_code=204)


@router.put("/{subscriber_id:int}/lists/{list_id:int}", dependencies=WRITE)
async def set_membership(
    subscriber_id: PathId, list_id: PathId, body: MembershipUpdate, session: SessionDep
) -> MembershipRead:
    """Add the subscriber to a list, or change the membership's status."""
    membership = await service.set_membership(session, subscriber_id, list_id, body.status)
    await session.commit()
    return MembershipRead.model_validate(membership)


@router.delete("/{subscriber_id:int}/lists/{list_id:int}", status_code=204, dependencies=WRITE)
async def remove_membership(
    subscriber_id: PathId, list_id: PathId, session: SessionDep
) -> Response:
    """Remove the subscriber from a list."""
    await service.remove_membership(session, subscriber_id, list_id)
    await session.commit()
    return Response(status_code=204)
