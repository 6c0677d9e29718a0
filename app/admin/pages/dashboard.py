"""The dashboard: the last 30 days as charts, campaigns running now, the MTA queue."""

from __future__ import annotations

from fastapi.responses import HTMLResponse

from app.admin.deps import CurrentAdmin, needs, page_router
from app.admin.rendering import render

router = page_router()
READ = [needs("campaigns:read")]


@router.get("/", dependencies=READ)
async def dashboard(admin: CurrentAdmin) -> HTMLResponse:
    """The overview page."""
    return render("dashboard.html", admin, title="Dashboard", current="/admin/")
