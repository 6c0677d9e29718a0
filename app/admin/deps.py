"""FastAPI dependencies of the console: the signed-in user, role checks, the CSRF check.

Every page router is built by `page_router()`, whose dependency checks the session and, on
any unsafe method, the CSRF token; a route then names the scope it needs with
`dependencies=[needs("campaigns:write")]`. A refusal is decided here, on the server.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.params import Depends as DependsParam
from fastapi.responses import HTMLResponse
from redis.asyncio import Redis

from app.admin import csrf, roles, sessions
from app.admin.throttle import LoginThrottle
from app.core.http import SessionDep, SettingsDep
from app.core.settings import Settings
from app.models import AdminSession, AdminUser

COOKIE = "warta_admin"
PRE_COOKIE = "warta_admin_pre"
PREFIX = "/admin"


class SignInRequired(Exception):
    """No live session: the handler redirects to the sign-in page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class Refused(Exception):
    """A request the console will not serve; the handler renders `title` and `text`."""

    def __init__(self, status: int, title: str, text: str) -> None:
        super().__init__(title)
        self.status, self.title, self.text = status, title, text


@dataclass(frozen=True)
class SignedIn:
    """The user behind a request, their session, and the CSRF token for their forms."""

    user: AdminUser
    session: AdminSession
    csrf: str

    def can(self, scope: str) -> bool:
        """Whether the user's role allows `scope` ("" is allowed to everyone signed in)."""
        return not scope or roles.allows(self.user.role, scope)


async def signed_in(request: Request, session: SessionDep, settings: SettingsDep) -> SignedIn:
    """The live session named by the cookie, or SignInRequired."""
    found = await sessions.lookup(session, request.cookies.get(COOKIE, ""), settings)
    if found is None:
        raise SignInRequired(request.url.path)
    if session.dirty:  # the once-a-minute last_seen_at touch
        await session.commit()
    admin_session, user = found
    token = csrf.token(settings.effective_secret_key(), "session", admin_session.token_hash)
    return SignedIn(user=user, session=admin_session, csrf=token)


CurrentAdmin = Annotated[SignedIn, Depends(signed_in)]


async def verify_csrf(request: Request, admin: CurrentAdmin) -> None:
    """Refuse an unsafe request without this session's CSRF token (403)."""
    if request.method in csrf.SAFE_METHODS:
        return
    if not csrf.matches(admin.csrf, await csrf.submitted(request)):
        raise Refused(
            403,
            "This form has expired",
            "The form was not sent from this session. Go back, reload the page and try again.",
        )


def require(scope: str) -> Callable[..., Coroutine[Any, Any, SignedIn]]:
    """A dependency that lets the request through only if the user's role allows `scope`."""

    async def check(admin: CurrentAdmin) -> SignedIn:
        if not admin.can(scope):
            raise Refused(
                403,
                "Not allowed",
                f"Your role ({admin.user.role.value}) does not allow this ({scope}).",
            )
        return admin

    return check


def needs(scope: str) -> DependsParam:
    """`dependencies=[needs("campaigns:write")]` on a route: refuse other roles with 403."""
    dependency: DependsParam = Depends(require(scope))
    return dependency


def page_router() -> APIRouter:
    """A router for signed-in pages under /admin: session and CSRF checked on every route."""
    return APIRouter(
        prefix=PREFIX,
        dependencies=[Depends(verify_csrf)],
        default_response_class=HTMLResponse,
        include_in_schema=False,
    )


def get_redis(request: Request) -> Redis:
    """The app's Redis connection (the arq pool is a Redis client)."""
    redis: Redis = request.app.state.queue
    return redis


def get_throttle(request: Request, settings: SettingsDep) -> LoginThrottle:
    """The sign-in throttle over the app's Redis."""
    return LoginThrottle(get_redis(request), settings)


RedisDep = Annotated[Redis, Depends(get_redis)]
ThrottleDep = Annotated[LoginThrottle, Depends(get_throttle)]


def uses_https(request: Request, settings: Settings) -> bool:
    """Whether cookies must be `Secure`: the request came over HTTPS or the site is HTTPS."""
    return request.url.scheme == "https" or settings.public_url.startswith("https://")


def client_of(request: Request) -> str:
    """The client address, as the throttle counts it."""
    return request.client.host if request.client else "unknown"
