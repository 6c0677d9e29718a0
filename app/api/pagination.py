"""Cursor pagination: opaque cursors over the id (keyset), never OFFSET."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel

from app.core.errors import DomainError

T = TypeVar("T")
MAX_LIMIT = 500


class BadCursor(DomainError):
    """The cursor was not one the API handed out."""

    status = 400
    title = "Invalid cursor"


class Page(BaseModel, Generic[T]):
    """One page of results; pass `next_cursor` as `cursor` for the next one."""

    items: list[T]
    next_cursor: str | None


class PageParams(BaseModel):
    """Where a page starts and how long it is."""

    after_id: int
    limit: int


def encode_cursor(last_id: int) -> str:
    """The cursor that continues after `last_id`."""
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The id a cursor continues after; 400 for anything else."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode()
        prefix, _, value = text.partition(":")
        if prefix != "id" or not value.isdigit() or len(value) > 18:
            raise ValueError(text)
        return int(value)
    except (ValueError, binascii.Error, UnicodeError):
        raise BadCursor("the cursor is not valid; use next_cursor from a previous page") from None


def page_params(
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
) -> PageParams:
    """Query parameters `cursor` and `limit`."""
    return PageParams(after_id=decode_cursor(cursor) if cursor else 0, limit=limit)


PageDep = Annotated[PageParams, Depends(page_params)]


def make_page(items: list[T], ids: list[int], limit: int) -> Page[T]:
    """A page from `limit + 1` fetched rows: the extra one only says there is more."""
    has_more = len(items) > limit
    items = items[:limit]
    return Page(items=items, next_cursor=encode_cursor(ids[limit - 1]) if has_more else None)
