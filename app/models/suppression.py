"""The suppression list: addresses Warta must not mail."""

from __future__ import annotations

import enum
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, enum_type, utcnow


class SuppressionScope(enum.StrEnum):
    """Which stream a suppression blocks."""

    all = "all"
    broadcast = "broadcast"
    transactional = "transactional"


class Suppression(Base):
    """One suppressed address (normalised), why, and where the decision came from."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(sa.String(320), unique=True)
    reason: Mapped[str] = mapped_column(sa.String(500), default="")
    source: Mapped[str] = mapped_column(sa.String(32), default="manual")
    scope: Mapped[SuppressionScope] = mapped_column(
        enum_type(SuppressionScope, "suppression_scope"), default=SuppressionScope.all
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
