"""/lists"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from app.api.deps import PathId, require
from app.api.pagination import Page, PageDep, make_page
from app.api.schemas.lists import ListCreate, ListRead, ListUpdate
from app.audience import lists as service
from app.core.http import SessionDep
from app.models import MailingList

router = APIRouter(prefix="/lists", tags=["lists"])
READ = [Depends(require("lists:read"))]
WRITE = [Depends(require("lists:write"))]


async def _read(session: SessionDep, found: list[MailingList]) -> list[ListRead]:
    counts = await service.member_counts(session, [item.id for item in found])
    return [
        ListRead.model_validate(item).model_copy(update={"subscriber_counts": counts[item.id]})
        for item in found
    ]


@router.post("", status_code=201, dependencies=WRITE)
async def create_list(body: ListCreate, session: SessionDep) -> ListRead:
    """Create a list."""
    created = await service.create(session, **body.model_dump())
    await session.commit()
    return (await _read(session, [created]))[0]


@router.get("", dependencies=READ)
async def list_lists(session: SessionDep, page: PageDep) -> Page[ListRead]:
    """All lists, oldest first."""
    found = await service.page(session, page.after_id, page.limit)
    return make_page(await _read(session, found), [item.id for item in found], page.limit)


@router.get("/{list_id}", dependencies=READ)
async def get_list(list_id: PathId, session: SessionDep) -> ListRead:
    """One list with member counts."""
    return (await _read(session, [await service.get(session, list_id)]))[0]


@router.patch("/{list_id}", dependencies=WRITE)
async def update_list(list_id: PathId, body: ListUpdate, session: SessionDep) -> ListRead:
    """Change a list."""
    changed = await service.update(session, list_id, body.model_dump(exclude_unset=True))
    await session.commit()
    return (await _read(session, [changed]))[0]


@router.delete("/{list_id}", status_code=204, dependencies=WRITE)
async def delete_list(list_id: PathId, session: SessionDep) -> Response:
    """Delete a list and its memberships."""
    await service.delete(session, list_id)
    await session.commit()
    return Response(status_code=204)
