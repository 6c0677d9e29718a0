"""The MTA queue: per instance, per recipient domain and per destination (rate, connections,
suspended until), with flush, suspend and resume — the snapshots and commands of
`workers.mta.control`, as the API's /queue."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Form
from fastapi.responses import HTMLResponse, RedirectResponse

from app.admin import audit
from app.admin.deps import CurrentAdmin, RedisDep, needs, page_router
from app.admin.overview import duration
from app.admin.rendering import render
from app.core.http import SessionDep
from workers.mta import control

router = page_router()
WRITE = [needs("queue:write")]
SUSPEND_CHOICES = {"900": "15 minutes", "3600": "1 hour", "14400": "4 hours", "86400": "1 day"}
Destination = Annotated[str, Form(min_length=1, max_length=2000)]


@router.get("/queue", dependencies=[needs("queue:read")])
async def queue_page(admin: CurrentAdmin, redis: RedisDep) -> HTMLResponse:
    """Every live MTA instance's queue, summed per domain and destination."""
    view = control.aggregate(await control.snapshots(redis))
    return render(
        "mta_queue.html",
        admin,
        title="MTA queue",
        current="/admin/queue",
        view=view,
        now=time.time(),
        duration=duration,
        choices=SUSPEND_CHOICES,
        can_write=admin.can("queue:write"),
    )


async def _done(
    session: SessionDep,
    admin: CurrentAdmin,
    action: str,
    target: str,
    heard: int,
    **details: object,
) -> RedirectResponse:
    await audit.record(session, admin.user, action, target, {"instances": heard, **details})
    await session.commit()
    return RedirectResponse(f"/admin/queue?heard={heard}", status_code=303)


@router.post("/queue/flush", dependencies=WRITE)
async def flush(
    admin: CurrentAdmin,
    session: SessionDep,
    redis: RedisDep,
    domain: Annotated[str, Form(max_length=255)] = "",
) -> RedirectResponse:
    """Retry waiting messages now, for one domain or all (audited)."""
    heard = await control.command(redis, "flush", domain=domain or None)
    return await _done(session, admin, "queue.flush", f"domain:{domain or '*'}", heard)


@router.post("/queue/suspend", dependencies=WRITE)
async def suspend(
    admin: CurrentAdmin,
    session: SessionDep,
    redis: RedisDep,
    destination: Destination,
    seconds: Annotated[int, Form(ge=60, le=7 * 86400)] = 3600,
) -> RedirectResponse:
    """Stop delivering to a destination for a while (audited)."""
    until = time.time() + seconds
    heard = await control.command(redis, "suspend", destination=destination, until=until)
    return await _done(
        session, admin, "queue.suspend", f"destination:{destination}", heard, seconds=seconds
    )


@router.post("/queue/resume", dependencies=WRITE)
async def resume(
    admin: CurrentAdmin, session: SessionDep, redis: RedisDep, destination: Destination
) -> RedirectResponse:
    """Lift a destination's suspension (audited)."""
    heard = await control.command(redis, "resume", destination=destination)
    return await _done(session, admin, "queue.resume", f"destination:{destination}", heard)
