"""Background CSV imports and their progress."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, enum_type, utcnow


class ImportStatus(enum.StrEnum):
    """Where an import is."""

    queued = "queued"
    running = "running"
    finished = "finished"
    failed = "failed"


class ImportMode(enum.StrEnum):
    """subscribe: upsert and add to lists; blocklist: upsert and blocklist."""

    subscribe = "subscribe"
    blocklist = "blocklist"


class ImportJob(Base):
    """One uploaded CSV being (or having been) imported."""

    __tablename__ = "imports"

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[ImportStatus] = mapped_column(
        enum_type(ImportStatus, "import_status"), default=ImportStatus.queued
    )
    mode: Mapped[ImportMode] = mapped_column(
        enum_type(ImportMode, "import_mode"), default=ImportMode.subscribe
    )
    list_ids: Mapped[list[int]] = mapped_column(JSONType, default=list)
    subscription_status: Mapped[str] = mapped_column(sa.String(16), default="confirmed")
    overwrite: Mapped[bool] = mapped_column(default=True)
    filename: Mapped[str] = mapped_column(sa.String(300), default="")
    path: Mapped[str] = mapped_column(sa.String(1000), default="")
    total_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    bytes_read: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    rows_processed: Mapped[int] = mapped_column(default=0)
    rows_imported: Mapped[int] = mapped_column(default=0)
    rows_failed: Mapped[int] = mapped_column(default=0)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    error: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
