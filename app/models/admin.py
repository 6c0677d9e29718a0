"""The admin console: its users, their sessions, the audit log, and the daily event rollups."""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, Timestamps, enum_type, utcnow


class AdminRole(enum.StrEnum):
    """What a console user may do; each role maps onto API-key scopes (app.admin.roles)."""

    owner = "owner"
    admin = "admin"
    marketer = "marketer"
    viewer = "viewer"


class AdminUser(Timestamps, Base):
    """A person who signs in to /admin; the password is stored as an Argon2id hash only."""

    __tablename__ = "admin_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(320), unique=True)
    """Stored lower-cased: one address, one account."""
    role: Mapped[AdminRole] = mapped_column(enum_type(AdminRole, "admin_role"))
    password_hash: Mapped[str] = mapped_column(sa.String(200))
    totp_secret: Mapped[str | None] = mapped_column(sa.String(128))
    """Base32 TOTP secret once the second factor is enrolled; None means password only."""
    totp_last_step: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    """The last accepted TOTP time step: a code is good once (no replay within its window)."""
    disabled_at: Mapped[datetime | None]
    last_login_at: Mapped[datetime | None]


class AdminSession(Base):
    """A signed-in browser. The cookie carries a random token; only its SHA-256 is stored,
    so a database read does not yield a usable cookie. Revoking sets `revoked_at`."""

    __tablename__ = "admin_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    user_id: Mapped[int] = mapped_column(
        sa.ForeignKey("admin_users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    client: Mapped[str] = mapped_column(sa.String(200), default="")
    """Address and user agent at sign-in, shown to the user on the account page."""


class AuditEntry(Base):
    """Who changed what in the console, and when; kept when the user is deleted."""

    __tablename__ = "admin_audit"
    __table_args__ = (sa.Index("ix_admin_audit_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("admin_users.id", ondelete="SET NULL"), index=True
    )
    actor_email: Mapped[str] = mapped_column(sa.String(320))
    action: Mapped[str] = mapped_column(sa.String(64), index=True)
    target: Mapped[str] = mapped_column(sa.String(200), default="")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class EventRollup(Base):
    """Events counted per UTC day, kind, campaign and machine verdict, kept as they arrive.

    `campaign_id` 0 stands for mail outside a campaign (a NULL would not collide in the
    unique key) and -1 for all mail of the day, so a 30-day total reads a few hundred rows
    however many campaigns ran. `shard` spreads one hot counter over a few rows, so concurrent workers
    recording the same campaign's `sent` events rarely wait on one row lock; readers sum.
    """

    __tablename__ = "event_rollups"
    __table_args__ = (
        sa.UniqueConstraint(
            "day", "kind", "campaign_id", "machine", "shard", name="uq_event_rollups_key"
        ),
        sa.Index("ix_event_rollups_campaign_id", "campaign_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    day: Mapped[date] = mapped_column(sa.Date)
    kind: Mapped[str] = mapped_column(sa.String(32))
    campaign_id: Mapped[int] = mapped_column(default=0)
    machine: Mapped[bool] = mapped_column(default=False)
    """Opens fetched by a privacy proxy and clicks by a link scanner, counted apart."""
    shard: Mapped[int] = mapped_column(sa.SmallInteger, default=0)
    count: Mapped[int] = mapped_column(sa.BigInteger, default=0)
