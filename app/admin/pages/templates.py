"""Templates: an editor for subject, HTML and text with a preview rendered for a chosen
subscriber; syntax and sandbox errors are shown at their line.

Saving goes through `app.mail.templates` (as the API's /templates). The preview renders the
template as a campaign using it would be rendered (`campaigns.content.preview`, the API's
campaign preview) into a sandboxed frame; without JavaScript the Preview button posts there,
with it the frame follows the typing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import Form
from fastapi.responses import HTMLResponse, RedirectResponse

from app.admin import audit
from app.admin.deps import CurrentAdmin, SignedIn, needs, page_router
from app.admin.pages.forms import DbId, after_rollback, refuse
from app.admin.rendering import CSP, render
from app.audience import subscribers as subscribers_service
from app.core.errors import DomainError
from app.core.http import SessionDep, SettingsDep
from app.mail import templates as service
from app.models import Campaign, Subscriber
from campaigns import content

router = page_router()
READ = [needs("templates:read")]
WRITE = [needs("templates:write")]
SHOWN = 500
PREVIEW_FROM = "preview@example.invalid"
EDITOR_CSP = CSP + "; frame-src 'self'"
"""The editor embeds its own preview frame, and nothing else."""
PREVIEW_HEADERS = {
    # The rendered mail may carry inline styles; it runs no script and reaches nothing.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "frame-ancestors 'self'; sandbox",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
_AT_LINE = re.compile(r"\b(subject|html|text)\b[^:]*: line (\d+)")

Text = Annotated[str, Form(max_length=1_000_000)]


@dataclass(frozen=True)
class SourceError:
    """A template error and where it is: the part (subject, html, text) and the line."""

    message: str
    part: str = ""
    line: int = 0


def source_error(message: str) -> SourceError:
    """The error with its part and line, when the message names them."""
    found = _AT_LINE.search(message)
    if found is None:
        return SourceError(message)
    return SourceError(message, found.group(1), int(found.group(2)))


def numbered(source: str) -> list[tuple[int, str]]:
    """The source's lines, numbered from 1, for showing an error in place."""
    return list(enumerate(source.splitlines() or [""], start=1))


def _editor(
    admin: SignedIn,
    *,
    title: str,
    template_id: int | None,
    fields: dict[str, str],
    error: SourceError | None = None,
    status: int = 200,
) -> HTMLResponse:
    response = render(
        "template_edit.html",
        admin,
        status=status,
        title=title,
        current="/admin/templates",
        template_id=template_id,
        fields=fields,
        error=error,
        lines=numbered(fields.get(error.part, "")) if error and error.part else [],
        can_write=admin.can("templates:write"),
    )
    response.headers["Content-Security-Policy"] = EDITOR_CSP
    return response


@router.get("/templates", dependencies=READ)
async def templates_page(admin: CurrentAdmin, session: SessionDep) -> HTMLResponse:
    """Every template."""
    found = (await service.page(session, 0, SHOWN))[:SHOWN]
    return render(
        "templates.html",
        admin,
        title="Templates",
        current="/admin/templates",
        templates=found,
        can_write=admin.can("templates:write"),
    )


@router.get("/templates/new", dependencies=WRITE)
async def new_template(admin: CurrentAdmin) -> HTMLResponse:
    """An empty editor."""
    fields = {"name": "", "subject": "", "html": "", "text": "", "subscriber": ""}
    return _editor(admin, title="New template", template_id=None, fields=fields)


