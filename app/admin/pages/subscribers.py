"""Subscribers: search and filters, a subscriber's page (memberships and the timeline of
every event), edit, blocklist, and erasure with a confirmation step.

Reads and changes go through `app.audience.subscribers` (as the API's /subscribers) and
`app.audience.preferences` (the subscriber's own export and erasure).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Form, Query
from fastapi.responses import HTMLResponse, RedirectResponse

from app.admin import audit
from app.admin.deps import CurrentAdmin, needs, page_router
from app.admin.pages.forms import MAX_ID, DbId, refuse
from app.admin.rendering import render
from app.audience import lists as lists_service
from app.audience import preferences
from app.audience import subscribers as service
from app.core.errors import DomainError
from app.core.http import SessionDep
from app.models import SubscriberStatus, SubscriptionStatus

router = page_router()
READ = [needs("subscribers:read")]
WRITE = [needs("subscribers:write")]
PAGE_SIZE = 50
TIMELINE_SHOWN = 1000
LISTS_SHOWN = 500


def _choice(value: str, kind: type[SubscriberStatus] | type[SubscriptionStatus]) -> Any:
    try:
        return kind(value) if value else None
    except ValueError:
        return None


@router.get("/subscribers", dependencies=READ)
async def subscribers_page(
    admin: CurrentAdmin,
    session: SessionDep,
    email: Annotated[str, Query(max_length=320)] = "",
    list_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    status: Annotated[str, Query(max_length=32)] = "",
    subscription_status: Annotated[str, Query(max_length=32)] = "",
    after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> HTMLResponse:
    """Matching subscribers, fifty at a time (keyset pages)."""
    query = service.SubscriberQuery(
        list_id=list_id,
        status=_choice(status, SubscriberStatus),
        subscription_status=_choice(subscription_status, SubscriptionStatus),
        email_contains=email.replace("\x00", "") or None,
    )
    found = await service.page(session, query, after, PAGE_SIZE)
    shown = found[:PAGE_SIZE]
    where = {
        "email": email,
        "list_id": list_id or "",
        "status": status,
        "subscription_status": subscription_status,
    }
    filters = "&".join(f"{k}={v}" for k, v in where.items() if v)
    return render(
        "subscribers.html",
        admin,
        title="Subscribers",
        current="/admin/subscribers",
        subscribers=shown,
        memberships=await service.memberships(session, [s.id for s in shown]),
        lists=(await lists_service.page(session, 0, LISTS_SHOWN))[:LISTS_SHOWN],
        where=where,
        statuses=list(SubscriberStatus),
        subscription_statuses=list(SubscriptionStatus),
        more=shown[-1].id if len(found) > PAGE_SIZE else None,
        filters=filters,
        can_write=admin.can("subscribers:write"),
    )


@router.get("/subscribers/{subscriber_id}", dependencies=READ)
async def subscriber_page(
    subscriber_id: DbId, admin: CurrentAdmin, session: SessionDep
) -> HTMLResponse:
    """One subscriber: details, memberships and every event, newest first."""
    try:
        found = await service.get(session, subscriber_id)
    except DomainError as exc:
        refuse(exc)
    held = await preferences.export(session, found)
    return render(
        "subscriber.html",
        admin,
        title=f"Subscriber {found.email}",
        current="/admin/subscribers",
        subscriber=found,
        held=held,
        timeline=list(reversed(held["events"]))[:TIMELINE_SHOWN],
        statuses=list(SubscriberStatus),
        can_write=admin.can("subscribers:write"),
    )


@router.post("/subscribers/{subscriber_id}", dependencies=WRITE)
async def edit_subscriber(
    subscriber_id: DbId,
    admin: CurrentAdmin,
    session: SessionDep,
    email: Annotated[str, Form(min_length=3, max_length=320)],
    name: Annotated[str, Form(max_length=200)] = "",
    status: Annotated[SubscriberStatus, Form()] = SubscriberStatus.enabled,
) -> RedirectResponse:
    """Change address, name or status (audited, with what changed)."""
    try:
        found = await service.get(session, subscriber_id)
        before = {"email": found.email, "name": found.name, "status": found.status.value}
        after = {"email": email.strip().lower(), "name": name.strip(), "status": status.value}
        changes = {k: v for k, v in after.items() if before[k] != v}
        if changes:
            await service.update(session, subscriber_id, dict(changes), preconfirm=False)
    except DomainError as exc:
        refuse(exc)
    if changes:
        blocked = changes.get("status") == SubscriberStatus.blocklisted.value
        await audit.record(
            session,
            admin.user,
            "subscriber.blocklist" if blocked else "subscriber.edit",
            f"subscriber:{subscriber_id}",
            {k: [before[k], v] for k, v in changes.items()},
        )
        await session.commit()
    return RedirectResponse(f"/admin/subscribers/{subscriber_id}", status_code=303)


@router.post("/subscribers/{subscriber_id}/blocklist", dependencies=WRITE)
async def blocklist(
    subscriber_id: DbId, admin: CurrentAdmin, session: SessionDep
) -> RedirectResponse:
    """Blocklist the subscriber: no campaign mail at all (audited)."""
    try:
        found = await service.update(
            session, subscriber_id, {"status": SubscriberStatus.blocklisted}, preconfirm=False
        )
    except DomainError as exc:
        refuse(exc)
    await audit.record(
        session,
        admin.user,
        "subscriber.blocklist",
        f"subscriber:{subscriber_id}",
        {"email": found.email},
    )
    await session.commit()
    return RedirectResponse(f"/admin/subscribers/{subscriber_id}", status_code=303)


@router.get("/subscribers/{subscriber_id}/erase", dependencies=WRITE)
async def confirm_erase(
    subscriber_id: DbId, admin: CurrentAdmin, session: SessionDep
) -> HTMLResponse:
    """The confirmation step: what erasure does and that it cannot be undone."""
    try:
        found = await service.get(session, subscriber_id)
    except DomainError as exc:
        refuse(exc)
    return render(
        "confirm.html",
        admin,
        title=f"Erase {found.email}?",
        current="/admin/subscribers",
        text="Erasure removes the subscriber, their memberships and the address from every "
        "event; the address is kept only as a hash, so it is never mailed again. "
        "This cannot be undone.",
        action=f"/admin/subscribers/{subscriber_id}/erase",
        button="Erase for good",
        back=f"/admin/subscribers/{subscriber_id}",
    )


@router.post("/subscribers/{subscriber_id}/erase", dependencies=WRITE)
async def erase(subscriber_id: DbId, admin: CurrentAdmin, session: SessionDep) -> RedirectResponse:
    """GDPR erasure (audited without the address: the log must not keep what was erased)."""
    try:
        found = await service.get(session, subscriber_id)
        await preferences.erase(session, found)
    except DomainError as exc:
        refuse(exc)
    await audit.record(session, admin.user, "subscriber.erase", f"subscriber:{subscriber_id}")
    await session.commit()
    return RedirectResponse("/admin/subscribers", status_code=303)
