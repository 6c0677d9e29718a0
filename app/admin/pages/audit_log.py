"""The audit log page, filtered by actor, action and dates, and its CSV export."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from app.admin import audit
from app.admin.deps import CurrentAdmin, Refused, needs, page_router
from app.admin.rendering import HEADERS, render
from app.admin.roles import AUDIT_READ
from app.core.http import SessionDep

router = page_router()
READ = [needs(AUDIT_READ)]


def _day(text: str, name: str) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise Refused(400, "Bad filter", f"{name} must be a date like 2026-12-31.") from None


def _filter(actor: str, action: str, since: str, until: str) -> audit.AuditFilter:
    end = _day(until, "Until")
    return audit.AuditFilter(
        actor=actor,
        action=action,
        since=_day(since, "From"),
        until=end + timedelta(days=1) if end else None,  # the whole "until" day
    )


Text = Annotated[str, Query(max_length=320)]


@router.get("/audit", dependencies=READ)
async def audit_page(
    request: Request,
    admin: CurrentAdmin,
    session: SessionDep,
    actor: Text = "",
    action: Text = "",
    since: Text = "",
    until: Text = "",
    before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> HTMLResponse:
    """Newest first, a hundred at a time."""
    where = _filter(actor, action, since, until)
    entries = await audit.page(session, where, before)
    query = request.url.query
    return render(
        "audit.html",
        admin,
        title="Audit log",
        current="/admin/audit",
        entries=entries,
        actions=await audit.actions(session),
        where={"actor": actor, "action": action, "since": since, "until": until},
        more=entries[-1].id if len(entries) == audit.PAGE_SIZE else None,
        export=f"/admin/audit.csv?{query}" if query else "/admin/audit.csv",
    )


@router.get("/audit.csv", dependencies=READ)
async def audit_csv(
    request: Request,
    actor: Text = "",
    action: Text = "",
    since: Text = "",
    until: Text = "",
) -> StreamingResponse:
    """The filtered log as CSV (every page of it, oldest first)."""
    where = _filter(actor, action, since, until)
    headers = {
        **HEADERS,
        "Content-Disposition": 'attachment; filename="warta-audit.csv"',
    }
    return StreamingResponse(
        audit.csv_rows(request.app.state.sessionmaker, where),
        media_type="text/csv; charset=utf-8",
        headers=headers,
    )
