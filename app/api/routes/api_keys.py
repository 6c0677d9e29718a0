"""/api-keys: list, create (the token is in the answer only) and revoke keys; needs `admin`.

The console's API keys page calls the same services in `app.core.api_keys`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from pydantic import Field, StringConstraints

from app.api.deps import CurrentKey, PathId, require
from app.api.pagination import Page, PageDep, make_page
from app.api.schemas.common import Name, ReadModel, Strict
from app.core import api_keys
from app.core.http import SessionDep
from app.models import ApiKey

router = APIRouter(prefix="/api-keys", tags=["api-keys"])
MANAGE = [Depends(require(api_keys.MANAGE_SCOPE))]
Scopes = Annotated[
    list[Annotated[str, StringConstraints(max_length=64)]], Field(min_length=1, max_length=50)
]


class ApiKeyCreate(Strict):
    """A name for whom the key is for, and its scopes (`admin`, `lists:read`, …)."""

    name: Name
    scopes: Scopes


class ApiKeyRead(ReadModel):
    """A key without its token: only the public prefix (`wk_<public id>`) is shown."""

    id: int
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyRead):
    """A new key with its token, which no later answer contains."""

    token: str


@router.get("", dependencies=MANAGE)
async def list_api_keys(session: SessionDep, page: PageDep) -> Page[ApiKeyRead]:
    """Every key, revoked ones included, oldest first."""
    found = await api_keys.page(session, page.after_id, page.limit + 1)
    items = [ApiKeyRead.model_validate(key) for key in found]
    return make_page(items, [key.id for key in found], page.limit)


@router.post("", status_code=201, dependencies=MANAGE)
async def create_api_key(
    body: ApiKeyCreate, session: SessionDep, caller: CurrentKey
) -> ApiKeyCreated:
    """Create a key (audited); the answer holds its token, shown only now."""
    key, token = await api_keys.create_key(session, body.name, body.scopes, actor=actor(caller))
    await session.commit()
    return ApiKeyCreated(**ApiKeyRead.model_validate(key).model_dump(), token=token)


@router.get("/{key_id}", dependencies=MANAGE)
async def get_api_key(key_id: PathId, session: SessionDep) -> ApiKeyRead:
    """One key."""
    return ApiKeyRead.model_validate(await api_keys.get_key(session, key_id))


@router.delete("/{key_id}", status_code=204, dependencies=MANAGE)
async def revoke_api_key(key_id: PathId, session: SessionDep, caller: CurrentKey) -> Response:
    """Revoke a key (audited): it stops authenticating when this answer is sent in this
    process, and within AUTH_CACHE_SECONDS (2 s) in every other (the record stays, marked
    revoked)."""
    await api_keys.revoke(session, key_id, actor=actor(caller))
    await session.commit()
    return Response(status_code=204)


def actor(key: ApiKey) -> str:
    """How the audit log names a change made with an API key."""
    return f"api key {key.id} ({key.name})"
