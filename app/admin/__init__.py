"""The admin console at /admin: server-rendered pages over the services the API uses.

`install(app)` mounts every page router, the static files and the handlers that turn a
missing session into the sign-in page and a refusal into an HTML page. See docs/admin.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI


def install(app: FastAPI) -> None:
    """Mount the console on `app` (after the API's error handlers are installed)."""
    # Imported here, not above: every `warta` process imports this package (for
    # `warta create-user`), and the pages with FastAPI cost each of them ~13 MB of RSS.
    from app.admin.mounting import install as mount

    mount(app)
