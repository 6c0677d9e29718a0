"""Content-safety records: the latest preflight report of each campaign and template."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, utcnow


class PreflightRecord(Base):
    """The last preflight of one campaign or one template: its score, verdict and findings."""

    __tablename__ = "preflight_reports"
    __table_args__ = (
        sa.CheckConstraint("(campaign_id IS NULL) != (template_id IS NULL)", name="one_subject"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("campaigns.id", ondelete="CASCADE"), unique=True
    )
    template_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("templates.id", ondelete="CASCADE"), unique=True
    )
    context: Mapped[str] = mapped_column(sa.String(16))
    """What ran it: schedule, preview, test, check (GET …/preflight) or save (a template)."""
    score: Mapped[float] = mapped_column(sa.Float)
    max_score: Mapped[float] = mapped_column(sa.Float)
    passed: Mapped[bool]
    forced: Mapped[bool] = mapped_column(default=False)
    """Scheduled with `force` although the score was above the maximum."""
    report: Mapped[dict[str, Any]]
    checked_at: Mapped[datetime] = mapped_column(default=utcnow)
