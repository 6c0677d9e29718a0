"""Lists: create, rename, delete (with a confirmation step), through `app.audience.lists`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Form
from fastapi.responses import HTMLResponse, RedirectResponse

from app.admin import audit
from app.admin.deps import CurrentAdmin, needs, page_router
from app.admin.pages.forms import DbId, after_rollback, refuse
from app.admin.rendering import render
from app.audience import list_sizes
from app.audience import lists as service
from app.core.errors import DomainError
from app.core.http import SessionDep
from app.models import OptIn

router = page_router()
READ = [needs("lists:read")]
WRITE = [needs("lists:write")]
SHOWN = 500
Name = Annotated[str, Form(min_length=1, max_length=200)]
Description = Annotated[str, Form(max_length=2000)]


async def _page(
    admin: CurrentAdmin, session: SessionDep, *, error: str = "", status: int = 200
) -> HTMLResponse:
    found = (await service.page(session, 0, SHOWN))[:SHOWN]
    return render(
        "lists.html",
        admin,
        status=status,
        title="Lists",
        current="/admin/lists",
        lists=found,
        sizes=await list_sizes.member_counts(session, [item.id for item in found]),
        exact_up_to=list_sizes.EXACT_UP_TO,
        can_write=admin.can("lists:write"),
        error=error,
    )


@router.get("/lists", dependencies=READ)
async def lists_page(admin: CurrentAdmin, session: SessionDep) -> HTMLResponse:
    """Every list with its members by status."""
    return await _page(admin, session)


@router.post("/lists", dependencies=WRITE, response_model=None)
async def create_list(
    admin: CurrentAdmin,
    session: SessionDep,
    name: Name,
    description: Description = "",
    optin: Annotated[OptIn, Form()] = OptIn.single,
) -> HTMLResponse | RedirectResponse:
    """A new list (audited); a taken name shows the form again with the reason."""
    try:
        created = await service.create(
            session, name=name.strip(), description=description, optin=optin
        )
    except DomainError as exc:
        await after_rollback(session, admin)
        return await _page(admin, session, error=exc.detail, status=exc.status)
    await audit.record(session, admin.user, "list.create", f"list:{created.id}", {"name": name})
    await session.commit()
    return RedirectResponse(f"/admin/lists?created={created.id}", status_code=303)


@router.get("/lists/{list_id}", dependencies=READ)
async def list_page(list_id: DbId, admin: CurrentAdmin, session: SessionDep) -> HTMLResponse:
    """One list: rename it, or ask to delete it."""
    try:
        found = await service.get(session, list_id)
    except DomainError as exc:
        refuse(exc)
    return render(
        "list.html",
        admin,
        title=f"List: {found.name}",
        current="/admin/lists",
        item=found,
        sizes=await list_sizes.member_counts(session, [list_id]),
        can_write=admin.can("lists:write"),
    )


@router.post("/lists/{list_id}/rename", dependencies=WRITE)
async def rename_list(
    list_id: DbId, admin: CurrentAdmin, session: SessionDep, name: Name
) -> RedirectResponse:
    """Rename a list (audited)."""
    try:
        before = (await service.get(session, list_id)).name
        await service.update(session, list_id, {"name": name.strip()})
    except DomainError as exc:
        refuse(exc)
    await audit.record(
        session, admin.user, "list.rename", f"list:{list_id}", {"from": before, "to": name}
    )
    await session.commit()
    return RedirectResponse(f"/admin/lists/{list_id}", status_code=303)


@router.get("/lists/{list_id}/delete", dependencies=WRITE)
async def confirm_delete(list_id: DbId, admin: CurrentAdmin, session: SessionDep) -> HTMLResponse:
    """The confirmation step: what deleting the list removes."""
    try:
        found = await service.get(session, list_id)
    except DomainError as exc:
        refuse(exc)
    sizes = await list_sizes.member_counts(session, [list_id])
    members = sum(sizes.counts[list_id].values())
    about = "about " if list_id in sizes.estimated else ""
    return render(
        "confirm.html",
        admin,
        title=f"Delete the list {found.name}?",
        current="/admin/lists",
        text=f"Its {about}{members:,} memberships are removed; the subscribers stay.",
        action=f"/admin/lists/{list_id}/delete",
        button="Delete the list",
        back=f"/admin/lists/{list_id}",
    )


@router.post("/lists/{list_id}/delete", dependencies=WRITE)
async def delete_list(list_id: DbId, admin: CurrentAdmin, session: SessionDep) -> RedirectResponse:
    """Delete a list and its memberships (audited)."""
    try:
        name = (await service.get(session, list_id)).name
        await service.delete(session, list_id)
    except DomainError as exc:
        refuse(exc)
    await audit.record(session, admin.user, "list.delete", f"list:{list_id}", {"name": name})
    await session.commit()
    return RedirectResponse("/admin/lists", status_code=303)