@router.post("/templates", dependencies=WRITE, response_model=None)
async def create_template(
    admin: CurrentAdmin,
    session: SessionDep,
    name: Annotated[str, Form(min_length=1, max_length=200)],
    subject: Annotated[str, Form(max_length=998)] = "",
    html: Text = "",
    text: Text = "",
) -> HTMLResponse | RedirectResponse:
    """Save a new template (audited); an error shows the editor again, at the line."""
    fields = {"name": name, "subject": subject, "html": html, "text": text, "subscriber": ""}
    try:
        created = await service.create(session, name=name, subject=subject, html=html, text=text)
    except DomainError as exc:
        await after_rollback(session, admin)
        return _editor(
            admin,
            title="New template",
            template_id=None,
            fields=fields,
            error=source_error(exc.detail),
            status=exc.status,
        )
    await audit.record(
        session, admin.user, "template.create", f"template:{created.id}", {"name": name}
    )
    await session.commit()
    return RedirectResponse(f"/admin/templates/{created.id}?saved=1", status_code=303)


@router.get("/templates/{template_id}", dependencies=READ)
async def edit_template(
    template_id: DbId, admin: CurrentAdmin, session: SessionDep
) -> HTMLResponse:
    """The editor with the stored template."""
    try:
        found = await service.get(session, template_id)
    except DomainError as exc:
        refuse(exc)
    fields = {
        "name": found.name,
        "subject": found.subject,
        "html": found.html,
        "text": found.text,
        "subscriber": "",
    }
    return _editor(admin, title=f"Template: {found.name}", template_id=found.id, fields=fields)


@router.post("/templates/{template_id}", dependencies=WRITE, response_model=None)
async def save_template(
    template_id: DbId,
    admin: CurrentAdmin,
    session: SessionDep,
    name: Annotated[str, Form(min_length=1, max_length=200)],
    subject: Annotated[str, Form(max_length=998)] = "",
    html: Text = "",
    text: Text = "",
) -> HTMLResponse | RedirectResponse:
    """Save the changes (audited); an error shows the editor again, at the line."""
    changes = {"name": name, "subject": subject, "html": html, "text": text}
    try:
        await service.update(session, template_id, dict(changes))
    except DomainError as exc:
        await after_rollback(session, admin)
        return _editor(
            admin,
            title=f"Template: {name}",
            template_id=template_id,
            fields={**changes, "subscriber": ""},
            error=source_error(exc.detail),
            status=exc.status,
        )
    await audit.record(
        session, admin.user, "template.save", f"template:{template_id}", {"name": name}
    )
    await session.commit()
    return RedirectResponse(f"/admin/templates/{template_id}?saved=1", status_code=303)


async def find_subscriber(session: SessionDep, address: str) -> Subscriber | None:
    """The subscriber with exactly this address, if any."""
    address = address.strip().lower()
    if not address:
        return None
    query = subscribers_service.SubscriberQuery(email_contains=address)
    found = await subscribers_service.page(session, query, 0, 20)
    return next((s for s in found if s.email == address), None)


@router.post("/template-preview", dependencies=READ)
async def preview_template(
    session: SessionDep,
    settings: SettingsDep,
    subject: Annotated[str, Form(max_length=998)] = "",
    html: Text = "",
    text: Text = "",
    subscriber: Annotated[str, Form(max_length=320)] = "",
) -> HTMLResponse:
    """The unsaved template rendered for a subscriber (or a sample), as a document for the
    editor's sandboxed frame; an error is shown at its line."""
    recipient = await find_subscriber(session, subscriber)
    draft = Campaign(
        id=0,
        name="preview",
        subject=subject,
        from_email=PREVIEW_FROM,
        html=html,
        text=text,
        tracking=False,
    )
    try:
        await service.check_content(subject, html, text)
        built = await content.preview(session, settings, draft, recipient)
    except DomainError as exc:
        error = source_error(exc.detail)
        sources = {"subject": subject, "html": html, "text": text}
        page = render(
            "template_preview.html",
            None,
            status=200,
            error=error,
            lines=numbered(sources.get(error.part, "")) if error.part else [],
            built=None,
            recipient=recipient,
            asked=subscriber,
        )
    else:
        page = render(
            "template_preview.html",
            None,
            error=None,
            lines=[],
            built=built,
            recipient=recipient,
            asked=subscriber,
        )
    page.headers.update(PREVIEW_HEADERS)
    del page.headers["X-Frame-Options"]
    return page
