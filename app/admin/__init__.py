"""The admin console at /admin: server-rendered pages over the services the API uses.

`install(app)` mounts every page router, the static files and the handlers that turn a
missing session into the sign-in page and a refusal into an HTML page. See docs/admin.md.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from app.admin import pages
from app.admin.deps import PREFIX, Refused, SignInRequired
from app.admin.rendering import STATIC, render


async def _sign_in_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    return RedirectResponse(f"{PREFIX}/login?next={quote(exc.next_path)}", status_code=303)


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    return render("message.html", None, status=exc.status, title=exc.title, text=exc.text)


def install(app: FastAPI) -> None:
    """Mount the console on `app`."""
    app.include_router(pages.sign_in.public)
    for module in pages.ALL:
        app.include_router(module.router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="admin-static")
    app.add_exception_handler(SignInRequired, _sign_in_required)
    app.add_exception_handler(Refused, _refused)
