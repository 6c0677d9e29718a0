"""Mounting the admin console on the API's FastAPI app (see `app.admin.install`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.admin import pages
from app.admin.deps import PREFIX, Refused, SignInRequired
from app.admin.rendering import STATIC, render
from app.core.errors import DomainError


async def _sign_in_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    return RedirectResponse(f"{PREFIX}/login?next={quote(exc.next_path)}", status_code=303)


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    return render("message.html", None, status=exc.status, title=exc.title, text=exc.text)


def _as_page(exc: Exception) -> tuple[int, str, str]:
    """Status, title and text of an error raised on a console page."""
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(part) for part in first.get("loc", ())[1:]) or "the request"
        return 400, "That was not filled in right", f"{field}: {first.get('msg', 'invalid')}"
    if isinstance(exc, DomainError):
        return exc.status, exc.title, exc.detail
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else "This request cannot be served."
    return exc.status_code, "Not found" if exc.status_code == 404 else "Error", detail


HttpHandler = Callable[[Request, Exception], Awaitable[Response]]


def _html_on_pages(previous: HttpHandler | None) -> HttpHandler:
    """Render errors on /admin paths as a page; elsewhere keep the app's handler."""

    async def handle(request: Request, exc: Exception) -> Response:
        if previous is not None and not request.url.path.startswith(f"{PREFIX}/"):
            return await previous(request, exc)
        status, title, text = _as_page(exc)
        return render("message.html", None, status=status, title=title, text=text)

    return handle


def install(app: FastAPI) -> None:
    """Mount the console on `app` (after the API's error handlers are installed)."""
    for error in (RequestValidationError, DomainError, StarletteHTTPException):
        previous = cast(HttpHandler | None, app.exception_handlers.get(error))
        app.add_exception_handler(error, _html_on_pages(previous))
    app.include_router(pages.sign_in.public)
    for module in pages.ALL:
        app.include_router(module.router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="admin-static")
    app.add_exception_handler(SignInRequired, _sign_in_required)
    app.add_exception_handler(Refused, _refused)
