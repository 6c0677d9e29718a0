"""Rendering console pages: one autoescaped Jinja environment, one strict CSP for all.

No inline script or style anywhere: the CSP allows scripts and styles from /admin/static
only, so an injected `<script>` or `style=` does nothing.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from app.admin.deps import SignedIn
from app.admin.navigation import NAV

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}


@cache
def _asset_version(name: str) -> str:
    """A short content hash, so a changed stylesheet is fetched again."""
    return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:10]


def asset(name: str) -> str:
    """The URL of a static file, versioned by its content."""
    return f"/admin/static/{name}?v={_asset_version(name)}"


@cache
def environment() -> Environment:
    """The console templates, compiled once per process."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True),
        auto_reload=False,
    )
    env.globals["asset"] = asset
    return env


def render(
    template: str, admin: SignedIn | None, *, status: int = 200, **context: Any
) -> HTMLResponse:
    """A complete page: `admin` fills the menu and the CSRF token of every form."""
    nav = [item for item in NAV if admin is not None and admin.can(item.scope)]
    html = (
        environment()
        .get_template(template)
        .render(admin=admin, csrf=admin.csrf if admin else "", nav=nav, **context)
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)
