"""Template schemas."""

from __future__ import annotations

from datetime import datetime

from app.api.schemas.common import Body, HeaderText, Name, ReadModel, Strict
from app.api.schemas.safety import PreflightRead


class TemplateCreate(Strict):
    """A new Jinja template; its syntax is checked when saved."""

    name: Name
    subject: HeaderText = ""
    html: Body = ""
    text: Body = ""


class TemplateUpdate(Strict):
    """Fields to change."""

    name: Name | None = None
    subject: HeaderText | None = None
    html: Body | None = None
    text: Body | None = None


class TemplateRead(ReadModel):
    """A stored template."""

    id: int
    name: str
    subject: str
    html: str
    text: str
    created_at: datetime
    updated_at: datetime
    preflight: PreflightRead | None = None
    """The content preflight, in the answer to a create or an update."""
