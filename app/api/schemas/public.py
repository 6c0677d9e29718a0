"""Schemas of the keyless public API (subscription forms embedded on other sites)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from app.api.schemas.common import OptionalName, Strict
from app.models import OptIn

ListToken = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class PublicSubscriptionCreate(Strict):
    """A subscription request from a website's form."""

    email: str = Field(max_length=320, description="The address to subscribe.")
    name: OptionalName = ""
    lists: list[ListToken] = Field(
        min_length=1, max_length=20, description="Tokens of public lists (GET /public/lists)."
    )
    website: str = Field(
        "", max_length=500, description="Honeypot: leave empty (bots that fill it are ignored)."
    )


class PublicSubscriptionAccepted(BaseModel):
    """The one answer to an accepted request, whether or not the address was known."""

    detail: str


class PublicList(BaseModel):
    """A public list as a website needs it to build a form."""

    token: str
    name: str
    description: str
    optin: OptIn
    form_url: str
