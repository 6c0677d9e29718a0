"""Contact list schemas."""

from __future__ import annotations

from datetime import datetime

from app.api.schemas.common import Description, Name, ReadModel, Strict
from app.models import OptIn, Visibility


class ListCreate(Strict):
    """A new list."""

    name: Name
    description: Description = ""
    optin: OptIn = OptIn.single
    visibility: Visibility = Visibility.private


class ListUpdate(Strict):
    """Fields to change; absent fields stay as they are."""

    name: Name | None = None
    description: Description | None = None
    optin: OptIn | None = None
    visibility: Visibility | None = None


class ListRead(ReadModel):
    """A list with its member counts by subscription status."""

    id: int
    name: str
    description: str
    optin: OptIn
    visibility: Visibility
    created_at: datetime
    updated_at: datetime
    subscriber_counts: dict[str, int] = {}
