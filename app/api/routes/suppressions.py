"""/suppressions"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from app.api.deps import require
from app.api.pagination import Page, PageDep, make_page
from app.api.schemas.common import Address
from app.api.schemas.suppressions import SuppressionCreate, SuppressionRead
from app.audience import suppressions as service
from app.core.http import SessionDep
from app.models import SuppressionScope

router = APIRouter(prefix="/suppressions", tags=["suppressions"])
READ = [Depends(require("suppressions:read"))]
WRITE = [Depends(require("suppressions:write"))]


@router.post("", status_code=201, dependencies=WRITE)
async def add_suppression(body: SuppressionCreate, session: SessionDep) -> SuppressionRead:
    """Suppress an address."""
    created = await service.add(session, body.address, body.reason, body.scope, source="api")
    await session.commit()
    return SuppressionRead.model_validate(created)


@router.get("", dependencies=READ)
async def list_suppressions(
    session: SessionDep,
    page: PageDep,
    scope: SuppressionScope | None = None,
    address: Annotated[str | None, Query(max_length=320)] = None,
) -> Page[SuppressionRead]:
    """Suppressed addresses, optionally by scope or address substring."""
    found = await service.page(session, page.after_id, page.limit, scope, address)
    items = [SuppressionRead.model_validate(item) for item in found]
    return make_page(items, [item.id for item in found], page.limit)


@router.get("/{address}", dependencies=READ)
async def get_suppression(address: Address, session: SessionDep) -> SuppressionRead:
    """Whether and why an address is suppressed."""
    return SuppressionRead.model_validate(await service.get(session, address))


@router.delete("/{address}", status_code=204, dependencies=WRITE)
async def remove_suppression(address: Address, session: SessionDep) -> Response:
    """Lift a suppression."""
    await service.remove(session, address)
    await session.commit()
    return Response(status_code=204)
