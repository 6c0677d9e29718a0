"""The template side of the preflight: a stored template scored when it is saved.

A template's data is only known per message, so its static content is scored: every Jinja
expression, statement and comment is left out, and the rest is built into a real message.
Transactional mail needs no unsubscribe link, so that rule does not apply here.
"""

from __future__ import annotations

import re

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.settings import Settings
from app.mail.mime import Address, OutgoingMessage, build_message
from app.mail.rendering import html_to_text
from app.models import Template
from app.safety import preflight, records
from app.safety.preflight import PreflightReport
from app.safety.rules import RuleOptions

_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)


def sample_message(settings: Settings, template: Template) -> bytes:
    """The template's static content as a complete message to a sample recipient."""
    subject = " ".join(_JINJA.sub("", template.subject).split()) or template.name
    html = _JINJA.sub("", template.html) if template.html.strip() else None
    text = _JINJA.sub("", template.text) if template.text.strip() else None
    if text is None:
        text = html_to_text(html or "")
    return build_message(
        OutgoingMessage(
            sender=Address(f"preflight@{settings.mta_hostname}"),
            recipient=Address("jane.doe@example.com", "Jane Doe"),
            subject=subject,
            message_id=f"<preflight.template.{template.id}@{settings.mta_hostname}>",
            text=text,
            html=html,
        )
    )


async def check(
    session: AsyncSession, settings: Settings, template: Template
) -> PreflightReport | None:
    """Score the saved template and keep the report as its latest; None if its static
    content cannot be built into a message alone (the save itself is never refused here)."""
    try:
        raw = sample_message(settings, template)
    except ValueError:
        return None
    report = await preflight.run(settings, raw, RuleOptions(require_unsubscribe=False))
    await records.save(session, report, context="save", template_id=template.id)
    return report
