"""Bounces and suppressions: bounce records with their raw report, and the suppression list
(filter, add, lift), through `app.bounces.service` and `app.audience.suppressions` as the
API's /bounces and /suppressions."""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, Query
from fastapi.responses import HTMLResponse, RedirectResponse

from app.admin import audit
from app.admin.deps import CurrentAdmin, needs, page_router
from app.admin.pages.forms import MAX_ID, DbId
from app.admin.rendering import render
from app.audience import suppressions
from app.bounces import service as bounces
from app.core.http import SessionDep
from app.models import SuppressionScope

router = page_router()
PAGE_SIZE = 100
Text = Annotated[str, Query(max_length=320)]


@router.get("/bounces", dependencies=[needs("bounces:read")])
async def bounces_page(
    admin: CurrentAdmin,
    session: SessionDep,
    email: Text = "",
    campaign_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> HTMLResponse:
    """Bounce and complaint records, oldest first, a hundred at a time."""
    found = await bounces.page(
        session, after, PAGE_SIZE, email.strip().lower() or None, campaign_id
    )
    shown = found[:PAGE_SIZE]
    return render(
        "bounces.html",
        admin,
        title="Bounces",
        current="/admin/bounces",
        bounces=shown,
        where={"email": email, "campaign_id": campaign_id or ""},
        more=shown[-1].id if len(found) > PAGE_SIZE else None,
    )


@router.get("/bounces/{bounce_id}", dependencies=[needs("bounces:read")])
async def bounce_page(bounce_id: DbId, admin: CurrentAdmin, session: SessionDep) -> HTMLResponse:
    """One record with the report or reply it came from."""
    found = await bounces.get(session, bounce_id)
    return render(
        "bounce.html", admin, title=f"Bounce #{found.id}", current="/admin/bounces", bounce=found
    )


@router.get("/suppressions", dependencies=[needs("suppressions:read")])
async def suppressions_page(
    admin: CurrentAdmin,
    session: SessionDep,
    address: Text = "",
    scope: SuppressionScope | None = None,
    after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> HTMLResponse:
    """Suppressed addresses, filtered by part of the address and scope."""
    found = await suppressions.page(session, after, PAGE_SIZE, scope, address.strip() or None)
    shown = found[:PAGE_SIZE]
    return render(
        "suppressions.html",
        admin,
        title="Suppressions",
        current="/admin/suppressions",
        suppressions=shown,
        where={"address": address, "scope": scope.value if scope else ""},
        scopes=list(SuppressionScope),
        more=shown[-1].id if len(found) > PAGE_SIZE else None,
        can_write=admin.can("suppressions:write"),
    )


@router.post("/suppressions", dependencies=[needs("suppressions:write")])
async def add_suppression(
    admin: CurrentAdmin,
    session: SessionDep,
    address: Annotated[str, Form(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")],
    reason: Annotated[str, Form(max_length=500)] = "",
    scope: Annotated[SuppressionScope, Form()] = SuppressionScope.all,
) -> RedirectResponse:
    """Suppress an address (audited)."""
    address = address.strip().lower()
    await suppressions.add(session, address, reason, scope, source="console")
    await audit.record(
        session, admin.user, "suppression.add", f"address:{address}", {"scope": scope.value}
    )
    await session.commit()
    return RedirectResponse("/admin/suppressions", status_code=303)


@router.post("/suppressions/lift", dependencies=[needs("suppressions:write")])
async def lift_suppression(
    admin: CurrentAdmin,
    session: SessionDep,
    address: Annotated[str, Form(min_length=1, max_length=320)],
) -> RedirectResponse:
    """Lift a suppression; one made by a bounce also re-enables the subscriber (audited)."""
    found = await suppressions.get(session, address.strip())
    details = {"reason": found.reason, "source": found.source, "scope": found.scope.value}
    await suppressions.remove(session, address.strip())
    await audit.record(session, admin.user, "suppression.lift", f"address:{address}", details)
    await session.commit()
    return RedirectResponse("/admin/suppressions", status_code=303)
