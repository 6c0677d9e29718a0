"""FastAPI dependencies: the request's session, settings and authenticated key."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import ApiKey
from app.services import api_keys
from app.settings import Settings

_bearer = HTTPBearer(auto_error=False)
PathId = Annotated[int, Path(ge=1, le=2_147_483_647, description="A 32-bit id.")]


def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request; routes that write commit explicitly, errors roll back."""
    async with request.app.state.sessionmaker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def current_key(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    """The API key named by the bearer token, or 401."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            401,
            "an API key is required: Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = await api_keys.authenticate(session, credentials.credentials)
    if key is None:
        raise HTTPException(
            401, "the API key is unknown or revoked", headers={"WWW-Authenticate": "Bearer"}
        )
    await session.commit()
    return key


CurrentKey = Annotated[ApiKey, Depends(current_key)]


def require(scope: str) -> Callable[..., Coroutine[Any, Any, ApiKey]]:
    """A dependency that lets the request through only if the key has `scope`."""

    async def check(key: CurrentKey) -> ApiKey:
        if not api_keys.allows(key.scopes, scope):
            raise HTTPException(403, f"this API key lacks the scope {scope!r}")
        return key

    return check
