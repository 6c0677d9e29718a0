"""Contact lists."""

from __future__ import annotations

import enum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, Timestamps, enum_type


class OptIn(enum.StrEnum):
    """How a subscription to the list becomes confirmed."""

    single = "single"
    double = "double"


class Visibility(enum.StrEnum):
    """Public lists appear on subscription forms and the preference centre."""

    public = "public"
    private = "private"


class MailingList(Timestamps, Base):
    """A named list of subscribers."""

    __tablename__ = "lists"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    description: Mapped[str] = mapped_column(sa.Text, default="")
    optin: Mapped[OptIn] = mapped_column(enum_type(OptIn, "optin"), default=OptIn.single)
    visibility: Mapped[Visibility] = mapped_column(
        enum_type(Visibility, "visibility"), default=Visibility.private
    )
