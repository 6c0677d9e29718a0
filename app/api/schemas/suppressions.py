"""Suppression schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

from app.api.schemas.common import Address, ReadModel, Strict
from app.core.text import require_single_line
from app.models import SuppressionScope

Reason = Annotated[str, StringConstraints(max_length=500), AfterValidator(require_single_line)]


class SuppressionCreate(Strict):
    """Suppress an address."""

    address: Address
    reason: Reason = ""
    scope: SuppressionScope = SuppressionScope.all


class SuppressionRead(ReadModel):
    """A suppressed address."""

    id: int
    address: str
    reason: str
    source: str
    scope: SuppressionScope
    created_at: datetime
