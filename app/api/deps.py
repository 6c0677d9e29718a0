"""FastAPI dependencies of the JSON API: the authenticated key and its scopes."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.core import api_keys
from app.models import ApiKey

_bearer = HTTPBearer(auto_error=False)
PathId = Annotated[int, Path(ge=1, le=2_147_483_647, description="A 32-bit id.")]


async def current_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    """The API key named by the bearer token, or 401."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            401,
            "an API key is required: Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # Its own session, only when the key is not in the cache: a route that needs no database
    # (POST /messages, grouped) opens no session for authentication.
    key = await api_keys.authenticate_cached(
        request.app.state.sessionmaker, credentials.credentials
    )
    if key is None:
        raise HTTPException(
            401, "the API key is unknown or revoked", headers={"WWW-Authenticate": "Bearer"}
        )
    return key


CurrentKey = Annotated[ApiKey, Depends(current_key)]


def require(scope: str) -> Callable[..., Coroutine[Any, Any, ApiKey]]:
    """A dependency that lets the request through only if the key has `scope`."""

    async def check(key: CurrentKey) -> ApiKey:
        if not api_keys.allows(key.scopes, scope):
            raise HTTPException(403, f"this API key lacks the scope {scope!r}")
        return key

    return check
