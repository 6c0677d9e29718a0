"""Field types shared by the schemas: single-line text, addresses, attributes."""

from __future__ import annotations

from email.utils import formataddr, getaddresses
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from app.core.addresses import normalize_address
from app.core.text import check_attributes, no_nul, require_single_line


class Strict(BaseModel):
    """Unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class ReadModel(BaseModel):
    """Responses are built from ORM objects."""

    model_config = ConfigDict(from_attributes=True)


def _mailbox(value: str) -> str:
    require_single_line(value)
    parsed = getaddresses([value])
    name, address = parsed[0] if len(parsed) == 1 else ("", "")
    if not address or "," in value.replace(f'"{name}"', ""):
        raise ValueError("must be an address, optionally with a name: 'News <news@example.com>'")
    return formataddr((name, normalize_address(address))) if name else normalize_address(address)


MAX_ID = 2_147_483_647  # ids are 32-bit integers in the database
DbId = Annotated[int, Field(ge=1, le=MAX_ID)]
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(require_single_line),
]
OptionalName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=200),
    AfterValidator(require_single_line),
]
Description = Annotated[str, StringConstraints(max_length=10_000), AfterValidator(no_nul)]
HeaderText = Annotated[str, StringConstraints(max_length=998), AfterValidator(require_single_line)]
Body = Annotated[str, StringConstraints(max_length=500_000), AfterValidator(no_nul)]
Address = Annotated[str, StringConstraints(max_length=320), AfterValidator(normalize_address)]
Mailbox = Annotated[str, StringConstraints(max_length=400), AfterValidator(_mailbox)]
Attributes = Annotated[dict[str, Any], AfterValidator(check_attributes)]
