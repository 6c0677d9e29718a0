"""API keys: the list, creating a key with scopes (its token shown once, on the answer to
the form, never again) and revoking one, through `app.core.api_keys` as the API's /api-keys.

Only roles holding `admin` (admins and owners) reach these pages: a key can carry any scope,
so whoever makes keys can already do everything.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Form
from fastapi.responses import HTMLResponse, RedirectResponse

from app.admin.deps import CurrentAdmin, needs, page_router
from app.admin.pages.forms import DbId, refuse
from app.admin.rendering import render
from app.core import api_keys
from app.core.errors import DomainError
from app.core.http import SessionDep
from app.models import ApiKey

router = page_router()
MANAGE = [needs(api_keys.MANAGE_SCOPE)]
SHOWN = 500
PATH = "/admin/api-keys"


def scope_choices() -> list[tuple[str, list[str]]]:
    """The scopes grouped for the form: `admin` and the read-only ones, then per resource."""
    groups = [("Everything", ["admin"]), ("Monitoring", list(api_keys.READ_ONLY_SCOPES))]
    return groups + [
        (resource, [f"{resource}:read", f"{resource}:write"]) for resource in api_keys.RESOURCES
    ]


@router.get("/api-keys", dependencies=MANAGE)
async def api_keys_page(admin: CurrentAdmin, session: SessionDep) -> HTMLResponse:
    """Every key (name, public prefix, scopes, dates) and the form that creates one."""
    return _list_page(admin, await api_keys.page(session, 0, SHOWN + 1))


def _list_page(
    admin: CurrentAdmin,
    keys: list[ApiKey],
    *,
    error: str = "",
    name: str = "",
    chosen: frozenset[str] = frozenset(),
    status: int = 200,
) -> HTMLResponse:
    return render(
        "api_keys.html",
        admin,
        status=status,
        title="API keys",
        current=PATH,
        keys=keys[:SHOWN],
        more=len(keys) > SHOWN,
        groups=scope_choices(),
        error=error,
        name=name,
        chosen=chosen,
    )


@router.post("/api-keys", dependencies=MANAGE)
async def create(
    admin: CurrentAdmin,
    session: SessionDep,
    name: Annotated[str, Form(max_length=400)] = "",
    scopes: Annotated[list[str] | None, Form()] = None,
) -> HTMLResponse:
    """Create a key (audited) and show its token on this answer only."""
    chosen = scopes or []
    try:
        key, token = await api_keys.create_key(session, name, chosen, actor=admin.user)
    except DomainError as exc:  # refused before anything was added to the session
        keys = await api_keys.page(session, 0, SHOWN + 1)
        return _list_page(
            admin, keys, error=exc.detail, name=name, chosen=frozenset(chosen), status=exc.status
        )
    await session.commit()
    return render(
        "api_key_created.html", admin, title="API key created", current=PATH, key=key, token=token
    )


@router.get("/api-keys/{key_id}/revoke", dependencies=MANAGE)
async def confirm_revoke(key_id: DbId, admin: CurrentAdmin, session: SessionDep) -> HTMLResponse:
    """The confirmation step: revoking cannot be undone."""
    try:
        key = await api_keys.get_key(session, key_id)
    except DomainError as exc:
        refuse(exc)
    label = f"{key.name} ({key.prefix})" if key.prefix else key.name
    return render(
        "confirm.html",
        admin,
        title=f"Revoke the API key {label}?",
        current=PATH,
        text="Every request made with it is refused from now on (within two seconds on "
        "every API process). This cannot be undone: whoever uses it needs a new key.",
        action=f"{PATH}/{key_id}/revoke",
        button="Revoke the key",
        back=PATH,
    )


@router.post("/api-keys/{key_id}/revoke", dependencies=MANAGE)
async def revoke(key_id: DbId, admin: CurrentAdmin, session: SessionDep) -> RedirectResponse:
    """Revoke a key (audited); revoking a revoked key changes nothing."""
    try:
        await api_keys.revoke(session, key_id, actor=admin.user)
    except DomainError as exc:
        refuse(exc)
    await session.commit()
    return RedirectResponse(PATH, status_code=303)
