"""Rendering the public pages: one Jinja environment over app/web/templates, autoescaped.

Every page is complete HTML with one small inline stylesheet and no external asset, so it
reads the same on a phone with images or scripts blocked.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

TEMPLATES = Path(__file__).parent / "templates"
MAX_TOKEN = 200
"""Longer path tokens are not ours; refused before any work."""
# Pages act on a subscriber's data: never cached, never framed, no referrer leaks the token.
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
}


@cache
def environment() -> Environment:
    """The page templates, compiled once per process."""
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True),
        auto_reload=False,
    )


def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """Render `template` with `context` as a complete response."""
    html = environment().get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def message(title: str, text: str, status: int = 200) -> HTMLResponse:
    """A page that only says something."""
    return page("message.html", status, title=title, text=text)


def invalid_link() -> HTMLResponse:
    """The one answer to a tampered, truncated or foreign token (never anyone's data)."""
    return message("This link is not valid", "The link may be incomplete or altered.", 400)


def expired_form() -> HTMLResponse:
    """A form post without a genuine, recent form token (CSRF or a stale page)."""
    return message(
        "This form has expired",
        "Please go back, reload the page and try again.",
        403,
    )
