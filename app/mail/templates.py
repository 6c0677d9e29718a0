"""Templates: stored Jinja sources, syntax-checked and probed for sandbox limits on save."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Conflict, Invalid, NotFound
from app.mail.budget import MAX_COMPILE_SECONDS, run_off_loop
from app.mail.sandbox import TemplateError, probe
from app.models import Campaign, Template


async def check_content(subject: str | None, html: str | None, text: str | None) -> None:
    """Compile each part in the sandbox, then probe it (`app.mail.sandbox.probe`) off the
    event loop: a syntax error, or a template that breaks a sandbox limit whatever the data,
    is Invalid naming the part, line and limit."""
    # Compiling takes what it takes (bounded by the size of the source); each probe's render
    # has a budget of its own.
    parts = (subject or "", html or "", text or "")  # a PATCH may send null
    await run_off_loop(_check_parts, *parts, seconds=MAX_COMPILE_SECONDS)


def _check_parts(subject: str, html: str, text: str) -> None:
    try:
        probe(subject, "subject")
        probe(html, "html", html=True)
        probe(text, "text")
    except TemplateError as exc:
        raise Invalid(f"template error in {exc}") from None


async def get(session: AsyncSession, template_id: int) -> Template:
    """The template, or NotFound."""
    found = await session.get(Template, template_id)
    if found is None:
        raise NotFound(f"template {template_id} does not exist")
    return found


async def create(session: AsyncSession, **fields: Any) -> Template:
    """A new template; a taken name is a Conflict."""
    await check_content(fields.get("subject", ""), fields.get("html", ""), fields.get("text", ""))
    new = Template(**fields)
    session.add(new)
    await _flush_unique(session, fields["name"])
    return new


async def update(session: AsyncSession, template_id: int, changes: dict[str, Any]) -> Template:
    """Apply changes after checking the resulting content compiles."""
    found = await get(session, template_id)
    await check_content(
        changes.get("subject", found.subject),
        changes.get("html", found.html),
        changes.get("text", found.text),
    )
    for name, value in changes.items():
        setattr(found, name, value)
    await _flush_unique(session, changes.get("name", found.name))
    return found


async def delete(session: AsyncSession, template_id: int) -> None:
    """Delete a template no campaign uses."""
    found = await get(session, template_id)
    users = await session.scalar(
        sa.select(sa.func.count()).select_from(Campaign).where(Campaign.template_id == template_id)
    )
    if users:
        raise Conflict(f"template {template_id} is used by {users} campaign(s)")
    await session.delete(found)
    await session.flush()


async def page(session: AsyncSession, after_id: int, limit: int) -> list[Template]:
    """Up to `limit + 1` templates after `after_id`."""
    query = sa.select(Template).where(Template.id > after_id).order_by(Template.id).limit(limit + 1)
    return list((await session.scalars(query)).all())


async def _flush_unique(session: AsyncSession, name: str) -> None:
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        raise Conflict(f"a template named {name!r} already exists") from None


async def get_or_invalid(session: AsyncSession, template_id: int) -> Template:
    """The template a request refers to; a missing one is the request's fault (422)."""
    found = await session.get(Template, template_id)
    if found is None:
        raise Invalid(f"template {template_id} does not exist")
    return found
